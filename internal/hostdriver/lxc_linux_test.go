package hostdriver

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
// check sees them as the host's; it gets the host's vendor files (OpenCL ICD, Vulkan ICD
// and layers, EGL vendor and platforms, application profiles) at their own paths,
// read-only with the host's content, also over the container's own nvidia.icd, which
// stays unchanged on its disk; after a simulated driver upgrade (the host tree changes
// from v1 to v2) a restart brings v2 and v2's profiles, not v1's; a host without vendor
// files gives none (the earlier links go, the container's own file is its own again) and
// starts without error; a host whose userspace does not match its module refuses the
// start with that reason. Privileged and unprivileged.
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
			cfgs := writeConfigs(t, root, v1)
			c := lxctest.NewContainer(t, lxctest.Spec{Unprivileged: unpriv})
			// The template's own OpenCL ICD file, where the host has one too.
			const ownICD = "/etc/OpenCL/vendors/nvidia.icd"
			const ownText = "the template's own nvidia.icd\n"
			for _, d := range []string{"/etc/OpenCL", "/etc/OpenCL/vendors"} {
				if err := os.Mkdir(filepath.Join(c.Rootfs(), d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			write(t, filepath.Join(c.Rootfs(), ownICD), ownText, 0o644)
			if unpriv {
				for _, p := range []string{"/etc/OpenCL", "/etc/OpenCL/vendors", ownICD} {
					if err := os.Lchown(filepath.Join(c.Rootfs(), p), lxctest.SubIDStart, lxctest.SubIDStart); err != nil {
						t.Fatal(err)
					}
				}
			}
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
			// mountOpts: the options of the last mount at p inside ("" for none).
			mountOpts := func(p string) string {
				t.Helper()
				mi, _ := c.Attach(t, "cat", "/proc/self/mountinfo")
				opts := ""
				for _, l := range strings.Split(mi, "\n") {
					if f := strings.Fields(l); len(f) > 5 && f[4] == p {
						opts = f[5]
					}
				}
				return opts
			}
			// checkConfigs: each of want reads the host's content inside and refuses
			// writes; nothing (not even a link) is at any of gone; the hook said how many
			// vendor files it gave. The host's file over the container's own is a
			// read-only mount there (the unprivileged container's root may not write a
			// file of the host's root anyway).
			checkConfigs := func(want, gone []string) {
				t.Helper()
				if slices.Contains(want, ownICD) {
					if o := mountOpts(ownICD); !strings.HasPrefix(o, "ro,") {
						t.Errorf("mount at %s inside: options %q, want a read-only mount", ownICD, o)
					}
				} else if o := mountOpts(ownICD); o != "" {
					t.Errorf("mount at %s inside (%s) without a host file", ownICD, o)
				}
				for _, p := range want {
					if got, _ := c.Attach(t, "cat", p); got != p+" of the host\n" {
						t.Errorf("%s inside reads %q, want the host's file", p, got)
					}
					if _, code := c.Attach(t, "sh", "-c", "echo x > "+p); code == 0 {
						t.Errorf("writing %s from inside succeeded: want read-only", p)
					}
				}
				for _, p := range gone {
					if _, code := c.Attach(t, "sh", "-c", "[ -e "+p+" ] || [ -L "+p+" ]"); code == 0 {
						t.Errorf("%s is in the container: want nothing there", p)
					}
				}
				log, _ := os.ReadFile(c.LogPath())
				if n := fmt.Sprintf(", %d vendor files at their own paths", len(want)); !strings.Contains(string(log), n) {
					t.Errorf("the hook did not say %q:\n%s", n, tailLines(string(log), 15))
				}
			}
			// onDisk: what the container's own disk has at p (the hook's mounts are gone
			// once it stops): the content of a file, or "-> target" for a link.
			onDisk := func(p string) string {
				t.Helper()
				hp := filepath.Join(c.Rootfs(), p)
				if l, err := os.Readlink(hp); err == nil {
					return "-> " + l
				}
				b, err := os.ReadFile(hp)
				if err != nil {
					return err.Error()
				}
				return string(b)
			}

			c.Start(t)
			check(v1)
			checkConfigs(cfgs, nil)
			c.Stop(t)
			if got := onDisk(ownICD); got != ownText {
				t.Errorf("the container's own %s on its disk after the run: %q, want it unchanged", ownICD, got)
			}
			for _, p := range cfgs {
				if want := "-> " + ContainerDir + "/conf" + p; p != ownICD && onDisk(p) != want {
					t.Errorf("%s on the container's disk: %q, want only the link %q", p, onDisk(p), want)
				}
			}

			// The host driver upgrade: v1's files go, v2's come, the module is v2.
			if err := os.RemoveAll(filepath.Join(root, dir)); err != nil {
				t.Fatal(err)
			}
			v1Profile := "/usr/share/nvidia/nvidia-application-profiles-" + v1 + "-rc"
			if err := os.Remove(filepath.Join(root, v1Profile)); err != nil {
				t.Fatal(err)
			}
			writeHost(t, root, v2, dir, v2)
			cfgs = writeConfigs(t, root, v2)
			c.Start(t)
			check(v2)
			checkConfigs(cfgs, []string{v1Profile})
			c.Stop(t)

			// A host without vendor files: none in the container, the start as before.
			for _, d := range []string{"etc/OpenCL", "etc/vulkan", "usr/share/vulkan", "usr/share/glvnd", "usr/share/egl", "usr/share/nvidia"} {
				if err := os.RemoveAll(filepath.Join(root, d)); err != nil {
					t.Fatal(err)
				}
			}
			c.Start(t)
			check(v2)
			var gone []string
			for _, p := range cfgs {
				if p != ownICD {
					gone = append(gone, p)
				}
			}
			checkConfigs(nil, append(gone, v1Profile))
			if got, _ := c.Attach(t, "cat", ownICD); got != ownText {
				t.Errorf("%s inside reads %q without the host's: want the container's own", ownICD, got)
			}
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
