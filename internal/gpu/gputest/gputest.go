// Package gputest turns the host fixtures under internal/gpu/testdata/<name>/ into
// something tests can discover: the /proc files are real files there, and the device
// nodes, which a repository cannot hold, are listed in <name>/dev.txt.
//
// dev.txt holds one entry per line, "PATH TYPE MAJOR:MINOR MODE" ('#' starts a comment):
// TYPE is c (char device), f (regular file), d (directory) or l (symlink, MAJOR:MINOR is
// then the target); MAJOR:MINOR is "-" for f and d; MODE is octal permission bits.
//
// Inventory discovers a fixture without root by reading the manifest instead of /dev
// (through gpu.Discoverer.ListNodes, a seam production code leaves nil); MakeRoot
// materialises the tree with real nodes (mknod) and needs root.
package gputest

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"gpupass/internal/gpu"
	"gpupass/internal/testenv"

	"golang.org/x/sys/unix"
)

// Entry is one line of a dev.txt manifest.
type Entry struct {
	Path         string
	Type         byte // 'c', 'f', 'd' or 'l'
	Major, Minor uint32
	Target       string // for 'l'
	Mode         os.FileMode
}

// Dir is the absolute path of fixture name (internal/gpu/testdata/<name>): beside this
// source file, or, when the binary runs elsewhere (a test binary copied to another
// machine), under the module root found upwards from the working directory.
func Dir(name string) string {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "..", "testdata")
	if _, err := os.Stat(dir); err != nil {
		if wd, err := os.Getwd(); err == nil {
			for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
				if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
					dir = filepath.Join(d, "internal", "gpu", "testdata")
					break
				}
			}
		}
	}
	return filepath.Join(dir, name)
}

// Names lists the fixtures.
func Names() []string {
	ents, _ := os.ReadDir(Dir(""))
	var out []string
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), "h100-capture") {
			if _, err := os.Stat(filepath.Join(Dir(e.Name()), "proc")); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

// ParseManifest parses a dev.txt manifest.
func ParseManifest(b []byte) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 4 || len(f[1]) != 1 || !strings.HasPrefix(f[0], "/dev/") {
			return nil, fmt.Errorf("manifest line %d: want \"/dev/PATH TYPE MAJOR:MINOR MODE\", got %q", n, sc.Text())
		}
		mode, err := strconv.ParseUint(f[3], 8, 32)
		if err != nil || mode > 0o7777 {
			return nil, fmt.Errorf("manifest line %d: mode %q is not octal", n, f[3])
		}
		e := Entry{Path: filepath.Clean(f[0]), Type: f[1][0], Mode: os.FileMode(mode)}
		switch e.Type {
		case 'c':
			maj, min, ok := strings.Cut(f[2], ":")
			a, err1 := strconv.ParseUint(maj, 10, 32)
			b, err2 := strconv.ParseUint(min, 10, 32)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("manifest line %d: %q is not MAJOR:MINOR", n, f[2])
			}
			e.Major, e.Minor = uint32(a), uint32(b)
		case 'l':
			e.Target = f[2]
		case 'f', 'd':
		default:
			return nil, fmt.Errorf("manifest line %d: type %q is not c, f, d or l", n, f[1])
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// Manifest reads fixture name's dev.txt.
func Manifest(t testing.TB, name string) []Entry {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(Dir(name), "dev.txt"))
	if err != nil {
		t.Fatalf("read fixture manifest: %v", err)
	}
	es, err := ParseManifest(b)
	if err != nil {
		t.Fatalf("fixture %s: %v", name, err)
	}
	return es
}

// ManifestNodes turns manifest entries into what gpu.ScanNodes would find for a tree
// holding them: /dev/nvidia* and /dev/nvidia-caps/* entries.
func ManifestNodes(es []Entry) map[string]gpu.Node {
	out := map[string]gpu.Node{}
	for _, e := range es {
		if !strings.HasPrefix(e.Path, "/dev/nvidia") || e.Path == gpu.DirCaps {
			continue
		}
		if strings.Count(e.Path, "/") > 2 && !strings.HasPrefix(e.Path, gpu.DirCaps+"/") {
			continue
		}
		n := gpu.Node{Path: e.Path, Mode: e.Mode.Perm()}
		switch e.Type {
		case 'c':
			n.Char, n.Major, n.Minor = true, e.Major, e.Minor
			n.Mode |= os.ModeDevice | os.ModeCharDevice
		case 'd':
			n.Mode |= os.ModeDir
		case 'l':
			n.Mode = os.ModeSymlink | 0o777
		}
		out[e.Path] = n
	}
	return out
}

// Inventory discovers fixture name without root: /proc from the fixture, nodes from its
// manifest. Its Root is then set to "/": the fixture stands for a real host, so rendered
// host paths read /dev/nvidia0 (not the fixture directory).
func Inventory(t testing.TB, name string) *gpu.Inventory {
	t.Helper()
	inv, err := Discover(t, name)
	if err != nil {
		t.Fatalf("discover fixture %s: %v", name, err)
	}
	inv.Root = "/"
	return inv
}

// Discover is Inventory returning Discover's error (for the no-driver fixture).
func Discover(t testing.TB, name string) (*gpu.Inventory, error) {
	t.Helper()
	nodes := ManifestNodes(Manifest(t, name))
	return gpu.Discoverer{Root: Dir(name), ListNodes: func(string) (map[string]gpu.Node, error) {
		return nodes, nil
	}}.Discover()
}

// MakeRoot copies fixture name into a fresh t.TempDir() and creates its manifest's nodes
// for real; it needs root (skips locally, fails under CI=true otherwise).
func MakeRoot(t testing.TB, name string) string {
	t.Helper()
	testenv.RequireRoot(t)
	root := t.TempDir()
	src := Dir(name)
	err := filepath.WalkDir(filepath.Join(src, "proc"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(root, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatalf("copy fixture %s: %v", name, err)
	}
	for _, e := range Manifest(t, name) {
		p := filepath.Join(root, e.Path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch e.Type {
		case 'c':
			err = gpu.Mknod(p, e.Major, e.Minor, e.Mode)
		case 'f':
			err = os.WriteFile(p, nil, e.Mode)
		case 'd':
			err = os.MkdirAll(p, e.Mode)
		case 'l':
			err = os.Symlink(e.Target, p)
		}
		if err != nil {
			t.Fatalf("fixture %s: create %s: %v", name, e.Path, err)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "dev")); err != nil {
		if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// SimulatedRoot writes a simulated host (gpu.WriteSimulatedHost) into a fresh directory
// and returns it; it needs root.
func SimulatedRoot(t testing.TB, opts gpu.SimOptions) string {
	t.Helper()
	testenv.RequireRoot(t)
	root := t.TempDir()
	if err := gpu.WriteSimulatedHost(root, opts); err != nil {
		t.Fatalf("write simulated host: %v", err)
	}
	return root
}

// CanOpen reports whether the node at path opens read-write (read-only when its mode
// has no write bit).
func CanOpen(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	flags := unix.O_RDWR
	if fi.Mode().Perm()&0o222 == 0 {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}
