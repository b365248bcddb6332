package guestchan

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// maxCgroupFile bounds what is read of /proc/<pid>/cgroup.
const maxCgroupFile = 64 << 10

// PeerCredPID returns the PID of the process that connected conn (SO_PEERCRED), in the
// PID namespace of the caller.
func PeerCredPID(conn *net.UnixConn) (int32, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("read peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("read peer credentials: %w", err)
	}
	if credErr != nil {
		return 0, fmt.Errorf("read peer credentials: %w", credErr)
	}
	if cred.Pid <= 0 {
		return 0, errors.New("read peer credentials: the peer's pid is not visible here")
	}
	return cred.Pid, nil
}

// readProcCgroup reads <procRoot>/proc/<pid>/cgroup.
func readProcCgroup(procRoot string, pid int32) (string, error) {
	p := filepath.Join(procRoot, "proc", strconv.Itoa(int(pid)), "cgroup")
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCgroupFile))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return string(b), nil
}
