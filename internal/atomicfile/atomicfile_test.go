package atomicfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestWrite(t *testing.T) {
	old := syscall.Umask(0o077) // the mode is perm whatever the umask
	defer syscall.Umask(old)
	tests := []struct {
		name     string
		existing string // "" for no file
		perm     fs.FileMode
		content  string
	}{
		{name: "new file", perm: 0o644, content: "a\n"},
		{name: "replaces", existing: "old content\n", perm: 0o600, content: "new\n"},
		{name: "empty content", existing: "x", perm: 0o640, content: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "f.conf")
			if tt.existing != "" {
				if err := os.WriteFile(p, []byte(tt.existing), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if err := Write(p, []byte(tt.content), tt.perm); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(b), tt.content); d != "" {
				t.Errorf("content (-got +want):\n%s", d)
			}
			fi, _ := os.Stat(p)
			if fi.Mode().Perm() != tt.perm {
				t.Errorf("mode %v, want %v", fi.Mode().Perm(), tt.perm)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 1 {
				t.Errorf("directory holds %d entries, want only the file (no temporary left)", len(ents))
			}
		})
	}
}

func TestWriteFailureLeavesTheOldFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory where the file should be: the rename fails.
	target := filepath.Join(dir, "d")
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := Write(target, []byte("new"), 0o600)
	if err == nil || !strings.Contains(err.Error(), "write "+target) {
		t.Fatalf("Write over a non-empty directory = %v, want an error naming it", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %d entries after the failure, want 2 (no temporary left)", len(ents))
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("Write into a missing directory: no error")
	}
}
