package guestchan

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/lxctest"
)

// envPeerDial makes the test binary a peer: it dials the socket named, writes one byte,
// and exits (or, with GUESTCHAN_TEST_PEER_WAIT set, waits for its stdin to close).
const envPeerDial = "GUESTCHAN_TEST_PEER_DIAL"

func peerDialMain(sock string) int {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 2
	}
	if _, err := c.Write([]byte{1}); err != nil {
		return 2
	}
	if os.Getenv("GUESTCHAN_TEST_PEER_WAIT") != "" {
		var b [1]byte
		_, _ = os.Stdin.Read(b[:])
	}
	return 0
}

func TestParseRootMapping(t *testing.T) {
	tests := []struct {
		name, in string
		root     uint32
		ok       bool
	}{
		{"privileged (host namespace)", "         0          0 4294967295\n", 0, true},
		{"unprivileged container", "         0     100000      65536\n", 100000, true},
		{"split map", "1000 1000 1\n0 200000 1000\n", 200000, true},
		{"single user, no root", "1000 101000 1\n", 0, false},
		{"garbage", "x y z\n\n0 1\n", 0, false},
		{"zero count", "0 100000 0\n", 0, false},
		{"empty", "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, ok := parseRootMapping(tt.in)
			if diff := cmp.Diff([]any{root, ok}, []any{tt.root, tt.ok}); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

// peerOf starts the test binary as a peer that dials a fresh socket with attr (its
// credentials and namespaces) and returns the accepted connection, when it was accepted, the
// peer's pid and its stdin (close it to let a waiting peer exit).
func peerOf(t *testing.T, attr *syscall.SysProcAttr, wait bool) (*net.UnixConn, time.Time, *exec.Cmd, func()) {
	t.Helper()
	// Traversable by every user: the peer may run as another user.
	dir := lxctest.TempDir(t)
	bin := filepath.Join(dir, "peer")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: sock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envPeerDial+"="+sock)
	if wait {
		cmd.Env = append(cmd.Env, "GUESTCHAN_TEST_PEER_WAIT=1")
	}
	cmd.SysProcAttr = attr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start a peer with %+v: %v", attr, err)
	}
	_ = ln.SetDeadline(time.Now().Add(10 * time.Second))
	conn, err := ln.AcceptUnix()
	accepted := time.Now()
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the peer did not connect: %v", err)
	}
	var b [1]byte
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(b[:]); err != nil {
		t.Fatalf("read from the peer: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	release := func() {
		stdin.Close()
		_ = cmd.Wait()
	}
	t.Cleanup(release)
	return conn, accepted, cmd, release
}

// RootPeer, the default user check, on real peers: this host is a privileged container's
// stand-in (the host's user namespace), so only uid 0 passes; a peer in a user namespace
// of its own that does not own its pid namespace is refused although it is "root" there.
func TestRootPeerUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root")
		}
		t.Skip("needs root to start peers as other users")
	}
	check := RootPeer("/")
	tests := []struct {
		name    string
		attr    *syscall.SysProcAttr
		wantErr string // "" to accept
	}{
		{"root in the host namespace", nil, ""},
		{"another user", &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}, "runs as host uid 65534; only the container's root (host uid 0)"},
		{"root of its own user namespace", &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 65534, Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 65534, Size: 1}},
		}, "does not own its pid namespace"},
	}
	for _, mode := range []struct {
		name    string
		noPidfd bool
	}{{"SO_PEERPIDFD", false}, {"pidfd_open", true}} {
		forceNoPeerPidfd = mode.noPidfd
		for _, tt := range tests {
			t.Run(mode.name+"/"+tt.name, func(t *testing.T) {
				conn, accepted, cmd, _ := peerOf(t, tt.attr, true)
				err := check(conn, int32(cmd.Process.Pid), accepted)
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					return
				}
				if !errors.Is(err, ErrNotContainerRoot) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrNotContainerRoot with %q", err, tt.wantErr)
				}
			})
		}
	}
	forceNoPeerPidfd = false
}

// A peer that exits after connecting is refused, even when its pid has been given to
// another root process since (the pid is recycled on purpose through ns_last_pid):
// SO_PEERPIDFD pins the process that connected, not its number; without it (Linux < 6.5)
// pidfd_open and the process's start time, younger than the connection, tell.
func TestRootPeerRecycledPID(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI runs as root")
		}
		t.Skip("needs root to recycle a pid")
	}
	for _, tc := range []struct {
		name    string
		noPidfd bool
	}{{"SO_PEERPIDFD where the kernel has it", false}, {"pidfd_open and start time", true}} {
		t.Run(tc.name, func(t *testing.T) {
			forceNoPeerPidfd = tc.noPidfd
			defer func() { forceNoPeerPidfd = false }()
			recycledPeer(t)
		})
	}
}

func recycledPeer(t *testing.T) {
	conn, accepted, cmd, release := peerOf(t, nil, true)
	pid := cmd.Process.Pid
	release() // the peer exits and is reaped; the connection stays open
	// The impostor comes later than the accept's clock tick (10 ms): /proc's start times have
	// that resolution, the limit of the check without SO_PEERPIDFD.
	time.Sleep(time.Until(accepted.Add(25 * time.Millisecond)))
	recycled := false
	for try := 0; try < 20 && !recycled; try++ {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0o644); err != nil {
			t.Logf("cannot set ns_last_pid (%v): testing an exited peer only", err)
			break
		}
		impostor := exec.Command("sleep", "30")
		if err := impostor.Start(); err != nil {
			t.Fatal(err)
		}
		if impostor.Process.Pid == pid {
			recycled = true
			t.Cleanup(func() { _ = impostor.Process.Kill(); _ = impostor.Wait() })
			break
		}
		_ = impostor.Process.Kill()
		_ = impostor.Wait()
	}
	t.Logf("pid %d recycled by a root process: %v", pid, recycled)
	err := RootPeer("/")(conn, int32(pid), accepted)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("err = %v, want the exited peer refused", err)
	}
	t.Log(err)
}
