package hostdriver

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/guest"
	"gpupass/internal/lxctest"
)

// buildAgent builds the real host agent into a directory unprivileged containers can
// reach (the hook runs as the container's root there).
func buildAgent(t *testing.T) string {
	t.Helper()
	dir := lxctest.TempDir(t)
	bin := filepath.Join(dir, "gpupass-host-agent")
	cmd := exec.Command("go", "build", "-o", bin, "gpupass/agent-host")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the host agent: %v\n%s", err, out)
	}
	return bin
}

// TestHookInRealContainers: a busybox container without any NVIDIA file, given GPU 0 of a
// simulated host and made `driver: host` by the real `gpupass-host-agent conf apply --driver host`, gets the simulated
// host's libraries and tools of the loaded version at start, read-only, and the guest's
// check sees them as the host's; after a simulated driver upgrade (the host tree changes
// from v1 to v2) a restart brings v2; a host whose userspace does not match its module
// refuses the start with that reason. Privileged and unprivileged.
func TestHookInRealContainers(t *testing.T) {
	agent := buildAgent(t)
	for _, unpriv := range []bool{false, true} {
		name := "privileged"
		if unpriv {
			name = "unprivileged"
		}
		t.Run(name, func(t *testing.T) {
			root := lxctest.TempDir(t)
			const dir = "/usr/lib/x86_64-linux-gnu"
			if err := gpu.WriteSimulatedHost(root, gpu.SimOptions{GPUs: 1, DriverVersion: v1}); err != nil {
				t.Fatal(err)
			}
			writeHost(t, root, "", dir, v1)
			c := lxctest.NewContainer(t, lxctest.Spec{Unprivileged: unpriv})
			out, err := exec.Command(agent, "conf", "apply", "--conf", c.ConfigPath(), "--gpus", "0", "--driver", "host", "--host-root", root, "--state-dir", t.TempDir()).CombinedOutput()
			if err != nil {
				t.Fatalf("conf apply --driver host: %v\n%s", err, out)
			}
			t.Logf("conf apply:\n%s", out)
			cfg, _ := os.ReadFile(c.ConfigPath())
			wantHook := "lxc.hook.mount = " + agent + " driver hook --host-root " + root
			if !strings.Contains(string(cfg), wantHook+"\n") {
				t.Fatalf("config lacks %q:\n%s", wantHook, cfg)
			}

			check := func(v string) {
				t.Helper()
				if got, _ := c.Attach(t, "cat", ContainerDir+"/source"); !strings.Contains(got, "version="+v+"\n") || !strings.HasPrefix(got, "source=host\n") {
					t.Errorf("%s: %q, want source=host version=%s", Marker, got, v)
				}
				got, _ := c.Attach(t, "ls", ContainerDir+"/lib")
				want := []string{"libcuda.so", "libcuda.so.1", "libnvidia-ml.so", "libnvidia-ml.so.1"}
				for _, l := range simLibs {
					want = append(want, l+".so."+v)
				}
				sort.Strings(want)
				if diff := cmp.Diff(strings.Fields(got), want); diff != "" {
					t.Errorf("ls %s/lib (-got +want):\n%s", ContainerDir, diff)
				}
				if got, _ := c.Attach(t, "cat", ContainerDir+"/lib/libcuda.so.1"); got != "libcuda "+v+"\n" {
					t.Errorf("libcuda.so.1 inside reads %q, want the host's file of %s", got, v)
				}
				if _, code := c.Attach(t, "touch", ContainerDir+"/lib/x"); code == 0 {
					t.Errorf("touch in %s/lib succeeded: want read-only", ContainerDir)
				}
				if _, code := c.Attach(t, "sh", "-c", "echo x > "+ContainerDir+"/lib/libcuda.so.1"); code == 0 {
					t.Errorf("writing the host's libcuda from inside succeeded: want read-only")
				}
				if got, _ := c.Attach(t, "/usr/local/bin/nvidia-smi"); got != "nvidia-smi from the host\n" {
					t.Errorf("nvidia-smi inside printed %q", got)
				}
				if got, _ := c.Attach(t, "cat", LdConf); got != ContainerDir+"/lib\n" {
					t.Errorf("%s: %q", LdConf, got)
				}
				// The guest's own check, reading the running container's root.
				p := guest.Paths{Root: "/proc/" + strconv.Itoa(c.InitPID(t)) + "/root"}
				nvml, err := p.UserspaceDriver()
				if err != nil {
					t.Fatalf("guest: %v", err)
				}
				if nvml.Version != v || guest.UserspaceSource(nvml.Path) != "host" {
					t.Errorf("guest sees userspace %s at %s (source %s), want %s from the host", nvml.Version, nvml.Path, guest.UserspaceSource(nvml.Path), v)
				}
			}
			c.Start(t)
			check(v1)
			c.Stop(t)

			// The host driver upgrade: v1's files go, v2's come, the module is v2.
			if err := os.RemoveAll(filepath.Join(root, dir)); err != nil {
				t.Fatal(err)
			}
			writeHost(t, root, v2, dir, v2)
			c.Start(t)
			check(v2)
			c.Stop(t)

			// Userspace upgraded, module not reloaded: the start is refused with the reason.
			writeHost(t, root, v1, dir)
			out, err = exec.Command("lxc-start", "-n", c.Name(), "-P", c.LXCPath(), "-l", "DEBUG", "-o", c.LogPath()).CombinedOutput()
			log, _ := os.ReadFile(c.LogPath())
			if err == nil {
				c.Stop(t)
				t.Fatalf("start with a mismatched host succeeded")
			}
			if !strings.Contains(string(log), "driver hook: the host's libnvidia-ml is "+v2+" (in "+dir+") but the loaded kernel module is "+v1) {
				t.Errorf("the LXC log does not give the reason:\n%s\n%s", out, tailLines(string(log), 15))
			}
		})
	}
}

func tailLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }
