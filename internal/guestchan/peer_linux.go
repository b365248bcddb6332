package guestchan

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/runtime"
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

// ErrNotContainerRoot is wrapped by the refusal of a peer that is not the container's root
// user (in its own user namespace).
var ErrNotContainerRoot = errors.New("not the container's root user")

// maxUIDMapFile bounds what is read of /proc/<pid>/uid_map (at most 340 lines of ids).
const maxUIDMapFile = 16 << 10

// RootPeer returns the default Config.PeerRoot: the peer of conn, whose pid is pid, must be
// the root user of its container, as the kernel says it, and still be that process when
// the identity checks end.
//
//   - The process: SO_PEERPIDFD (Linux >= 6.5) pins the peer; after /proc/<pid>/cgroup,
//     uid_map and the namespaces were read, a signal 0 through the pidfd proves the process
//     still lives, so a recycled pid cannot pass for the guest. Without SO_PEERPIDFD only
//     SO_PEERCRED is left (the weaker check of older kernels).
//   - The user (like Incus's /dev/incus): in a privileged container (the host's user
//     namespace) uid 0; in an unprivileged one the host uid that the container's uid_map
//     maps to 0. The peer must run in the container's own user namespace (a child of the
//     host's, owning the peer's pid namespace, which is a child of the host's): a user of
//     the container who makes a user namespace of its own is "root" there, and is refused.
//
// Without SO_PEERPIDFD (Linux < 6.5, e.g. Debian 12's 6.1) the fallback pins pid with
// pidfd_open (Linux >= 5.3) and refuses a process that started after the connection was
// accepted: a pid reused after the peer exited names a younger process. Only a reuse between
// the peer's connect and the end of the accept's 10 ms clock tick could pass there.
func RootPeer(procRoot string) func(conn *net.UnixConn, pid int32, accepted time.Time) error {
	return func(conn *net.UnixConn, pid int32, accepted time.Time) error {
		cred, pidfd, err := peerCredentials(conn)
		if err != nil {
			return err
		}
		if cred.Pid != pid {
			if pidfd >= 0 {
				unix.Close(pidfd)
			}
			return fmt.Errorf("check peer user: SO_PEERCRED names pid %d, not %d", cred.Pid, pid)
		}
		if pidfd < 0 {
			if pidfd, err = pinByStart(procRoot, pid, accepted); err != nil {
				return err
			}
		}
		defer unix.Close(pidfd)
		root, err := containerRoot(procRoot, pid)
		if err != nil {
			return err
		}
		if cred.Uid != root {
			return fmt.Errorf("%w: peer pid %d runs as host uid %d; only the container's root (host uid %d) may use the guest socket: run the guest agent as root", ErrNotContainerRoot, pid, cred.Uid, root)
		}
		if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
			return fmt.Errorf("check peer user: pid %d exited while it was identified (its pid may already be another process's): %w", pid, err)
		}
		return nil
	}
}

// forceNoPeerPidfd makes peerCredentials act as on a kernel without SO_PEERPIDFD (tests).
var forceNoPeerPidfd bool

// pinByStart is the fallback without SO_PEERPIDFD: a pidfd from pidfd_open, and the process
// it names must have started before the connection was accepted.
func pinByStart(procRoot string, pid int32, accepted time.Time) (int, error) {
	pidfd, err := unix.PidfdOpen(int(pid), 0)
	if err != nil {
		return -1, fmt.Errorf("check peer user: pin pid %d: %w (the peer exited)", pid, err)
	}
	start, err := runtime.StartTicks(filepath.Join(procRoot, "proc"), int(pid))
	if err != nil {
		unix.Close(pidfd)
		return -1, fmt.Errorf("check peer user: start time of pid %d: %w (the peer exited)", pid, err)
	}
	// The accept on the kernel's clock of process start times (CLOCK_BOOTTIME, in ticks).
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		unix.Close(pidfd)
		return -1, fmt.Errorf("check peer user: read the boot clock: %w", err)
	}
	acceptBoot := time.Duration(ts.Nano()) - time.Since(accepted)
	acceptTicks := uint64(acceptBoot / (time.Second / runtime.UserHZ))
	if start > acceptTicks {
		unix.Close(pidfd)
		return -1, fmt.Errorf("check peer user: pid %d started after the connection was accepted (tick %d > %d): the peer exited and its pid was reused", pid, start, acceptTicks)
	}
	return pidfd, nil
}

// peerCredentials reads SO_PEERCRED and SO_PEERPIDFD (-1 where the kernel lacks it).
func peerCredentials(conn *net.UnixConn) (*unix.Ucred, int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, -1, fmt.Errorf("read peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr, fdErr error
	pidfd := -1
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if forceNoPeerPidfd {
			fdErr = unix.ENOPROTOOPT
			return
		}
		pidfd, fdErr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	}); err != nil {
		return nil, -1, fmt.Errorf("read peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, -1, fmt.Errorf("read peer credentials: %w", credErr)
	}
	switch {
	case fdErr == nil:
	case errors.Is(fdErr, unix.ENOPROTOOPT):
		pidfd = -1 // Linux < 6.5: SO_PEERCRED only
	default:
		// The kernel has SO_PEERPIDFD but no process to pin: the peer is gone.
		return nil, -1, fmt.Errorf("read peer pidfd of pid %d: %w (the peer exited)", cred.Pid, fdErr)
	}
	return cred, pidfd, nil
}

// containerRoot is the host uid of the root user of pid's container, or an error when pid
// does not run in its container's own user namespace.
func containerRoot(procRoot string, pid int32) (uint32, error) {
	proc := filepath.Join(procRoot, "proc", strconv.Itoa(int(pid)))
	self, err := nsInode("/proc/self/ns/user")
	if err != nil {
		return 0, fmt.Errorf("check peer user: %w", err)
	}
	userFD, err := unix.Open(filepath.Join(proc, "ns", "user"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("check peer user: open user namespace of pid %d: %w", pid, err)
	}
	defer unix.Close(userFD)
	user, err := fdInode(userFD)
	if err != nil {
		return 0, fmt.Errorf("check peer user: %w", err)
	}
	if user == self {
		return 0, nil // a privileged container: root is root
	}
	parent, err := nsParent(userFD, unix.NS_GET_PARENT)
	if err != nil || parent != self {
		return 0, fmt.Errorf("%w: peer pid %d runs in a nested user namespace, not its container's own", ErrNotContainerRoot, pid)
	}
	if err := checkPidNS(proc, pid, user); err != nil {
		return 0, err
	}
	return mappedRoot(filepath.Join(proc, "uid_map"), pid)
}

// checkPidNS: the peer's pid namespace must be owned by its user namespace and be a child
// of the host's, as a container's is.
func checkPidNS(proc string, pid int32, user uint64) error {
	selfPid, err := nsInode("/proc/self/ns/pid")
	if err != nil {
		return fmt.Errorf("check peer user: %w", err)
	}
	fd, err := unix.Open(filepath.Join(proc, "ns", "pid"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("check peer user: open pid namespace of pid %d: %w", pid, err)
	}
	defer unix.Close(fd)
	owner, err := nsParent(fd, unix.NS_GET_USERNS)
	if err != nil || owner != user {
		return fmt.Errorf("%w: peer pid %d runs in a user namespace that does not own its pid namespace (a namespace made inside the container)", ErrNotContainerRoot, pid)
	}
	parent, err := nsParent(fd, unix.NS_GET_PARENT)
	if err != nil || parent != selfPid {
		return fmt.Errorf("%w: peer pid %d runs in a nested pid namespace, not its container's own", ErrNotContainerRoot, pid)
	}
	return nil
}

// nsParent runs a namespace ioctl (NS_GET_PARENT, NS_GET_USERNS) and returns the inode of
// the namespace it gives.
func nsParent(fd int, req uint) (uint64, error) {
	pfd, err := unix.IoctlRetInt(fd, req)
	if err != nil {
		return 0, err
	}
	defer unix.Close(pfd)
	return fdInode(pfd)
}

func fdInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat namespace: %w", err)
	}
	return st.Ino, nil
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// mappedRoot reads a uid_map (as the host sees it) and returns the host uid of uid 0.
func mappedRoot(path string, pid int32) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("check peer user: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxUIDMapFile))
	if err != nil {
		return 0, fmt.Errorf("check peer user: read %s: %w", path, err)
	}
	root, ok := parseRootMapping(string(b))
	if !ok {
		return 0, fmt.Errorf("%w: the user namespace of peer pid %d maps no root user", ErrNotContainerRoot, pid)
	}
	return root, nil
}
