package pveconf

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newFile(t *testing.T, content string, perm os.FileMode) *File {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "etc/pve/lxc/901.conf")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil {
		t.Fatal(err)
	}
	f := PVEFile(dir, "901", filepath.Join(dir, "state"))
	f.LockTimeout = 150 * time.Millisecond
	f.Now = func() time.Time { return time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC) }
	return f
}

func readString(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestWrite(t *testing.T) {
	f := newFile(t, "arch: amd64\n", 0o640)
	b, digest, err := f.Read()
	if err != nil || string(b) != "arch: amd64\n" || digest != Digest(b) {
		t.Fatalf("Read = %q, %s, %v", b, digest, err)
	}
	backup, err := f.Write([]byte("arch: amd64\ncores: 2\n"), digest)
	if err != nil {
		t.Fatal(err)
	}
	if got := readString(t, f.Path); got != "arch: amd64\ncores: 2\n" {
		t.Errorf("config = %q", got)
	}
	if !strings.HasPrefix(backup, filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(f.Path)))), "state/backups/901.conf.20261125T220000")) {
		t.Errorf("backup path = %s", backup)
	}
	if got := readString(t, backup); got != "arch: amd64\n" {
		t.Errorf("backup = %q", got)
	}
	fi, err := os.Stat(f.Path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode after write = %v (%v), want 0640 kept", fi.Mode().Perm(), err)
	}
	leftovers, _ := filepath.Glob(f.Path + ".tmp.*")
	if len(leftovers) != 0 {
		t.Errorf("temp files left: %v", leftovers)
	}
	if _, err := os.Stat(LockPathFor(filepath.Dir(filepath.Dir(filepath.Dir(filepath.Dir(f.Path)))), "901")); err != nil {
		t.Errorf("lock file not under run/lock/lxc: %v", err)
	}

	// A second backup in the same instant gets its own name.
	_, digest, _ = f.Read()
	backup2, err := f.Write([]byte("arch: amd64\n"), digest)
	if err != nil || backup2 == backup || readString(t, backup2) != "arch: amd64\ncores: 2\n" {
		t.Errorf("second write: backup %s, %v", backup2, err)
	}
	// Equal bytes write nothing.
	_, digest, _ = f.Read()
	if backup3, err := f.Write([]byte("arch: amd64\n"), digest); err != nil || backup3 != "" {
		t.Errorf("no-op write: backup %q, %v", backup3, err)
	}
}

func TestWriteLocked(t *testing.T) {
	f := newFile(t, "arch: amd64\n", 0o644)
	// Another writer (pct) holds the lock on its own file description.
	if err := os.MkdirAll(filepath.Dir(f.Lock()), 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(f.Lock(), unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	_, digest, _ := f.Read()
	start := time.Now()
	_, err = f.Write([]byte("arch: arm64\n"), digest)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Write under a held lock = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("waited %v for the lock, want about LockTimeout (150ms)", d)
	}
	if got := readString(t, f.Path); got != "arch: amd64\n" {
		t.Errorf("config changed under a held lock: %q", got)
	}
	// Released: the write goes through.
	unix.Flock(fd, unix.LOCK_UN)
	if _, err := f.Write([]byte("arch: arm64\n"), digest); err != nil {
		t.Errorf("Write after release: %v", err)
	}
}

func TestWriteDigestMismatch(t *testing.T) {
	f := newFile(t, "arch: amd64\n", 0o644)
	_, digest, _ := f.Read()
	// Someone else writes in between.
	if err := os.WriteFile(f.Path, []byte("arch: amd64\ncores: 9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := f.Write([]byte("arch: amd64\nmemory: 1\n"), digest)
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Write = %v, want ErrDigestMismatch", err)
	}
	if got := readString(t, f.Path); got != "arch: amd64\ncores: 9\n" {
		t.Errorf("config overwritten: %q", got)
	}
	if ents, _ := os.ReadDir(f.BackupDir); len(ents) != 0 {
		t.Errorf("backup written on a refused write: %v", ents)
	}
}

func TestWriteFailureLeavesOriginal(t *testing.T) {
	for _, step := range []string{"temp", "rename"} {
		t.Run(step, func(t *testing.T) {
			f := newFile(t, "arch: amd64\n", 0o644)
			f.failAt = step
			_, digest, _ := f.Read()
			if _, err := f.Write([]byte("arch: arm64\n"), digest); err == nil {
				t.Fatal("injected failure not reported")
			}
			if got := readString(t, f.Path); got != "arch: amd64\n" {
				t.Errorf("config = %q, want original", got)
			}
			if left, _ := filepath.Glob(f.Path + ".tmp.*"); len(left) != 0 {
				t.Errorf("temp files left: %v", left)
			}
		})
	}
	f := newFile(t, "arch: amd64\n", 0o644)
	_, digest, _ := f.Read()
	if _, err := f.Write(bytes.Repeat([]byte("#\n"), MaxSize), digest); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized write = %v, want ErrTooLarge", err)
	}
	// A backup that cannot be written stops the write.
	if err := os.MkdirAll(filepath.Dir(f.BackupDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.BackupDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("arch: arm64\n"), digest); err == nil || readString(t, f.Path) != "arch: amd64\n" {
		t.Errorf("write with unwritable backup dir: %v, config %q", err, readString(t, f.Path))
	}
}

func TestLockPath(t *testing.T) {
	tests := []struct {
		f    File
		want string
	}{
		{File{Path: "/etc/pve/lxc/901.conf"}, "/run/lock/lxc/pve-config-901.lock"},
		{File{Path: "/etc/pve/nodes/pve1/lxc/902.conf"}, "/run/lock/lxc/pve-config-902.lock"},
		{File{Path: "/tmp/h/etc/pve/lxc/903.conf", RunLockDir: "/tmp/h/run/lock/lxc"}, "/tmp/h/run/lock/lxc/pve-config-903.lock"},
		{File{Path: "/var/lib/lxc/gpu1/config"}, "/var/lib/lxc/gpu1/config.lock"},
		{File{Path: "/x/901.conf", LockPath: "/l"}, "/l"},
	}
	for _, tt := range tests {
		if got := tt.f.Lock(); got != tt.want {
			t.Errorf("Lock(%s) = %s, want %s", tt.f.Path, got, tt.want)
		}
	}
}

func TestWriteThroughSymlink(t *testing.T) {
	f := newFile(t, "arch: amd64\n", 0o640)
	real := f.Path + ".real"
	if err := os.Rename(f.Path, real); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(real), f.Path); err != nil {
		t.Fatal(err)
	}
	_, digest, _ := f.Read()
	if _, err := f.Write([]byte("arch: arm64\n"), digest); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(f.Path); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink replaced by a file: %v", err)
	}
	if got := readString(t, real); got != "arch: arm64\n" {
		t.Errorf("target = %q", got)
	}
}
