package guestchan

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	pb "gpupass/proto/gpupass/v1"
)

func gpuExpectation(minors ...uint32) *pb.Expectation {
	e := &pb.Expectation{KernelDriverVersion: "550.54.15", DriverLoaded: true}
	for _, m := range minors {
		e.Devices = append(e.Devices, &pb.ExpectedDevice{Path: "/dev/nvidia" + string(rune('0'+m)), Major: 195, Minor: m})
	}
	return e
}

// TestGuestSession walks a guest of container 901 through its life: the expectation at
// once, a report stored with the identity's container id, Wait waking promptly on it, a new
// expectation pushed to the connected guest, events, and the disconnect.
func TestGuestSession(t *testing.T) {
	noLeaks(t)
	cfg := testConfig(t)
	f := start(t, cfg)
	sock := f.ensure("901")
	f.r.SetExpectation("901", gpuExpectation(0))
	events, unsubscribe := f.r.Subscribe(16)
	defer unsubscribe()

	if s, ok := f.r.Latest("901"); !ok || s.Connected || s.Report != nil || s.Stale {
		t.Fatalf("before any guest: Latest = %+v, %v; want known, not connected, no report, not stale", s, ok)
	}

	g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{claim: "901", boot: "boot-a"})
	want := gpuExpectation(0)
	want.ContainerId = "901"
	want.HeartbeatIntervalMs = 1000
	if d := cmp.Diff(g.expectation(t), want, protocmp.Transform()); d != "" {
		t.Errorf("first expectation (-got +want):\n%s", d)
	}
	s := f.waitFor("901", "connection", func(s Snapshot) bool { return s.Connected })
	if s.Sessions != 1 || s.BootID != "boot-a" {
		t.Errorf("connected snapshot: sessions %d boot %q, want 1 and boot-a", s.Sessions, s.BootID)
	}
	if ev := nextEvent(t, events); ev.ID != "901" || !ev.Snapshot.Connected {
		t.Errorf("first event = %+v, want 901 connected", ev)
	}

	// Wait blocks until the report arrives, and wakes promptly.
	woke := make(chan time.Time, 1)
	waitErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := f.r.Wait(ctx, "901", func(s Snapshot) bool { return s.Report.GetReady() })
		woke <- time.Now()
		waitErr <- err
	}()
	time.Sleep(20 * time.Millisecond) // let Wait block first
	sent := time.Now()
	g.report(t, &pb.GuestReport{ContainerId: "902", BootId: "boot-a", Ready: true, Trigger: "connect",
		Devices: []*pb.DeviceCheck{{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195}}})
	latency := (<-woke).Sub(sent)
	if err := <-waitErr; err != nil {
		t.Fatalf("Wait: %v", err)
	}
	t.Logf("Wait woke %v after the report was sent", latency)
	if latency > 500*time.Millisecond { // typically well under 1ms; polling would show
		t.Errorf("Wait woke %v after the report, want promptly (< 500ms)", latency)
	}
	s, _ = f.r.Latest("901")
	if s.Report.GetContainerId() != "901" {
		t.Errorf("stored report claims container %q, want 901 (stamped from the identity)", s.Report.GetContainerId())
	}
	if !s.Connected || s.Stale || s.At.IsZero() {
		t.Errorf("after report: %+v, want connected, fresh, with a time", s)
	}
	if ev := nextEvent(t, events); !ev.Snapshot.Report.GetReady() {
		t.Errorf("report event = %+v, want the ready report", ev)
	}

	// A heartbeat that changes nothing wakes waiters but sends no event.
	g.report(t, &pb.GuestReport{BootId: "boot-a", Ready: true, Trigger: "heartbeat",
		Devices: []*pb.DeviceCheck{{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195}}})
	f.waitFor("901", "heartbeat", seqIs(2))
	select {
	case ev := <-events:
		t.Errorf("heartbeat without change sent an event: %+v", ev)
	default:
	}
	// A change does.
	g.report(t, &pb.GuestReport{BootId: "boot-a", Ready: false, Reasons: []string{"/dev/nvidia0 missing"}, Trigger: "change"})
	f.waitFor("901", "change", seqIs(3))
	if ev := nextEvent(t, events); ev.Snapshot.Report.GetReady() || len(ev.Snapshot.Report.GetReasons()) != 1 {
		t.Errorf("change event = %+v, want not ready with the reason", ev)
	}

	// A new expectation reaches the connected guest at once.
	f.r.SetExpectation("901", gpuExpectation(0, 1))
	if got := g.expectation(t); len(got.GetDevices()) != 2 || got.GetContainerId() != "901" {
		t.Errorf("pushed expectation = %v, want two devices for 901", got)
	}

	g.close()
	s = f.waitFor("901", "disconnect", func(s Snapshot) bool { return !s.Connected })
	if s.Report.GetSeq() != 3 || s.Sessions != 0 {
		t.Errorf("after disconnect: %+v, want the last report kept and no sessions", s)
	}
	if ev := nextEvent(t, events); ev.Snapshot.Connected {
		t.Errorf("disconnect event = %+v, want not connected", ev)
	}
}

func nextEvent(t *testing.T, ch <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-ch:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return Event{}
	}
}

// TestStale: a guest that stops reporting goes stale after StaleAfter, with an event, and
// comes back fresh with its next report.
func TestStale(t *testing.T) {
	noLeaks(t)
	cfg := testConfig(t)
	cfg.Heartbeat = 20 * time.Millisecond // StaleAfter 60ms
	cfg.IdleTimeout = 10 * time.Second
	f := start(t, cfg)
	sock := f.ensure("901")
	f.r.SetExpectation("901", gpuExpectation(0))
	events, unsubscribe := f.r.Subscribe(16)
	defer unsubscribe()
	g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{})
	if e := g.expectation(t); e.GetHeartbeatIntervalMs() != 20 {
		t.Errorf("heartbeat_interval_ms = %d, want 20", e.GetHeartbeatIntervalMs())
	}
	g.report(t, &pb.GuestReport{Ready: true})
	at := f.waitFor("901", "report", seqIs(1)).At
	s := f.waitFor("901", "staleness", func(s Snapshot) bool { return s.Stale })
	if age := time.Since(at); age < 60*time.Millisecond {
		t.Errorf("stale after %v, want >= StaleAfter (60ms)", age)
	}
	if !s.Connected {
		t.Errorf("stale guest shows disconnected: %+v", s)
	}
	var sawStale bool
	for !sawStale {
		ev := nextEvent(t, events)
		sawStale = ev.Snapshot.Stale
	}
	g.report(t, &pb.GuestReport{Ready: true})
	f.waitFor("901", "fresh report", func(s Snapshot) bool { return !s.Stale && s.Report.GetSeq() == 2 })
	if ev := nextEvent(t, events); ev.Snapshot.Stale {
		t.Errorf("event after the fresh report = %+v, want not stale", ev)
	}
}

// TestEnsure covers the socket's file system side.
func TestEnsure(t *testing.T) {
	noLeaks(t)
	cfg := testConfig(t)
	f := start(t, cfg)

	sock := f.ensure("901")
	fi, err := os.Lstat(sock)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket %s: %v, %v; want a 0666 socket", sock, fi.Mode(), err)
	}
	if di, err := os.Stat(filepath.Dir(sock)); err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("directory mode %v (%v), want 0755", di.Mode(), err)
	}
	var ino uint64
	if st, ok := statIno(sock); ok {
		ino = st
	}
	if again := f.ensure("901"); again != sock {
		t.Errorf("second Ensure = %s", again)
	}
	if st, _ := statIno(sock); st != ino {
		t.Error("second Ensure re-created the socket, want idempotent")
	}

	// A socket left behind by a dead agent is replaced.
	staleDir := filepath.Join(cfg.Dir, "stale")
	if err := os.MkdirAll(staleDir, 0o700); err != nil {
		t.Fatal(err)
	}
	leaveStaleSocket(t, filepath.Join(staleDir, SocketName))
	f.ensure("stale")
	if di, _ := os.Stat(staleDir); di.Mode().Perm() != 0o755 {
		t.Errorf("existing directory keeps mode %v, want 0755", di.Mode().Perm())
	}

	tests := []struct {
		name    string
		id      string
		prepare func(t *testing.T, dir string)
		want    string
		is      error
	}{
		{name: "empty id", id: "", is: ErrInvalidID},
		{name: "dot dot", id: "..", is: ErrInvalidID},
		{name: "slash", id: "90/1", is: ErrInvalidID},
		{name: "blank", id: "9 1", is: ErrInvalidID},
		{name: "leading dash", id: "-901", is: ErrInvalidID},
		{name: "too long", id: string(make([]byte, 65)), is: ErrInvalidID},
		{name: "regular file at the socket path", id: "file", want: "holds a regular file, not a socket",
			prepare: func(t *testing.T, dir string) {
				mkdir(t, dir)
				if err := os.WriteFile(filepath.Join(dir, SocketName), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "directory is a symlink", id: "link", want: "not a directory",
			prepare: func(t *testing.T, dir string) {
				if err := os.Symlink(t.TempDir(), dir); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "another live listener", id: "busy", want: "served by another process",
			prepare: func(t *testing.T, dir string) {
				mkdir(t, dir)
				ln, err := net.Listen("unix", filepath.Join(dir, SocketName))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prepare != nil {
				tt.prepare(t, filepath.Join(cfg.Dir, tt.id))
			}
			_, err := f.r.Ensure(tt.id)
			switch {
			case err == nil:
				t.Fatal("Ensure: no error")
			case tt.is != nil && !errors.Is(err, tt.is):
				t.Errorf("Ensure: %v, want %v", err, tt.is)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("Ensure: %v, want it to say %q", err, tt.want)
			}
		})
	}

	long := New(Config{Dir: "/run/" + strings.Repeat("d", 100)})
	if _, err := long.Ensure("901"); err == nil || !strings.Contains(err.Error(), "shorten guest_socket_dir") {
		t.Errorf("Ensure with a long path: %v, want a hint to shorten guest_socket_dir", err)
	}
	if _, err := New(Config{}).Ensure("901"); err == nil {
		t.Error("Ensure without Dir: no error")
	}
	if got, want := f.r.IDs(), []string{"901", "stale"}; !cmp.Equal(got, want) {
		t.Errorf("IDs = %v, want %v", got, want)
	}
}

// TestRunLifecycle: Run serves sockets ensured before it, refuses a second Run, and on
// cancel closes listeners and sessions, removes the sockets and waits for its goroutines.
func TestRunLifecycle(t *testing.T) {
	noLeaks(t)
	cfg := testConfig(t)
	procs := newFakeProcs()
	cfg.PeerPID, cfg.PeerCgroup, cfg.PeerRoot = procs.peerPID, procs.cgroup, procs.root
	r := New(cfg)
	dir, err := r.Ensure("901") // before Run: listening, served once Run starts
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, SocketName)
	r.SetExpectation("901", gpuExpectation(0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	g := mustGuest(t, sock, procs.inContainer("901"), guestOpts{})
	g.expectation(t)
	if err := r.Run(context.Background()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	select {
	case <-g.sess.Done():
	case <-time.After(5 * time.Second):
		t.Error("guest session open after Run returned")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket after Run: %v, want removed", err)
	}
	if s, ok := r.Latest("901"); !ok || s.Connected {
		t.Errorf("after Run: %+v, %v; want known and disconnected", s, ok)
	}
}

// TestWait covers Wait's other ends: the context, an unknown id, and pred already true.
func TestWait(t *testing.T) {
	noLeaks(t)
	f := start(t, testConfig(t))
	f.ensure("901")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s, err := f.r.Wait(ctx, "901", func(s Snapshot) bool { return s.Connected })
	if !errors.Is(err, context.DeadlineExceeded) || s.Connected {
		t.Errorf("Wait past its deadline = %+v, %v; want the snapshot and DeadlineExceeded", s, err)
	}
	if _, err := f.r.Wait(context.Background(), "999", func(Snapshot) bool { return true }); !errors.Is(err, ErrUnknownContainer) {
		t.Errorf("Wait on an unknown id = %v, want ErrUnknownContainer", err)
	}
	if _, err := f.r.Wait(context.Background(), "901", func(Snapshot) bool { return true }); err != nil {
		t.Errorf("Wait with pred already true = %v", err)
	}
}

// TestSubscribeSlow: a subscriber that does not read loses events without blocking the
// registry, and learns how many it missed.
func TestSubscribeSlow(t *testing.T) {
	noLeaks(t)
	f := start(t, testConfig(t))
	sock := f.ensure("901")
	f.r.SetExpectation("901", gpuExpectation(0))
	events, unsubscribe := f.r.Subscribe(1)
	g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{}) // event 1: connect
	g.expectation(t)
	for i := range 3 { // events 2-4: each report changes readiness
		g.report(t, &pb.GuestReport{Ready: i%2 == 0})
		f.waitFor("901", "report", seqIs(uint64(i+1)))
	}
	if ev := <-events; !ev.Snapshot.Connected || ev.Missed != 0 {
		t.Errorf("first event = %+v, want the connect with nothing missed", ev)
	}
	// Seq 3 was ready; the next one changes that.
	g.report(t, &pb.GuestReport{Ready: false})
	f.waitFor("901", "report", seqIs(4))
	if ev := nextEvent(t, events); ev.Missed != 3 || ev.Snapshot.Report.GetSeq() != 4 {
		t.Errorf("event after the buffer filled = missed %d seq %d, want missed 3 seq 4", ev.Missed, ev.Snapshot.Report.GetSeq())
	}
	unsubscribe()
	unsubscribe() // idempotent
	if _, ok := <-events; ok {
		t.Error("channel open after unsubscribe")
	}
	g.report(t, &pb.GuestReport{Ready: true}) // no subscriber: must not block
	f.waitFor("901", "report", seqIs(5))
}

// TestSetExpectationCopies: the registry keeps its own copy, stamped.
func TestSetExpectationCopies(t *testing.T) {
	r := New(Config{Heartbeat: 2 * time.Second})
	e := gpuExpectation(0)
	r.SetExpectation("901", e)
	e.Devices = nil
	got := r.Expectation("901")
	if len(got.GetDevices()) != 1 || got.GetContainerId() != "901" || got.GetHeartbeatIntervalMs() != 2000 {
		t.Errorf("stored expectation = %v, want a stamped copy with one device", got)
	}
	if e.GetContainerId() != "" {
		t.Error("SetExpectation modified the caller's message")
	}
	r.SetExpectation("901", nil)
	if r.Expectation("901") != nil {
		t.Error("SetExpectation(nil) kept the old one")
	}
	if _, ok := r.Latest("901"); !ok {
		t.Error("an id with an expectation is unknown to Latest")
	}
}

// TestDefaults pins the documented defaults.
func TestDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	got := []any{c.ProcRoot, c.Heartbeat, c.StaleAfter, c.IdleTimeout, c.MaxReportBytes, c.ReportRate, c.ReportBurst, c.MaxSessionsPerContainer, c.HelloTimeout}
	want := []any{"/", 10 * time.Second, 30 * time.Second, time.Minute, 256 << 10, 20.0, 40, 4, 5 * time.Second}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("defaults (-got +want):\n%s", d)
	}
}
