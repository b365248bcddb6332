package hostdriver

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// hostPath is where host path p is under root, with every symbolic link on the way,
// absolute or relative, resolved inside root as the host resolves it in its own / (openat2
// RESOLVE_IN_ROOT): a fixture tree or a captured host given as --host-root, whose links
// say /usr/local/nvidia/..., never leads Find or the hook to this machine's files. On the
// live host (root "" or "/") it is p. A path that does not resolve inside root is an error
// (ENOENT for a missing file, as os.Stat gives), never a path outside it.
func hostPath(root, p string) (string, error) {
	if root == "" || root == "/" {
		return p, nil
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &os.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(filepath.Clean(p), "/"), &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		return "", &os.PathError{Op: "open", Path: join(root, p), Err: err}
	}
	defer unix.Close(fd)
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", err
	}
	return real, nil
}
