package guest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"gpupass/internal/guest/guesttest"
	"gpupass/internal/log"
	"gpupass/internal/runner"
	pb "gpupass/proto/gpupass/v1"
)

func okNetwork() *pb.Network {
	return &pb.Network{Ok: true, DefaultRoute: true, Links: []*pb.NetLink{{Name: "eth0", Up: true, Addresses: []string{"10.0.0.5/24"}}}}
}

// startAgent runs an agent over f until the test ends.
func startAgent(t *testing.T, f *tree, socket string, mod func(*Config)) *Agent {
	t.Helper()
	cfg := Config{
		Socket: socket, ContainerID: "901", BootID: "boot-1", Build: "test",
		Checker:    &Checker{Paths: f.paths(), Network: okNetwork},
		Log:        log.ForTest(t, "guest-agent"),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return a
}

// appear makes the expected node appear: a real /dev/null-numbered node as root, else an
// empty regular file (still a change the agent must report).
func appear(t *testing.T, f *tree, path string) pb.DeviceStatus {
	t.Helper()
	if os.Geteuid() == 0 {
		tmp := f.path("dev/.staging")
		if err := unix.Mknod(tmp, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err == nil {
			if err := os.Rename(tmp, f.path(path)); err != nil {
				t.Fatal(err)
			}
			return pb.DeviceStatus_DEVICE_STATUS_OK
		}
	}
	f.file(path, "")
	return pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE
}

func trigger(name string) func(*pb.GuestReport) bool {
	return func(r *pb.GuestReport) bool { return r.GetTrigger() == name }
}

// checkLeaks fails the test if goroutines it started outlive it (after every cleanup).
func checkLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func TestAgentSession(t *testing.T) {
	checkLeaks(t)
	f := newTree(t)
	f.file("proc/driver/nvidia/version", procVersionOpen)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	exp := &pb.Expectation{ContainerId: "901", DriverLoaded: true, KernelDriverVersion: "580.159.04",
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}, HeartbeatIntervalMs: 300}
	host := guesttest.NewHost(t, socket, exp)
	startAgent(t, f, socket, nil)

	// A full report on connect.
	r, err := host.Wait(5*time.Second, trigger(TriggerConnect))
	if err != nil {
		t.Fatalf("report on connect: %v", err)
	}
	if r.Ready || len(r.Devices) != 1 || r.Devices[0].Status != pb.DeviceStatus_DEVICE_STATUS_MISSING {
		t.Fatalf("connect report = %v; want not ready, /dev/nvidia0 missing", r.GuestReport)
	}
	if r.ContainerId != "901" || r.BootId != "boot-1" || r.AgentBuild != "test" || r.Seq == 0 {
		t.Errorf("identity of report = %q %q %q seq %d", r.ContainerId, r.BootId, r.AgentBuild, r.Seq)
	}
	hellos := host.Hellos()
	if len(hellos) != 1 || hellos[0].GetRole() != pb.Role_ROLE_GUEST_AGENT || hellos[0].GetContainerId() != "901" || hellos[0].GetBootId() != "boot-1" {
		t.Errorf("hellos = %v", hellos)
	}

	// The node appears: a report within tens of milliseconds (inotify, 5 ms debounce).
	start := time.Now()
	want := appear(t, f, "dev/nvidia0")
	r, err = host.Wait(2*time.Second, func(r *pb.GuestReport) bool { return r.GetDevices()[0].GetStatus() == want })
	if err != nil {
		t.Fatalf("report after the node appeared: %v", err)
	}
	took := r.At.Sub(start)
	t.Logf("node appeared -> host holds the report: %v (trigger %s, ready %v)", took, r.Trigger, r.Ready)
	if r.Trigger != TriggerChange || took > time.Second {
		t.Errorf("report after the change: trigger %q after %v; want %q well under a second", r.Trigger, took, TriggerChange)
	}
	if want == pb.DeviceStatus_DEVICE_STATUS_OK && !r.Ready {
		t.Errorf("report after the node appeared is not ready: %v", r.Reasons)
	}

	// A heartbeat when nothing changes.
	if r, err = host.Wait(3*time.Second, trigger(TriggerHeartbeat)); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	lastSeq := r.Seq

	// A new expectation gets a report at once.
	exp2 := &pb.Expectation{ContainerId: "901", DriverLoaded: true, KernelDriverVersion: "580.159.04",
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}, {Path: "/dev/nvidiactl", Major: 1, Minor: 3}}, HeartbeatIntervalMs: 300}
	host.SetExpectation(exp2)
	if r, err = host.Wait(2*time.Second, func(r *pb.GuestReport) bool { return len(r.GetDevices()) == 2 }); err != nil {
		t.Fatalf("report for the new expectation: %v", err)
	}
	if r.Ready || !strings.Contains(strings.Join(r.Reasons, "\n"), "/dev/nvidiactl: missing") {
		t.Errorf("report for the new expectation: ready %v reasons %q", r.Ready, r.Reasons)
	}

	// The host agent goes away and comes back: the guest reconnects by itself.
	host.Stop()
	time.Sleep(150 * time.Millisecond) // a few failed dials: the socket file is gone
	host.Start()
	if r, err = host.Wait(5*time.Second, trigger(TriggerConnect)); err != nil {
		t.Fatalf("report after the host agent came back: %v", err)
	}
	if r.Seq <= lastSeq {
		t.Errorf("seq after reconnect = %d, want > %d", r.Seq, lastSeq)
	}
	if n := len(host.Hellos()); n != 2 {
		t.Errorf("%d sessions, want 2", n)
	}
}

// TestAgentNoHost: without a host agent the agent keeps trying and stops cleanly.
func TestAgentNoHost(t *testing.T) {
	checkLeaks(t)
	f := newTree(t)
	var states []string
	started := make(chan struct{})
	a, err := New(Config{Socket: filepath.Join(t.TempDir(), "absent.sock"), Checker: &Checker{Paths: f.paths(), Network: okNetwork},
		BackoffMin: time.Millisecond, BackoffMax: 4 * time.Millisecond, Log: log.ForTest(t, "guest-agent"),
		Started: func() { close(started) }, OnState: func(s string) { states = append(states, s) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatalf("Run = %v, want nil at the end of its context", err)
	}
	<-started
	if len(states) < 5 || !strings.HasPrefix(states[0], "disconnected: dial host agent:") {
		t.Errorf("states = %q; want many failed dials", states)
	}
}

// TestAgentDeepCheck: where nvidia-smi exists, the first report says the deep check is
// running (not ready yet) and the verdict follows when it ends; heartbeats reuse it.
func TestAgentDeepCheck(t *testing.T) {
	checkLeaks(t)
	requireDevNodesWork(t)
	f := newTree(t)
	f.file("proc/driver/nvidia/version", procVersionOpen)
	f.chardev("dev/nvidia0", 1, 3)
	f.executable("usr/bin/nvidia-smi", "#!/bin/sh\n")
	key := f.path("usr/bin/nvidia-smi") + " " + strings.Join(SmiArgs, " ")
	fake := &runner.Fake{
		Responses: map[string][]runner.Response{key: {{Stdout: smiH100}}},
		Hook:      func([]string) { time.Sleep(50 * time.Millisecond) }, // NVML init takes a while
	}
	socket := filepath.Join(t.TempDir(), "agent.sock")
	exp := &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04", HeartbeatIntervalMs: 100,
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}, Gpus: []*pb.GPU{{Uuid: uuidA}}}
	host := guesttest.NewHost(t, socket, exp)
	startAgent(t, f, socket, func(c *Config) {
		c.Checker = &Checker{Paths: f.paths(), Network: okNetwork, Runner: fake}
	})
	r, err := host.Wait(5*time.Second, trigger(TriggerConnect))
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready || strings.Join(r.Reasons, ";") != "nvidia-smi check running" {
		t.Errorf("connect report: ready %v, reasons %q; want the deep check running", r.Ready, r.Reasons)
	}
	if r, err = host.Wait(5*time.Second, func(r *pb.GuestReport) bool { return r.GetSmi().GetRan() }); err != nil {
		t.Fatalf("report with the deep check: %v", err)
	}
	if !r.Ready || r.Smi.Gpus[0].Uuid != uuidA {
		t.Errorf("report after nvidia-smi: ready %v, reasons %q, smi %v", r.Ready, r.Reasons, r.Smi)
	}
	for i := 0; i < 2; i++ {
		if r, err = host.Wait(5*time.Second, trigger(TriggerHeartbeat)); err != nil || !r.Ready {
			t.Fatalf("heartbeat %d: %v, ready %v", i, err, r.GetReady())
		}
	}
	if n := len(fake.Transcript()); n != 1 {
		t.Errorf("nvidia-smi ran %d times; want once (heartbeats reuse the result)", n)
	}
}

// TestAgentDeviceStorm: a storm of /dev changes is paced below the host's rate limit, and
// the state it ends in always reaches the host.
func TestAgentDeviceStorm(t *testing.T) {
	checkLeaks(t)
	f := newTree(t)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	exp := &pb.Expectation{DriverLoaded: true, HeartbeatIntervalMs: 60_000,
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}}
	host := guesttest.NewHost(t, socket, exp)
	startAgent(t, f, socket, nil)
	if _, err := host.Wait(5*time.Second, trigger(TriggerConnect)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < 300; i++ { // flapping: every flip changes the verdict
		f.file("dev/nvidia0", "")
		time.Sleep(200 * time.Microsecond)
		os.Remove(f.path("dev/nvidia0"))
		time.Sleep(200 * time.Microsecond)
	}
	f.file("dev/nvidia0", "x") // the state it ends in: a regular file of 1 byte
	r, err := host.Wait(5*time.Second, func(r *pb.GuestReport) bool {
		return strings.Contains(r.GetDevices()[0].GetDetail(), "regular file of 1 bytes")
	})
	if err != nil {
		t.Fatalf("the final state never reached the host: %v", err)
	}
	took := r.At.Sub(start).Seconds()
	n := int(r.Seq) - 1 // reports sent after the connect report
	limit := reportBurst + int(took*reportRate) + 2
	t.Logf("%d change reports in %.2fs (limit %d)", n, took, limit)
	if n > limit {
		t.Errorf("%d reports in %.2fs: more than the pacing allows (%d)", n, took, limit)
	}
}

// TestDialFirst: the default dial tries /dev/gpupass first and falls back to the legacy
// /run/gpupass (a container started before the move); with neither, the error names the
// first.
func TestDialFirst(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "live.sock")
	guesttest.NewHost(t, live, &pb.Expectation{})
	missing := filepath.Join(dir, "missing", "agent.sock")
	stale := filepath.Join(dir, "stale.sock")
	if err := os.WriteFile(stale, nil, 0o644); err != nil { // a file, not a socket
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		sockets []string
		want    string // remote address dialled, or "" for an error
		wantErr string
	}{
		{name: "first answers", sockets: []string{live, missing}, want: live},
		{name: "fallback after missing", sockets: []string{missing, live}, want: live},
		{name: "fallback after a non-socket", sockets: []string{stale, live}, want: live},
		{name: "none answers names the first", sockets: []string{missing, stale}, wantErr: missing},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := dialFirst(ctx, tt.sockets)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("dialFirst(%q) error = %v, want one naming %s", tt.sockets, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("dialFirst(%q): %v", tt.sockets, err)
			}
			defer c.Close()
			if got := c.RemoteAddr().String(); got != tt.want {
				t.Errorf("dialled %s, want %s", got, tt.want)
			}
		})
	}
}

// TestDefaultSockets: with no --socket the agent dials /dev/gpupass, then /run/gpupass;
// an explicit socket is the only one.
func TestDefaultSockets(t *testing.T) {
	for _, tt := range []struct {
		name, socket string
		want         []string
	}{
		{"default", "", []string{"/dev/gpupass/agent.sock", "/run/gpupass/agent.sock"}},
		{"explicit", "/x/agent.sock", []string{"/x/agent.sock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := New(Config{Socket: tt.socket, Checker: &Checker{}})
			if err != nil {
				t.Fatal(err)
			}
			if got := a.Sockets(); strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("Sockets() = %q, want %q", got, tt.want)
			}
		})
	}
}
