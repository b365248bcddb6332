package observe

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"gpupass/internal/lxctest"
)

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }

// cmpIgnoreOwnership drops what depends on the umask and the id map.
var cmpIgnoreOwnership = cmpopts.IgnoreFields(Node{}, "Perm", "UID", "GID")

// TestRunningContainer shows, on real containers, why config text is not evidence and what
// is: a mount entry added to the config after the start is in the file (and lxc-info -c
// reports it) but absent from /proc/<pid>/root/dev and mountinfo; the optional trap leaves
// an existing path that is not a char device; the bound node is the host's node.
func TestRunningContainer(t *testing.T) {
	for _, unpriv := range []bool{false, true} {
		name := map[bool]string{false: "privileged", true: "unprivileged"}[unpriv]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			host := lxctest.TempDir(t)
			gpu0, late := filepath.Join(host, "nvidia0"), filepath.Join(host, "nvidia1")
			lxctest.Mknod(t, gpu0, 195, 0)
			lxctest.Mknod(t, late, 195, 1)
			c := lxctest.NewContainer(t, lxctest.Spec{
				Unprivileged: unpriv,
				ExtraConfig: []string{
					"lxc.cgroup2.devices.allow = c 195:* rwm",
					"lxc.mount.entry = " + gpu0 + " dev/nvidia0 none bind,create=file 0 0",
					"lxc.mount.entry = " + filepath.Join(host, "absent") + " dev/nvidia-uvm none bind,optional,create=file 0 0",
				},
			})
			c.Start(t)
			lateEntry := "lxc.mount.entry = " + late + " dev/nvidia1 none bind,create=file 0 0"
			c.AppendConfig(t, lateEntry)

			// The trap: lxc-info -c re-reads the file and reports the late entry.
			out, err := exec.Command("lxc-info", "-P", c.LXCPath(), "-n", c.Name(), "-c", "lxc.mount.entry").CombinedOutput()
			if err != nil {
				t.Fatalf("lxc-info -c: %v: %s", err, out)
			}
			if !strings.Contains(string(out), late) {
				t.Errorf("lxc-info -c does not show the late entry (the trap this test documents):\n%s", out)
			}

			pid := c.InitPID(t)
			got, err := Devices("/proc", pid, []string{"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-uvm", "/dev/null"})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]Node{
				"/dev/nvidia0":    {Exists: true, Char: true, Major: 195, Minor: 0},
				"/dev/nvidia1":    {},             // in the config, not in the container
				"/dev/nvidia-uvm": {Exists: true}, // the optional trap: a file, not a node
				"/dev/null":       {Exists: true, Char: true, Major: 1, Minor: 3},
			}
			if d := cmp.Diff(got, want, cmpIgnoreOwnership); d != "" {
				t.Errorf("Devices (-got +want):\n%s", d)
			}

			mounts, err := Mounts("/proc", pid)
			if err != nil {
				t.Fatal(err)
			}
			targets := make([]string, 0, len(mounts))
			for _, m := range mounts {
				targets = append(targets, m.Target)
			}
			if !slices.Contains(targets, "/dev/nvidia0") || slices.Contains(targets, "/dev/nvidia1") {
				t.Errorf("mount targets %q: want /dev/nvidia0 and not /dev/nvidia1", targets)
			}

			for _, tt := range []struct {
				host, path string
				want       bool
			}{
				{gpu0, "/dev/nvidia0", true},
				{late, "/dev/nvidia1", false},
				{late, "/dev/nvidia0", false}, // another node of the same driver
			} {
				if ok, err := BindMounted("/proc", pid, tt.host, tt.path); err != nil || ok != tt.want {
					t.Errorf("BindMounted(%s, %s) = %v, %v; want %v", tt.host, tt.path, ok, err, tt.want)
				}
			}

			// A restart is what makes the late entry real.
			c.Stop(t)
			c.Start(t)
			got, err = Devices("/proc", c.InitPID(t), []string{"/dev/nvidia1"})
			if err != nil {
				t.Fatal(err)
			}
			if n := got["/dev/nvidia1"]; !n.Char || n.Major != 195 || n.Minor != 1 {
				t.Errorf("after the restart /dev/nvidia1 = %+v, want char 195:1", n)
			}
		})
	}
}
