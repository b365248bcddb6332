package observe

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// GuestSocketEvidence gathers, from the host and without exec, what the container of
// initPID sees of the host's socket hostDir/name: the socket's identity, what
// <dir>/<name> resolves to through <procRoot>/<initPID>/root for each dir (symlinks
// resolved inside the container's root, as a process there would), and the init's
// mountinfo. Where the host has no socket there yet (a container the agent has not served
// before), the directory itself is the evidence: hostDir against each dir. Judge it with
// JudgeSocket.
func GuestSocketEvidence(procRoot string, initPID int, hostDir, name string, dirs []string) (SocketEvidence, error) {
	ev := SocketEvidence{Dirs: dirs, Inside: map[string]FileID{}}
	var host unix.Stat_t
	err := unix.Stat(filepath.Join(hostDir, name), &host)
	if errors.Is(err, unix.ENOENT) {
		name = ""
		err = unix.Stat(hostDir, &host)
	}
	if err != nil {
		return ev, fmt.Errorf("stat host socket %s: %w", filepath.Join(hostDir, name), err)
	}
	ev.Host = FileID{Dev: host.Dev, Ino: host.Ino}
	// The socket directory's path within its filesystem, from this process's own view.
	if dir, err := filepath.EvalSymlinks(hostDir); err == nil {
		if self, err := readMountinfo(filepath.Join(procRoot, "self", "mountinfo")); err == nil {
			ev.HostDirRoot = PathInFilesystem(self, dir, host.Dev)
		}
	}
	root, err := openRoot(procRoot, initPID)
	if err != nil {
		return ev, err
	}
	defer unix.Close(root)
	for _, d := range dirs {
		p := path.Join(d, name)
		st, err := statIn(root, p)
		switch {
		case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR):
			continue
		case err != nil:
			return ev, fmt.Errorf("stat %s in the root of pid %d: %w", p, initPID, err)
		}
		ev.Inside[d] = FileID{Dev: st.Dev, Ino: st.Ino}
	}
	if ev.Mounts, err = Mounts(procRoot, initPID); err != nil {
		return ev, err
	}
	return ev, nil
}

func readMountinfo(p string) ([]Mount, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return ParseMountinfo(b)
}
