package lxctest

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/testenv"
)

var busybox struct {
	once    sync.Once
	path    string
	applets []string
	err     error
}

// staticBusybox finds a statically linked busybox and its applet list (once per process).
func staticBusybox() (string, error) {
	busybox.once.Do(func() {
		for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
			if !isStatic(p) {
				continue
			}
			out, err := exec.Command(p, "--list").Output()
			if err != nil {
				busybox.err = fmt.Errorf("run %s --list: %w", p, err)
				return
			}
			busybox.path = p
			busybox.applets = strings.Fields(string(out))
			return
		}
		busybox.err = errors.New("needs a static busybox at /bin/busybox (apt-get install busybox-static)")
	})
	return busybox.path, busybox.err
}

func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// buildRootfs makes a minimal busybox root filesystem under dir.
func buildRootfs(dir, bb string, unpriv bool) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "dev", "proc", "sys", "etc", "run", "root", "var/log", "mnt"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := copyFile(bb, filepath.Join(dir, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	for _, a := range busybox.applets {
		if a == "busybox" || strings.Contains(a, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":    "root:x:0:\nnogroup:x:65534:\n",
		"etc/hostname": "lxctest\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	if !unpriv {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, SubIDStart, SubIDStart)
	})
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

var subIDMu sync.Mutex

// ensureSubIDs adds "root:100000:65536" to an /etc/subuid-style file unless root already
// has that range.
func ensureSubIDs(path string) error {
	subIDMu.Lock()
	defer subIDMu.Unlock()
	want := fmt.Sprintf("root:%d:%d", SubIDStart, SubIDCount)
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == want {
			return nil
		}
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("add %s to %s: %w", want, path, err)
	}
	prefix := ""
	if len(b) > 0 && b[len(b)-1] != '\n' {
		prefix = "\n"
	}
	if _, err := fmt.Fprintf(f, "%s%s\n", prefix, want); err != nil {
		f.Close()
		return fmt.Errorf("add %s to %s: %w", want, path, err)
	}
	return f.Close()
}

// makeTraversable adds o+x to dir and to those of its parents that live under the system
// temporary directory (t.TempDir makes them 0700), so that the mapped root of an
// unprivileged container can reach its rootfs and bind sources.
func makeTraversable(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", abs, err)
	}
	tmp := filepath.Clean(os.TempDir())
	for p := abs; ; p = filepath.Dir(p) {
		if p != abs && !strings.HasPrefix(p, tmp+"/") {
			return nil
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(p, fi.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("make %s traversable: %w", p, err)
			}
		}
		if p == "/" {
			return nil
		}
	}
}

// TempDir returns a fresh directory (removed when the test ends) that unprivileged
// containers can reach, for bind sources such as device nodes and socket directories.
func TempDir(t testing.TB) string {
	t.Helper()
	d := t.TempDir()
	if err := makeTraversable(d); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	return d
}

// Mknod makes a character device node with mode 0666 (the directory must not be on a nodev
// mount; t.TempDir is not). It skips the test (fails it in CI) unless running as root.
func Mknod(t testing.TB, path string, major, minor uint32) {
	t.Helper()
	testenv.RequireRoot(t)
	if err := unix.Mknod(path, unix.S_IFCHR|0o666, int(unix.Mkdev(major, minor))); err != nil {
		t.Fatalf("lxctest: mknod %s c %d %d: %v", path, major, minor, err)
	}
	if err := os.Chmod(path, 0o666); err != nil { // umask
		t.Fatalf("lxctest: %v", err)
	}
}
