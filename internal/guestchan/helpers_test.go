package guestchan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"gpupass/internal/log"
	"gpupass/internal/lxctest"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

func TestMain(m *testing.M) {
	if os.Getenv(envBenchClient) != "" {
		os.Exit(benchClientMain())
	}
	if sock := os.Getenv(envPeerDial); sock != "" {
		os.Exit(peerDialMain(sock))
	}
	lxctest.Cgroup2Main(m)
}

// noLeaks checks, after every other cleanup of t, that no goroutine outlives the test.
// Tests that use it do not run in parallel.
func noLeaks(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// fakeProcs simulates many processes from this one: a client binds an abstract address
// that names a fake pid, PeerPID reads it back from the connection, and PeerCgroup
// answers the /proc/<pid>/cgroup registered for it.
type fakeProcs struct {
	mu      sync.Mutex
	cgroups map[int32]string
	users   map[int32]error // PeerRoot's verdict for a pid; nil = the container's root
}

var (
	fakePIDs atomic.Int32
	dialSeq  atomic.Int64
)

func newFakeProcs() *fakeProcs {
	return &fakeProcs{cgroups: map[int32]string{}, users: map[int32]error{}}
}

// notRoot registers a process like proc whose user is not its container's root.
func (f *fakeProcs) notRoot(content string) int32 {
	pid := f.proc(content)
	f.mu.Lock()
	f.users[pid] = fmt.Errorf("%w: peer pid %d runs as host uid 101000 (test)", ErrNotContainerRoot, pid)
	f.mu.Unlock()
	return pid
}

func (f *fakeProcs) root(_ *net.UnixConn, pid int32, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.users[pid]
}

// proc registers a process whose /proc/<pid>/cgroup is content and returns its pid.
func (f *fakeProcs) proc(content string) int32 {
	pid := 100000 + fakePIDs.Add(1)
	f.mu.Lock()
	f.cgroups[pid] = content
	f.mu.Unlock()
	return pid
}

// inContainer registers a process of plain LXC container id.
func (f *fakeProcs) inContainer(id string) int32 {
	return f.proc("12:devices:/\n0::/lxc.payload." + id + "\n")
}

func (f *fakeProcs) peerPID(conn *net.UnixConn) (int32, error) {
	name := conn.RemoteAddr().(*net.UnixAddr).Name
	parts := strings.Split(name, "/")
	if len(parts) < 2 {
		return 0, fmt.Errorf("test peer address %q names no pid", name)
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	return int32(pid), err
}

func (f *fakeProcs) cgroup(pid int32) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.cgroups[pid]
	if !ok {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, os.ErrNotExist)
	}
	return c, nil
}

// dialAs connects to sock as fake process pid.
func dialAs(sock string, pid int32) (*net.UnixConn, error) {
	laddr := &net.UnixAddr{Net: "unix", Name: fmt.Sprintf("@gpupass-guestchan-test/%d/%d/%d", os.Getpid(), pid, dialSeq.Add(1))}
	return net.DialUnix("unix", laddr, &net.UnixAddr{Net: "unix", Name: sock})
}

// fixture is a running registry with fake identities.
type fixture struct {
	t     *testing.T
	r     *Registry
	procs *fakeProcs
	cfg   Config
	stop  func() // ends Run and waits for it (also at cleanup)
}

// testConfig is the configuration most tests start from.
func testConfig(t *testing.T) Config {
	return Config{
		Dir:          filepath.Join(t.TempDir(), "guests"),
		Heartbeat:    time.Second,
		HelloTimeout: 2 * time.Second,
		Log:          log.ForTest(t, "guestchan"),
		Build:        "test",
	}
}

// start runs a registry with cfg (fake identities unless cfg sets its own) until the
// test ends.
func start(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{t: t, procs: newFakeProcs()}
	if cfg.PeerPID == nil {
		cfg.PeerPID = f.procs.peerPID
	}
	if cfg.PeerCgroup == nil {
		cfg.PeerCgroup = f.procs.cgroup
	}
	if cfg.PeerRoot == nil {
		cfg.PeerRoot = f.procs.root
	}
	f.cfg = cfg
	f.r = New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()
	f.stop = sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of the cancel")
		}
	})
	t.Cleanup(f.stop)
	return f
}

// ensure makes the socket of id and returns its path.
func (f *fixture) ensure(id string) string {
	f.t.Helper()
	dir, err := f.r.Ensure(id)
	if err != nil {
		f.t.Fatalf("Ensure(%q): %v", id, err)
	}
	return filepath.Join(dir, SocketName)
}

// testGuest is a guest agent reduced to its protocol.
type testGuest struct {
	sess    *wire.Session
	st      *wire.Stream
	exps    chan *pb.Expectation
	recvErr chan error
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	seq     uint64
}

type guestOpts struct {
	claim string  // Hello container id
	role  pb.Role // default GUEST_AGENT
	boot  string
}

// connectGuest dials sock as pid, says Hello and opens guest.Session. The guest is closed
// when the test ends.
func connectGuest(t *testing.T, sock string, pid int32, o guestOpts) (*testGuest, error) {
	t.Helper()
	conn, err := dialAs(sock, pid)
	if err != nil {
		return nil, err
	}
	return connectConn(t, conn, o)
}

// connectGuestReal is connectGuest for this process as it is (no fake pid).
func connectGuestReal(t *testing.T, sock string) (*testGuest, error) {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	return connectConn(t, conn, guestOpts{})
}

func connectConn(t *testing.T, conn net.Conn, o guestOpts) (*testGuest, error) {
	t.Helper()
	if o.role == pb.Role_ROLE_UNSPECIFIED {
		o.role = pb.Role_ROLE_GUEST_AGENT
	}
	ctx, cancel := context.WithCancel(context.Background())
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	defer hcancel()
	sess, err := wire.Client(hctx, conn, wire.Config{Role: o.role, Build: "test-guest", ContainerID: o.claim, BootID: o.boot, MaxFrame: 1 << 20}, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	st, err := sess.Open(ctx, Method)
	if err != nil {
		cancel()
		sess.Close()
		return nil, err
	}
	g := &testGuest{sess: sess, st: st, exps: make(chan *pb.Expectation, 64), recvErr: make(chan error, 1), cancel: cancel}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			e := &pb.Expectation{}
			if err := st.RecvReply(e); err != nil {
				g.recvErr <- err
				return
			}
			select {
			case g.exps <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(g.close)
	return g, nil
}

func mustGuest(t *testing.T, sock string, pid int32, o guestOpts) *testGuest {
	t.Helper()
	g, err := connectGuest(t, sock, pid, o)
	if err != nil {
		t.Fatalf("connect guest: %v", err)
	}
	return g
}

func (g *testGuest) close() {
	g.cancel()
	g.st.Close()
	g.sess.Close()
	g.wg.Wait()
}

// expectation waits for the next pushed expectation.
func (g *testGuest) expectation(t *testing.T) *pb.Expectation {
	t.Helper()
	select {
	case e := <-g.exps:
		return e
	case err := <-g.recvErr:
		t.Fatalf("guest: no expectation: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("guest: no expectation within 5s")
	}
	return nil
}

// report sends a report (seq filled in).
func (g *testGuest) report(t *testing.T, rep *pb.GuestReport) {
	t.Helper()
	g.seq++
	rep.Seq = g.seq
	if err := g.st.Send(rep); err != nil {
		t.Fatalf("guest: send report: %v", err)
	}
}

// waitFor waits up to 5s for pred on id's snapshot.
func (f *fixture) waitFor(id string, what string, pred func(Snapshot) bool) Snapshot {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := f.r.Wait(ctx, id, pred)
	if err != nil {
		f.t.Fatalf("wait for %s of %s: %v (last snapshot %+v)", what, id, err, s)
	}
	return s
}

func seqIs(n uint64) func(Snapshot) bool {
	return func(s Snapshot) bool { return s.Report.GetSeq() == n }
}

// syncBuffer is a log sink tests can read while the registry writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

// isRefused reports whether err is a Hello refusal whose reason contains want.
func isRefused(err error, want string) bool {
	return errors.Is(err, wire.ErrRefused) && strings.Contains(err.Error(), want)
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// leaveStaleSocket makes a socket file nobody listens on, as a killed agent leaves.
func leaveStaleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: path})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func statIno(path string) (uint64, bool) {
	fi, err := os.Lstat(path)
	if err != nil {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ino, true
}
