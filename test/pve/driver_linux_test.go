package pve

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"gpupass/internal/gpu"
	"gpupass/internal/hostdriver"
	"gpupass/internal/lxctest"
	"gpupass/internal/pvelab"
)

// TestDriverHostOnPVE: `driver: host` through the real pct. The real host agent's `conf
// apply --driver host` writes the lxc.hook.mount line into /etc/pve/lxc/<id>.conf; PVE's
// own parser accepts it in strict mode; the real `pct start` runs the hook (PVE copies raw
// lxc.* keys into the start config), and the container, whose template has no NVIDIA file,
// sees the simulated host's userspace of the loaded version, read-only. Privileged and
// unprivileged (PVE 9's default).
func TestDriverHostOnPVE(t *testing.T) {
	pvelab.Require(t)
	const ver = "580.159.04"
	bin := filepath.Join(lxctest.TempDir(t), "gpupass-host-agent")
	if out, err := exec.Command("go", "build", "-o", bin, "gpupass/agent-host").CombinedOutput(); err != nil {
		t.Fatalf("build the host agent: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		name       string
		privileged bool
	}{
		{"privileged", true},
		{"unprivileged", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := lxctest.TempDir(t)
			if err := gpu.WriteSimulatedHost(root, gpu.SimOptions{GPUs: 1, DriverVersion: ver}); err != nil {
				t.Fatal(err)
			}
			lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
			if err := os.MkdirAll(lib, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, l := range []string{"libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler"} {
				if err := os.WriteFile(filepath.Join(lib, l+".so."+ver), []byte(l+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			ct := pvelab.NewCT(t, pvelab.Spec{Privileged: tc.privileged})
			out, err := exec.Command(bin, "conf", "apply", "--conf", ct.ConfPath(), "--gpus", "0", "--driver", "host", "--host-root", root, "--state-dir", t.TempDir()).CombinedOutput()
			if err != nil {
				t.Fatalf("conf apply --driver host: %v\n%s", err, out)
			}
			hook := "lxc.hook.mount: " + bin + " driver hook --host-root " + root
			if conf := ct.Conf(t); !strings.Contains(conf, hook+"\n") {
				t.Fatalf("%s lacks %q:\n%s", ct.ConfPath(), hook, conf)
			}
			pvelab.ParseStrict(t, ct.ConfPath())
			ct.Start(t)
			if r := ct.RenderedConfig(t); !strings.Contains(r, "lxc.hook.mount = "+bin+" driver hook --host-root "+root+"\n") {
				t.Errorf("PVE's start config lacks the hook:\n%s", r)
			}
			if got, _ := ct.Exec(t, "cat", hostdriver.Marker); got != "source=host\nversion="+ver+"\nfrom=/usr/lib/x86_64-linux-gnu\n" {
				t.Errorf("%s inside: %q", hostdriver.Marker, got)
			}
			if got, _ := ct.Exec(t, "cat", hostdriver.ContainerDir+"/lib/libnvidia-ml.so.1"); got != "libnvidia-ml\n" {
				t.Errorf("libnvidia-ml.so.1 inside reads %q, want the host's file", got)
			}
			if _, code := ct.Exec(t, "touch", hostdriver.ContainerDir+"/lib/x"); code == 0 {
				t.Errorf("touch inside %s succeeded: want read-only", hostdriver.ContainerDir)
			}
		})
	}
}
