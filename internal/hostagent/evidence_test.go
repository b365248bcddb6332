package hostagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/testenv"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// Evidence tests: readiness is the guest's report AND the host's own evidence. The
// fixture is the restart rule's (a simulated host root whose proc holds the container
// init 4242: its stat, with the start time, and its root with /dev), the real guest
// registry on real unix sockets, and guests played by this process; a session's
// generation is read from the fixture's init when the guest connects, as ContainerInit
// reads the real one (guestchan TestLXCIdentity).

// hookRuntime is the fake runtime with a hook run by Restart (the container's new life).
type hookRuntime struct {
	*fakeRuntime
	onRestart func()
}

func (h *hookRuntime) Restart(ctx context.Context, id string) error {
	_ = h.fakeRuntime.Restart(ctx, id)
	if h.onRestart != nil {
		h.onRestart()
	}
	return nil
}

type evidenceFixture struct {
	*restartFixture
	hook *hookRuntime
}

// setInitStart writes /proc/4242/stat with the init's start time (field 22).
func (f *evidenceFixture) setInitStart(ticks int) {
	f.t.Helper()
	fields := make([]string, 19)
	for i := range fields {
		fields[i] = "0"
	}
	stat := fmt.Sprintf("4242 (init) S %s %d 0 0\n", strings.Join(fields[1:], " "), ticks)
	if err := os.WriteFile(filepath.Join(f.root, "proc", "4242", "stat"), []byte(stat), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func newEvidenceFixture(t *testing.T) *evidenceFixture {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	host := filepath.Join(dir, "host")
	if err := gpu.WriteSimulatedHost(host, gpu.SimOptions{GPUs: 2}); err != nil {
		t.Fatal(err)
	}
	pid := 4242
	ctRoot := filepath.Join(host, "proc", fmt.Sprint(pid), "root")
	for _, d := range []string{filepath.Join(host, "proc", "self"), filepath.Join(ctRoot, "dev"), filepath.Join(ctRoot, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := hostconfig.Default()
	cfg.HostRoot = host
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.GuestSocketDir = filepath.Join(dir, "guests")
	hook := &hookRuntime{fakeRuntime: &fakeRuntime{dir: filepath.Join(dir, "lxc"), pid: pid, running: true}}
	reg := guestchan.New(guestchan.Config{
		Dir: cfg.GuestSocketDir, Log: log.ForTest(t, "guests"),
		PeerCgroup:     func(int32) (string, error) { return "0::/lxc.payload.901\n", nil },
		PeerRoot:       func(*net.UnixConn, int32, time.Time) error { return nil }, // this process stands for the guest
		PeerGeneration: func(int32) (guestchan.Generation, error) { return guestchan.GenerationOf(host, pid) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if _, err := reg.Ensure("901"); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Runtime: hook, Guests: reg, Log: log.ForTest(t, "agent"), Name: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(hook.dir, "901"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := &evidenceFixture{restartFixture: &restartFixture{t: t, root: host, ctRoot: ctRoot, rt: hook.fakeRuntime, agent: a, guests: reg}, hook: hook}
	f.setInitStart(1000)
	return f
}

// guest is one guest session of this process.
type guest struct {
	t  *testing.T
	st *wire.Stream
	mu sync.Mutex
}

// connectGuest opens a guest session of 901 (its generation is the init's at this moment).
func (f *evidenceFixture) connectGuest() *guest {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := net.Dial("unix", filepath.Join(f.agent.guestDir("901"), "agent.sock"))
	if err != nil {
		f.t.Fatal(err)
	}
	sess, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, ContainerID: "901"}, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { sess.Close() })
	st, err := sess.Open(context.Background(), guestchan.Method)
	if err != nil {
		f.t.Fatal(err)
	}
	return &guest{t: f.t, st: st}
}

// readyReport says every node of GPU 1 is present and opens.
func readyReport(bootID string) *pb.GuestReport {
	rep := &pb.GuestReport{ContainerId: "901", Ready: true, BootId: bootID}
	for _, d := range [][3]any{{"/dev/nvidia1", 7, 1}, {"/dev/nvidiactl", 7, 128}, {"/dev/nvidia-uvm", 10, 229}, {"/dev/nvidia-uvm-tools", 10, 200}} {
		rep.Devices = append(rep.Devices, &pb.DeviceCheck{Path: d[0].(string), Major: uint32(d[1].(int)), Minor: uint32(d[2].(int)), Status: pb.DeviceStatus_DEVICE_STATUS_OK})
	}
	return rep
}

// send pushes rep and waits until the registry holds a report with its boot id.
func (g *guest) send(f *evidenceFixture, rep *pb.GuestReport) {
	g.t.Helper()
	g.mu.Lock()
	err := g.st.Send(rep)
	g.mu.Unlock()
	if err != nil {
		g.t.Error(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := f.guests.Wait(ctx, "901", func(s guestchan.Snapshot) bool { return s.Report.GetBootId() == rep.GetBootId() }); err != nil {
		g.t.Error(err)
	}
}

// After a restart, apply counts only a report of the container's new generation: the old
// guest's heartbeat after the restart (its clock after the restart, as the old rule
// wanted) is not proof of readiness; the new guest's report is. Without a new guest,
// apply and status say the report is from the previous start. (Before: the old guest's
// heartbeat made the apply ready.)
func TestApplyAcceptsOnlyTheNewGeneration(t *testing.T) {
	for _, newGuest := range []bool{true, false} {
		name := map[bool]string{true: "new guest reports", false: "only the old guest reports"}[newGuest]
		t.Run(name, func(t *testing.T) {
			f := newEvidenceFixture(t)
			desired := f.desired()
			f.rt.started = desired // the rules match; the running container lacks the nodes: restart
			old := f.connectGuest()
			old.send(f, readyReport("old-life"))
			f.hook.onRestart = func() {
				f.setInitStart(2000) // the new init (the same pid, recycled: only the start time differs)
				f.liveContainer()
				old.send(f, readyReport("old-life-heartbeat")) // the previous life, after the restart began
				if newGuest {
					go func() {
						time.Sleep(300 * time.Millisecond)
						f.connectGuest().send(f, readyReport("new-life"))
					}()
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			spec := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}, Style: pb.Style_STYLE_RAW}
			res := f.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: 1500}, nil).GetContainers()[0]
			if !res.GetRestarted() {
				t.Fatalf("not restarted: %q %q", res.GetError(), res.GetPlan().GetRestart().GetReasons())
			}
			st := res.GetStatus()
			t.Logf("apply: state %s report %q reasons %q", st.GetState(), st.GetReport().GetBootId(), st.GetReasons())
			if newGuest {
				if st.GetState() != StateReady || st.GetReport().GetBootId() != "new-life" {
					t.Errorf("apply: state %s from report %q, want ready from the new guest's report", st.GetState(), st.GetReport().GetBootId())
				}
				return
			}
			if st.GetState() == StateReady || !hasPrefix(st.GetReasons(), ReasonPreviousGeneration+": the latest guest report is from the container's previous start (init 4242 started at tick 1000; now init 4242 started at tick 2000)") {
				t.Errorf("apply: state %s reasons %q, want not ready: a report of the previous start", st.GetState(), st.GetReasons())
			}
		})
	}
}

// A root process inside the container can send a ready report naming every device; it
// counts only where the host's own look at the container's real /dev
// (/proc/<init>/root/dev) agrees, and a disagreement is named. (Before: status said ready
// while the devices were absent.)
func TestReadyNeedsTheHostsObservation(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(f *evidenceFixture)
		wantState  string
		wantReason string
	}{
		{"devices there: ready", func(f *evidenceFixture) {}, StateReady, ""},
		{"a node absent", func(f *evidenceFixture) { _ = os.Remove(filepath.Join(f.ctRoot, "dev", "nvidia1")) }, StateNotReady,
			ReasonHostObservation + ": the guest reports ready, but the host sees no /dev/nvidia1 in the container"},
		{"a node of another device", func(f *evidenceFixture) {
			_ = os.Remove(filepath.Join(f.ctRoot, "dev", "nvidia1"))
			f.node("nvidia1", 1, 3)
		}, StateNotReady, ReasonHostObservation + ": the guest reports ready, but the host sees /dev/nvidia1 in the container as 1:3, want 7:1"},
		{"an empty file", func(f *evidenceFixture) {
			_ = os.Remove(filepath.Join(f.ctRoot, "dev", "nvidia-uvm"))
			_ = os.WriteFile(filepath.Join(f.ctRoot, "dev", "nvidia-uvm"), nil, 0o644)
		}, StateNotReady, ReasonHostObservation + ": the guest reports ready, but the host sees /dev/nvidia-uvm in the container as no character device"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newEvidenceFixture(t)
			f.rt.started = f.desired()
			f.liveContainer()
			tt.setup(f)
			f.connectGuest().send(f, readyReport("forged"))
			spec := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}, Style: pb.Style_STYLE_RAW}
			st := f.agent.Status(context.Background(), &pb.StatusRequest{Containers: []*pb.ContainerSpec{spec}}).GetContainers()[0]
			if st.GetState() != tt.wantState {
				t.Errorf("state %s, want %s (reasons %q)", st.GetState(), tt.wantState, st.GetReasons())
			}
			if tt.wantReason != "" && !hasPrefix(st.GetReasons(), tt.wantReason) {
				t.Errorf("reasons %q lack %q", st.GetReasons(), tt.wantReason)
			}
		})
	}
}
