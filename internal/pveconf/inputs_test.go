package pveconf

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A NUL byte anywhere is refused with its line: PVE and LXC read C strings and would see
// another config than we edit.
func TestParseRefusesNUL(t *testing.T) {
	tests := []struct {
		name string
		in   string
		f    Format
		line int
	}{
		{"in a value", "arch: amd64\ncores: 4\x00\n", PVE, 2},
		{"in a comment", "# desc\x00ription\narch: amd64\n", PVE, 1},
		{"in a snapshot", "arch: amd64\n\n[snap]\nmemory: 1\x002\n", PVE, 4},
		{"lxc format", "lxc.uts.name = a\nlxc.arch = \x00x86_64\n", LXC, 2},
		{"alone on a line", "arch: amd64\n\x00\n", PVE, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in), tt.f)
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line != tt.line || !strings.Contains(pe.Msg, "NUL byte") {
				t.Fatalf("err = %v, want a ParseError on line %d about a NUL byte", err, tt.line)
			}
		})
	}
}

// A per-container config is never followed out of its directory; the directory itself may
// be a link (/etc/pve/lxc -> /etc/pve/nodes/<node>/lxc), and a link to a file in the same
// directory is followed.
func TestFileLinks(t *testing.T) {
	orig := []byte("arch: amd64\ncores: 2\n")
	next := []byte("arch: amd64\ncores: 4\n")
	tests := []struct {
		name    string
		setup   func(t *testing.T, root string) (conf, target string)
		outside bool
	}{
		{"plain file", func(t *testing.T, root string) (string, string) {
			p := filepath.Join(root, "etc/pve/lxc/901.conf")
			mustWrite(t, p, orig)
			return p, p
		}, false},
		{"directory is a link to the node's directory", func(t *testing.T, root string) (string, string) {
			p := filepath.Join(root, "etc/pve/nodes/pve1/lxc/901.conf")
			mustWrite(t, p, orig)
			if err := os.Symlink("nodes/pve1/lxc", filepath.Join(root, "etc/pve/lxc")); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(root, "etc/pve/lxc/901.conf"), p
		}, false},
		{"link to a file in the same directory", func(t *testing.T, root string) (string, string) {
			p := filepath.Join(root, "etc/pve/lxc/real-901.conf")
			mustWrite(t, p, orig)
			conf := filepath.Join(root, "etc/pve/lxc/901.conf")
			if err := os.Symlink("real-901.conf", conf); err != nil {
				t.Fatal(err)
			}
			return conf, p
		}, false},
		{"link out of the directory", func(t *testing.T, root string) (string, string) {
			p := filepath.Join(root, "etc/shadow-like")
			mustWrite(t, p, orig)
			conf := filepath.Join(root, "etc/pve/lxc/901.conf")
			mustMkdir(t, filepath.Dir(conf))
			if err := os.Symlink(p, conf); err != nil {
				t.Fatal(err)
			}
			return conf, p
		}, true},
		{"link to another node's directory", func(t *testing.T, root string) (string, string) {
			p := filepath.Join(root, "etc/pve/nodes/pve2/lxc/901.conf")
			mustWrite(t, p, orig)
			conf := filepath.Join(root, "etc/pve/nodes/pve1/lxc/901.conf")
			mustMkdir(t, filepath.Dir(conf))
			if err := os.Symlink("../../pve2/lxc/901.conf", conf); err != nil {
				t.Fatal(err)
			}
			return conf, p
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			conf, target := tt.setup(t, root)
			f := &File{Path: conf, LockPath: filepath.Join(root, "lock")}
			b, digest, rerr := f.Read()
			_, werr := f.Write(next, Digest(orig))
			got, _ := os.ReadFile(target)
			if tt.outside {
				if !errors.Is(rerr, ErrOutside) || !errors.Is(werr, ErrOutside) {
					t.Fatalf("read: %v; write: %v; want ErrOutside from both", rerr, werr)
				}
				if !bytes.Equal(got, orig) {
					t.Errorf("the file outside was changed:\n%s", got)
				}
				return
			}
			if rerr != nil || werr != nil || !bytes.Equal(b, orig) || digest != Digest(orig) {
				t.Fatalf("read %q, %v; write %v", b, rerr, werr)
			}
			if !bytes.Equal(got, next) {
				t.Errorf("target after write: %q, want %q", got, next)
			}
			if fi, err := os.Lstat(conf); err != nil || (conf != target && fi.Mode()&os.ModeSymlink == 0 && !strings.Contains(tt.name, "directory is a link")) {
				t.Errorf("the link itself was replaced: %v", err)
			}
		})
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, p string, b []byte) {
	t.Helper()
	mustMkdir(t, filepath.Dir(p))
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
}
