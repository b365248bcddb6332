package inputlimit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", n)), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name    string
		path    string
		limit   int64
		wantErr string
	}{
		{"under", write("a", 10), 11, ""},
		{"at the limit", write("b", 11), 11, ""},
		{"over", write("c", 12), 11, "c: too large: 12 bytes, the limit is 11 bytes; is it the right file?"},
		{"MiB", write("d", 3<<20), 1 << 20, "d: too large: 3 MiB, the limit is 1 MiB; is it the right file?"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := ReadFile(tt.path, tt.limit)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if fi, _ := os.Stat(tt.path); int64(len(b)) != fi.Size() {
					t.Fatalf("read %d bytes, want %d", len(b), fi.Size())
				}
				return
			}
			if !errors.Is(err, ErrTooLarge) || !strings.HasSuffix(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want ErrTooLarge ending %q", err, tt.wantErr)
			}
		})
	}
}

// An endless input (a FIFO, /dev/zero) is cut at the bound, not read to the end.
func TestReadFileEndless(t *testing.T) {
	_, err := ReadFile("/dev/zero", 1<<20)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 1 MiB") {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}
