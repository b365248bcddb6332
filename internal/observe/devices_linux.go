package observe

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Node is what a path inside the container is, seen from the host.
type Node struct {
	Exists   bool
	Char     bool // a character device (an empty regular file left by an optional bind is not)
	Major    uint32
	Minor    uint32
	Perm     os.FileMode
	UID, GID uint32 // host ids (an unprivileged container sees them shifted)
}

// Devices stats each container path (such as /dev/nvidia0) through
// <procRoot>/<initPID>/root, resolving symlinks inside the container's root, and returns
// what it finds, keyed by the path as given.
func Devices(procRoot string, initPID int, paths []string) (map[string]Node, error) {
	root, err := openRoot(procRoot, initPID)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	nodes := make(map[string]Node, len(paths))
	for _, p := range paths {
		st, err := statIn(root, p)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			nodes[p] = Node{}
			continue
		case err != nil:
			return nil, fmt.Errorf("stat %s in the root of pid %d: %w", p, initPID, err)
		}
		n := Node{Exists: true, Perm: os.FileMode(st.Mode & 0o7777), UID: st.Uid, GID: st.Gid}
		if st.Mode&unix.S_IFMT == unix.S_IFCHR {
			n.Char = true
			n.Major, n.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		}
		nodes[p] = n
	}
	return nodes, nil
}

// openRoot opens <procRoot>/<pid>/root as an O_PATH directory.
func openRoot(procRoot string, pid int) (int, error) {
	if pid <= 0 {
		return -1, fmt.Errorf("open root of pid %d: %w", pid, ErrNoProcess)
	}
	p := filepath.Join(procRoot, strconv.Itoa(pid), "root")
	fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return -1, fmt.Errorf("open %s: %w", p, ErrNoProcess)
	}
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", p, err)
	}
	return fd, nil
}

// statIn stats the container path p relative to root, with the container's root as "/" for
// symlinks and "..". Without openat2 (Linux < 5.6) it falls back to fstatat without
// following symlinks.
func statIn(root int, p string) (*unix.Stat_t, error) {
	rel := strings.TrimPrefix(path.Clean("/"+p), "/")
	if rel == "" {
		rel = "."
	}
	var st unix.Stat_t
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		if err := unix.Fstatat(root, rel, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, err
		}
		return &st, nil
	}
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// BindMounted reports whether the host node at hostPath is what the container of initPID
// has at containerPath: the same inode (st_dev and st_ino), served by a mount of the host
// node's filesystem (mountinfo major:minor = the node's st_dev). A node the container made
// itself with the same numbers, or an empty file left by an optional bind, is not.
func BindMounted(procRoot string, initPID int, hostPath, containerPath string) (bool, error) {
	var host unix.Stat_t
	if err := unix.Stat(hostPath, &host); err != nil {
		return false, fmt.Errorf("stat host node: %w", err)
	}
	root, err := openRoot(procRoot, initPID)
	if err != nil {
		return false, err
	}
	defer unix.Close(root)
	in, err := statIn(root, containerPath)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s in the root of pid %d: %w", containerPath, initPID, err)
	}
	if in.Dev != host.Dev || in.Ino != host.Ino {
		return false, nil
	}
	mounts, err := Mounts(procRoot, initPID)
	if err != nil {
		return false, err
	}
	m, ok := Serving(mounts, containerPath)
	return ok && m.Major == unix.Major(host.Dev) && m.Minor == unix.Minor(host.Dev), nil
}
