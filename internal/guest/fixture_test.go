package guest

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/testenv"
)

// tree is a fixture root: a container's view of /dev, /proc and the libraries.
type tree struct {
	t    *testing.T
	root string
}

func newTree(t *testing.T) *tree {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"dev", "proc/driver", "etc", "usr/lib/x86_64-linux-gnu"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &tree{t: t, root: root}
}

func (f *tree) path(p string) string { return filepath.Join(f.root, p) }

func (f *tree) paths() Paths {
	return Paths{Root: f.root, PathEnv: "/usr/local/bin:/usr/bin"}
}

func (f *tree) file(p, content string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Dir(f.path(p)), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(f.path(p), []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *tree) executable(p, content string) {
	f.t.Helper()
	f.file(p, content)
	if err := os.Chmod(f.path(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
}

func (f *tree) symlink(p, target string) {
	f.t.Helper()
	if err := os.MkdirAll(filepath.Dir(f.path(p)), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Symlink(target, f.path(p)); err != nil {
		f.t.Fatal(err)
	}
}

// chardev makes a real char device node (needs root; the temp dir must allow devices).
func (f *tree) chardev(p string, major, minor uint32) {
	f.t.Helper()
	testenv.RequireRoot(f.t)
	if err := os.MkdirAll(filepath.Dir(f.path(p)), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := unix.Mknod(f.path(p), unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor))); err != nil {
		f.t.Fatalf("mknod %s: %v", p, err)
	}
}

// freeMajor returns a char major no driver registered on this machine (195 when the
// NVIDIA driver is absent), so that open() of a node with it gives ENXIO.
func freeMajor(t *testing.T) uint32 {
	t.Helper()
	b, err := os.ReadFile("/proc/devices")
	if err != nil {
		t.Skipf("read /proc/devices: %v", err)
	}
	used := map[uint32]bool{}
	for _, v := range ParseCharMajors(b) {
		used[v] = true
	}
	if !used[195] {
		return 195
	}
	for m := uint32(240); m < 255; m++ { // LOCAL/EXPERIMENTAL USE
		if !used[m] {
			return m
		}
	}
	t.Skip("no free char major")
	return 0
}

// requireDevNodesWork skips unless device nodes made under the temp dir can be opened
// (root, and the temp dir not on a nodev mount).
func requireDevNodesWork(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	dir := t.TempDir()
	node := filepath.Join(dir, "null")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		testenv.Skip(t, "mknod in the temp dir: "+err.Error())
	}
	fd, err := unix.Open(node, unix.O_RDWR, 0)
	if err != nil {
		testenv.Skip(t, "open a device node in the temp dir (nodev mount?): "+err.Error())
	}
	unix.Close(fd)
}

func mknod(path string, major, minor uint32) error {
	os.Remove(path)
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor))); err != nil {
		return err
	}
	return os.Chmod(path, 0o666)
}
