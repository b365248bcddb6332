package guest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/guest/guesttest"
	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

func deniedReport() *pb.GuestReport {
	return &pb.GuestReport{ContainerId: "901", Network: okNetwork(), Devices: []*pb.DeviceCheck{{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_DENIED, Major: 195, Detail: "open: operation not permitted"}},
		Reasons: []string{"/dev/nvidia0: denied: open: operation not permitted"}}
}

// The marker follows the verdict: it exists exactly while ready, the status says why
// not, and a stopped agent claims nothing.
func TestMarker(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gpupass")
	m, err := NewMarker(dir, 4242)
	if err != nil {
		t.Fatal(err)
	}
	exists := func() bool { _, err := os.Stat(filepath.Join(dir, ReadyFile)); return err == nil }
	steps := []struct {
		name    string
		report  *pb.GuestReport
		ready   bool
		reasons []string
	}{
		{"not ready", deniedReport(), false, []string{"/dev/nvidia0: denied: open: operation not permitted"}},
		{"ready", &pb.GuestReport{Ready: true, Network: okNetwork()}, true, []string{}},
		{"ready again", &pb.GuestReport{Ready: true, Network: okNetwork(), TimeUnixNano: 5}, true, []string{}},
		{"device gone", &pb.GuestReport{Reasons: []string{"/dev/nvidia0: missing: no such file"}}, false, []string{"/dev/nvidia0: missing: no such file"}},
	}
	for _, s := range steps {
		if err := m.Update(s.report); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		j, err := ReadStatus(dir)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if exists() != s.ready || j.Ready != s.ready {
			t.Errorf("%s: marker %v, status ready %v; want %v", s.name, exists(), j.Ready, s.ready)
		}
		if diff := cmp.Diff(s.reasons, j.Reasons); diff != "" {
			t.Errorf("%s: reasons (-got +want):\n%s", s.name, diff)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, PIDFile)); string(b) != "4242\n" {
		t.Errorf("pid file %q", b)
	}
	if err := m.Update(&pb.GuestReport{Ready: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if exists() {
		t.Error("marker left after Close")
	}
	if _, err := os.Stat(filepath.Join(dir, PIDFile)); err == nil {
		t.Error("pid file left after Close")
	}

	// The host's socket directory (the old /run/gpupass mount) is not the guest's own.
	legacy := t.TempDir()
	if err := os.WriteFile(filepath.Join(legacy, "agent.sock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMarker(legacy, 1); err == nil || !strings.Contains(err.Error(), "holds the host's agent.sock") {
		t.Errorf("NewMarker in the host's socket directory: %v, want a refusal", err)
	}
}

// Wait follows a running agent's marker: it returns as the marker appears, and at the
// deadline it has the agent's reasons.
func TestWaitFollowsTheAgent(t *testing.T) {
	tests := []struct {
		name       string
		network    bool // --require-network
		report     *pb.GuestReport
		readyAfter time.Duration // the agent marks ready after this; 0 never
		wantReady  bool
		wantWhy    []string
	}{
		{name: "ready later", report: deniedReport(), readyAfter: 300 * time.Millisecond, wantReady: true, wantWhy: []string{}},
		{name: "denied until the deadline", report: deniedReport(), wantWhy: []string{"/dev/nvidia0: denied: open: operation not permitted"}},
		{name: "ready but no network", network: true, report: &pb.GuestReport{Ready: true, Network: &pb.Network{Reason: "no default route"}},
			wantWhy: []string{"network: no default route (wait --require-network)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			m, err := NewMarker(dir, 4242)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Update(tc.report); err != nil {
				t.Fatal(err)
			}
			var marked atomic.Int64
			if tc.readyAfter > 0 {
				time.AfterFunc(tc.readyAfter, func() {
					marked.Store(time.Now().UnixNano())
					if err := m.Update(&pb.GuestReport{Ready: true, Network: okNetwork()}); err != nil {
						t.Error(err)
					}
				})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			var lines []string
			j, ready, err := Wait(ctx, WaitOptions{StateDir: dir, RequireNetwork: tc.network, AgentPID: func(string) int { return 4242 },
				Logf: func(f string, a ...any) { lines = append(lines, f) }})
			if err != nil {
				t.Fatal(err)
			}
			if ready != tc.wantReady || j.Ready != tc.wantReady {
				t.Fatalf("ready %v (status %v), want %v; log %q", ready, j.Ready, tc.wantReady, lines)
			}
			if ready {
				if lag := time.Duration(time.Now().UnixNano() - marked.Load()); lag > 100*time.Millisecond {
					t.Errorf("Wait returned %v after the marker appeared, want < 100 ms (inotify)", lag)
				}
			}
			if diff := cmp.Diff(tc.wantWhy, j.Reasons); diff != "" {
				t.Errorf("reasons (-got +want):\n%s", diff)
			}
		})
	}
}

// Without a running agent Wait runs the agent loop itself against the host's
// expectation: not ready while /dev/nvidia0 is missing (that is the reason at the
// deadline), ready as soon as it appears; and it follows an agent that starts meanwhile.
func TestWaitChecksByItself(t *testing.T) {
	checkLeaks(t)
	requireDevNodesWork(t)
	f := newTree(t)
	f.file("proc/driver/nvidia/version", procVersionOpen)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	exp := &pb.Expectation{ContainerId: "901", DriverLoaded: true, KernelDriverVersion: "580.159.04",
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}}
	host := guesttest.NewHost(t, socket, exp)
	opts := WaitOptions{StateDir: t.TempDir(), AgentPID: func(string) int { return 0 }, Agent: Config{
		Socket: socket, ContainerID: "901", Build: "test", Checker: &Checker{Paths: f.paths(), Network: okNetwork},
		Log: log.ForTest(t, "wait"), BackoffMin: 20 * time.Millisecond,
	}}

	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	j, ready, err := Wait(ctx, opts)
	cancel()
	if err != nil || ready {
		t.Fatalf("Wait with /dev/nvidia0 missing: ready %v, err %v", ready, err)
	}
	if len(j.Reasons) != 1 || !strings.HasPrefix(j.Reasons[0], "/dev/nvidia0: missing") {
		t.Errorf("reasons at the deadline %q, want /dev/nvidia0 missing", j.Reasons)
	}

	var made atomic.Int64
	time.AfterFunc(300*time.Millisecond, func() {
		if err := mknod(f.path("dev/nvidia0"), 1, 3); err != nil {
			t.Error(err)
		}
		made.Store(time.Now().UnixNano())
	})
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	j, ready, err = Wait(ctx, opts)
	cancel()
	if err != nil || !ready || !j.Ready {
		t.Fatalf("Wait after mknod: ready %v, err %v, reasons %q", ready, err, j.Reasons)
	}
	lag := time.Duration(time.Now().UnixNano() - made.Load())
	t.Logf("ready %v after the node appeared", lag)
	if lag > 500*time.Millisecond {
		t.Errorf("Wait returned %v after the node appeared, want < 500 ms (the agent loop's inotify)", lag)
	}
	if _, err := host.Wait(time.Second, func(r *pb.GuestReport) bool { return r.GetReady() }); err != nil {
		t.Errorf("the host agent did not get the ready report: %v", err)
	}

	// An agent that starts while Wait checks by itself (not connected: no host here) is
	// followed instead.
	host.Stop()
	var pid atomic.Int64
	opts.AgentPID = func(string) int { return int(pid.Load()) }
	m, err := NewMarker(opts.StateDir, 7)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(200*time.Millisecond, func() { pid.Store(7) })
	time.AfterFunc(600*time.Millisecond, func() { _ = m.Update(&pb.GuestReport{Ready: true, Network: okNetwork()}) })
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var lines []string
	opts.Logf = func(format string, a ...any) { lines = append(lines, format) }
	if _, ready, err = Wait(ctx, opts); err != nil || !ready {
		t.Fatalf("Wait with an agent starting: ready %v err %v", ready, err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "following the running guest agent") {
		t.Errorf("Wait did not follow the agent that started: %q", lines)
	}
}
