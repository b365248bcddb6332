// Package lxcevidence_test runs the host agent's readiness evidence against real LXC
// containers (a package of its own for the cgroup2 TestMain the containers need).
package lxcevidence_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/lxctest"
	"gpupass/internal/runner"
	"gpupass/internal/runtime"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }

// buildForger builds the guestchan test client (statically, for busybox): with "forge" it
// sends a ready report naming every expected device as present, as any root process in
// the container can.
func buildForger(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(lxctest.TempDir(t), "guestclient")
	cmd := exec.Command(goBin, "build", "-o", out, "gpupass/internal/guestchan/testdata/guestclient")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest client: %v\n%s", err, b)
	}
	return out
}

// A root process inside a real container sends a ready report naming every expected
// device. While the container really has the nodes (the host agent's apply passed them
// and restarted it), the host's look at its /dev agrees and status says ready; once the
// node is gone from the container (unmounted inside; the create=file placeholder stays),
// the same forged report does not make it ready: status names the host's observation.
// (Before: status said ready on the forged report.)
func TestForgedReadyReport(t *testing.T) {
	testenv.RequireLXC(t)
	lxctest.RequireCgroup2(t)
	forger := buildForger(t)
	host := gputest.SimulatedRoot(t, gpu.SimOptions{GPUs: 1})
	c := lxctest.NewContainer(t, lxctest.Spec{Binds: [][2]string{{forger, "/usr/local/bin/guestclient"}}})
	state := lxctest.TempDir(t)
	cfg := hostconfig.Default()
	cfg.Runtime = hostconfig.RuntimeLXC
	cfg.HostRoot, cfg.LXCPath = host, c.LXCPath()
	cfg.StateDir, cfg.GuestSocketDir = filepath.Join(state, "state"), filepath.Join(state, "g")
	reg := guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Log: log.ForTest(t, "guests"), Build: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	rt := &runtime.LXC{Runner: runner.Exec{}, LXCPath: c.LXCPath(), StateDir: filepath.Join(cfg.StateDir, "lxc"), StopTimeout: 5 * time.Second}
	a, err := hostagent.New(cfg, hostagent.Options{Runtime: rt, Guests: reg, Log: log.ForTest(t, "agent"), Name: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	c.Start(t)
	spec := &pb.ContainerSpec{Id: c.Name(), Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW}
	actx, acancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer acancel()
	res := a.Apply(actx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: 1000}, nil).GetContainers()[0]
	if !res.GetRestarted() || res.GetStatus().GetState() == hostagent.StateReady {
		t.Fatalf("apply: restarted %v state %s error %q; want restarted and not ready (no guest agent runs)", res.GetRestarted(), res.GetStatus().GetState(), res.GetError())
	}
	forge := func() *pb.ContainerStatus {
		t.Helper()
		before, _ := reg.Latest(c.Name())
		if out, code := c.Attach(t, "/usr/local/bin/guestclient", "/run/gpupass/agent.sock", c.Name(), "forge"); code != 0 {
			t.Fatalf("forger: exit %d: %s", code, out)
		}
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer wcancel()
		snap, err := reg.Wait(wctx, c.Name(), func(s guestchan.Snapshot) bool { return s.Report != nil && s.At.After(before.At) })
		if err != nil {
			t.Fatalf("no forged report: %v", err)
		}
		if want, err := guestchan.GenerationOf("/", c.InitPID(t)); err != nil || snap.Generation != want {
			t.Errorf("forged report's generation %v, want the running container's %v (%v)", snap.Generation, want, err)
		}
		return a.Status(actx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{spec}}).GetContainers()[0]
	}
	if st := forge(); st.GetState() != hostagent.StateReady {
		t.Errorf("devices there, forged ready report: state %s reasons %q, want ready (the host agrees)", st.GetState(), st.GetReasons())
	}
	if out, code := c.Attach(t, "umount", "/dev/nvidia0"); code != 0 {
		t.Fatalf("umount /dev/nvidia0 inside: exit %d: %s", code, out)
	}
	st := forge()
	t.Logf("after the umount: state %s reasons %q", st.GetState(), st.GetReasons())
	want := hostagent.ReasonHostObservation + ": the guest reports ready, but the host sees /dev/nvidia0 in the container as no character device"
	found := false
	for _, r := range st.GetReasons() {
		found = found || strings.HasPrefix(r, want)
	}
	if st.GetState() == hostagent.StateReady || !found {
		t.Errorf("node gone, forged ready report: state %s reasons %q, want not ready with %q", st.GetState(), st.GetReasons(), want)
	}
}
