package pveconf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Sentinel errors of File.
var (
	// ErrLocked means another process held the config lock for all of LockTimeout.
	ErrLocked = errors.New("config locked by another writer")
	// ErrDigestMismatch means the config changed after it was read: plan again.
	ErrDigestMismatch = errors.New("config changed since it was read")
	// ErrOutside means the config is a symlink to a file outside its directory.
	ErrOutside = errors.New("config is a link out of its directory")
)

// DefaultLockTimeout bounds the wait for the config lock.
const DefaultLockTimeout = 10 * time.Second

// File is a config file on disk with the PVE writing discipline.
type File struct {
	// Path of the config, e.g. /etc/pve/lxc/901.conf.
	Path string
	// LockPath is the flock file. Empty: RunLockDir/pve-config-<id>.lock when RunLockDir
	// is set or Path lies under /etc/pve (RunLockDir then defaults to /run/lock/lxc, the
	// lock pct takes); otherwise "<Path>.lock" beside the file.
	LockPath string
	// RunLockDir is the host's /run/lock/lxc (a fixture directory in tests).
	RunLockDir string
	// BackupDir receives the previous bytes before each write ("" = no backup).
	BackupDir string
	// LockTimeout bounds the wait for the lock (default DefaultLockTimeout).
	LockTimeout time.Duration
	// Now stamps backup names (default time.Now).
	Now func() time.Time

	// failAt, in tests, fails the write at the named step ("temp", "rename").
	failAt string
}

// LockPathFor is PVE's config lock of container ctid under hostRoot:
// <hostRoot>/run/lock/lxc/pve-config-<ctid>.lock.
func LockPathFor(hostRoot, ctid string) string {
	return filepath.Join(hostRoot, "run/lock/lxc", "pve-config-"+ctid+".lock")
}

// ConfPathFor is /etc/pve/lxc/<ctid>.conf under hostRoot.
func ConfPathFor(hostRoot, ctid string) string {
	return filepath.Join(hostRoot, "etc/pve/lxc", ctid+".conf")
}

// PVEFile is the File of container ctid on a PVE host under hostRoot, with backups under
// stateDir/backups ("" stateDir: no backups).
func PVEFile(hostRoot, ctid, stateDir string) *File {
	f := &File{Path: ConfPathFor(hostRoot, ctid), LockPath: LockPathFor(hostRoot, ctid)}
	if stateDir != "" {
		f.BackupDir = filepath.Join(stateDir, "backups")
	}
	return f
}

// Lock is the lock file path in use (see LockPath).
func (f *File) Lock() string {
	if f.LockPath != "" {
		return f.LockPath
	}
	dir := f.RunLockDir
	if dir == "" && (strings.HasPrefix(filepath.Clean(f.Path), "/etc/pve/")) {
		dir = "/run/lock/lxc"
	}
	if dir != "" {
		id := strings.TrimSuffix(filepath.Base(f.Path), ".conf")
		return filepath.Join(dir, "pve-config-"+id+".lock")
	}
	return f.Path + ".lock"
}

// Read returns the config's bytes and their digest.
func (f *File) Read() ([]byte, string, error) {
	b, err := readLimited(f.Path)
	if err != nil {
		return nil, "", err
	}
	return b, Digest(b), nil
}

// resolve returns the file a config path names: the path with its directory resolved
// (/etc/pve/lxc is itself a link to /etc/pve/nodes/<node>/lxc), and a per-container file
// that is a symlink followed only while its target stays in that directory. A link out of
// it (to /etc/shadow, to another node's directory, to a file an unprivileged user owns) is
// refused with ErrOutside: gpupass never edits a file outside the config directory.
func resolve(path string) (string, error) {
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if errors.Is(err, os.ErrNotExist) {
		return path, nil // no directory, no file: opening it says so
	}
	if err != nil {
		return "", fmt.Errorf("resolve config directory of %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSymlink == 0 {
		return filepath.Join(dir, filepath.Base(path)), nil // a file, or none yet
	}
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("resolve config %s: %w (a dangling link: remove it or point it at a file in %s)", path, err, dir)
	}
	if filepath.Dir(target) != dir {
		return "", fmt.Errorf("config %s links to %s, outside %s: %w (replace the link with the file itself)", path, target, dir, ErrOutside)
	}
	return target, nil
}

func readLimited(path string) ([]byte, error) {
	real, err := resolve(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	fh, err := os.OpenFile(real, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read config %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("read config %s: more than %d bytes: %w", path, MaxSize, ErrTooLarge)
	}
	return b, nil
}

// Acquire takes the config lock, waiting at most LockTimeout; release it with the
// returned function. Write takes it itself.
func (f *File) Acquire() (release func(), err error) {
	lp := f.Lock()
	if err := os.MkdirAll(filepath.Dir(lp), 0o755); err != nil {
		return nil, fmt.Errorf("lock config: %w", err)
	}
	fd, err := unix.Open(lp, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock config: open %s: %w", lp, err)
	}
	timeout := f.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { unix.Flock(fd, unix.LOCK_UN); unix.Close(fd) }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			unix.Close(fd)
			return nil, fmt.Errorf("lock config: flock %s: %w", lp, err)
		}
		if time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("lock config: %s held by another process for %s (a running pct command or another writer; retry later): %w", lp, timeout, ErrLocked)
		}
		time.Sleep(wait)
		wait = min(wait*2, 100*time.Millisecond)
	}
}

// Write replaces the config with newBytes under the lock: it re-reads the file and
// fails with ErrDigestMismatch unless its digest is still expectDigest ("" skips the
// check, for a new file), keeps the previous bytes under BackupDir, then writes a temp
// file beside the config (<path>.tmp.<pid>, like PVE), fsyncs it and renames it over the
// config. It never chmods: the temp file is created with the old file's permission bits
// (through the umask; ownership is the writer's, as with PVE's own writes). Equal bytes
// write nothing. On any failure the config is untouched and the temp file removed. The
// lock is released before Write returns.
func (f *File) Write(newBytes []byte, expectDigest string) (backupPath string, err error) {
	if len(newBytes) > MaxSize {
		return "", fmt.Errorf("write config %s: %d bytes, more than %d: %w", f.Path, len(newBytes), MaxSize, ErrTooLarge)
	}
	release, err := f.Acquire()
	if err != nil {
		return "", err
	}
	defer release()

	perm := os.FileMode(0o640)
	cur, err := readLimited(f.Path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		cur = nil
	case err != nil:
		return "", err
	default:
		if fi, err := os.Stat(f.Path); err == nil {
			perm = fi.Mode().Perm()
		}
	}
	if expectDigest != "" && Digest(cur) != expectDigest {
		return "", fmt.Errorf("write config %s: digest is %s, expected %s (another writer changed it; plan again): %w", f.Path, Digest(cur), expectDigest, ErrDigestMismatch)
	}
	if cur != nil && bytes.Equal(cur, newBytes) {
		return "", nil
	}
	if cur != nil && f.BackupDir != "" {
		if backupPath, err = f.backup(cur); err != nil {
			return "", err
		}
	}
	if err := f.replace(newBytes, perm); err != nil {
		return backupPath, err
	}
	return backupPath, nil
}

func (f *File) backup(cur []byte) (string, error) {
	if err := os.MkdirAll(f.BackupDir, 0o700); err != nil {
		return "", fmt.Errorf("back up config: %w", err)
	}
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	stamp := now().UTC().Format("20060102T150405.000000000Z")
	base := filepath.Join(f.BackupDir, filepath.Base(f.Path)+"."+stamp)
	for i := 0; ; i++ {
		p := base + ".bak"
		if i > 0 {
			p = fmt.Sprintf("%s.%d.bak", base, i)
		}
		err := writeSync(p, cur, 0o600)
		if errors.Is(err, os.ErrExist) && i < 100 {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("back up config: %w", err)
		}
		return p, nil
	}
}

func (f *File) replace(b []byte, perm os.FileMode) error {
	// A config that is itself a symlink (inside its directory) is replaced at its target
	// (the link stays).
	target, err := resolve(f.Path)
	if err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	tmp := ""
	for i := 0; i < 100; i++ {
		tmp = fmt.Sprintf("%s.tmp.%d", target, os.Getpid())
		if i > 0 {
			tmp = fmt.Sprintf("%s.%d", tmp, i)
		}
		if f.failAt == "temp" {
			err = fmt.Errorf("injected failure")
		} else {
			err = writeSync(tmp, b, perm)
		}
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		if !errors.Is(err, os.ErrExist) {
			os.Remove(tmp)
		}
		return fmt.Errorf("write config %s: temp file: %w", f.Path, err)
	}
	if f.failAt == "rename" {
		err = fmt.Errorf("injected failure")
	} else {
		err = os.Rename(tmp, target)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write config %s: rename: %w", f.Path, err)
	}
	// Make the rename durable; pmxcfs and some filesystems refuse fsync on a directory.
	if d, err := os.Open(filepath.Dir(target)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// writeSync creates path exclusively with perm, writes b and fsyncs it.
func writeSync(path string, b []byte, perm os.FileMode) error {
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		os.Remove(path)
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		os.Remove(path)
		return err
	}
	if err := fh.Close(); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
