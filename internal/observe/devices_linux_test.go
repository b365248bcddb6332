package observe

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"gpupass/internal/testenv"
)

// TestDevicesFixture runs Devices and BindMounted on a fixture /proc whose <pid>/root is a
// plain directory: char nodes, the empty file an optional bind leaves, symlinks that must
// resolve inside the root, a missing node, and a node with the right numbers that is not
// the host's.
func TestDevicesFixture(t *testing.T) {
	testenv.RequireRoot(t)
	proc := t.TempDir()
	root := filepath.Join(proc, "42/root")
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	mknod(t, filepath.Join(dev, "nvidia0"), 195, 0, 0o666)
	mknod(t, filepath.Join(dev, "nvidiactl"), 195, 255, 0o600)
	write(t, filepath.Join(dev, "nvidia-uvm"), "") // the optional trap
	if err := os.Symlink("/dev/nvidia0", filepath.Join(dev, "gpu")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/../../../../etc/hostname", filepath.Join(dev, "escape")); err != nil {
		t.Fatal(err)
	}

	got, err := Devices(proc, 42, []string{"/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1", "/dev/gpu", "/dev/escape", "/dev/nvidia0/x"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Node{
		"/dev/nvidia0":    {Exists: true, Char: true, Major: 195, Minor: 0, Perm: 0o666},
		"/dev/nvidiactl":  {Exists: true, Char: true, Major: 195, Minor: 255, Perm: 0o600},
		"/dev/nvidia-uvm": {Exists: true, Perm: 0o644},
		"/dev/nvidia1":    {},
		"/dev/gpu":        {Exists: true, Char: true, Major: 195, Minor: 0, Perm: 0o666}, // resolved inside the root
		"/dev/escape":     {},                                                            // /etc/hostname of the root, which does not exist
		"/dev/nvidia0/x":  {},
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("(-got +want):\n%s", d)
	}
	if _, err := Devices(proc, 43, []string{"/dev/null"}); !errors.Is(err, ErrNoProcess) {
		t.Errorf("missing pid: %v, want ErrNoProcess", err)
	}

	// BindMounted: the same inode (a hard link stands in for the bind) served by a mount of
	// its filesystem; a twin node with equal numbers is not the host's.
	hostDir := filepath.Join(proc, "host")
	if err := os.Mkdir(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostNode := filepath.Join(hostDir, "nvidia0")
	if err := os.Link(filepath.Join(dev, "nvidia0"), hostNode); err != nil {
		t.Fatal(err)
	}
	twin := filepath.Join(hostDir, "twin")
	mknod(t, twin, 195, 0, 0o666)
	var st unix.Stat_t
	if err := unix.Stat(hostNode, &st); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(proc, "42/mountinfo"), fmt.Sprintf(
		"1 0 0:99 / / rw - ext4 /dev/x rw\n2 1 %d:%d /host/nvidia0 /dev/nvidia0 rw - ext4 /dev/x rw\n", unix.Major(st.Dev), unix.Minor(st.Dev)))
	tests := []struct {
		name, host, container string
		want                  bool
	}{
		{"bound", hostNode, "/dev/nvidia0", true},
		{"twin with the same numbers", twin, "/dev/nvidia0", false},
		{"same inode but no mount of its filesystem", hostNode, "/dev/gpu", false},
		{"missing inside", hostNode, "/dev/nvidia1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := BindMounted(proc, 42, tt.host, tt.container)
			if err != nil || got != tt.want {
				t.Errorf("BindMounted(%s, %s) = %v, %v; want %v", tt.host, tt.container, got, err, tt.want)
			}
		})
	}
}

func mknod(t *testing.T, path string, major, minor uint32, perm uint32) {
	t.Helper()
	if err := unix.Mknod(path, unix.S_IFCHR|perm, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, os.FileMode(perm)); err != nil {
		t.Fatal(err)
	}
}
