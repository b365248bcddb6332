package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"gpupass/internal/controller/agenttest"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// mlLib is the path of libnvidia-ml in a container, less its version.
const mlLib = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so."

// noGuestAgent are the files of a busybox container whose init does not start the guest
// agent.
func noGuestAgent() map[string]string {
	return map[string]string{"/etc/gpupass-init.sh": "#!/bin/sh\n# no guest agent\nexec /bin/sleep 2147483647\n"}
}

// The controller's CLI tests (internal/controller/cli, internal/controller) run against a
// model of the host agent (internal/controller/agenttest). Its plans, its status of
// stopped containers and its applies to them are held to the real agent without root
// (agenttest's contract_test.go); this scenario holds its status of RUNNING containers to the real
// agent: every running state the CLI tests give the model (ready, a userspace mismatch,
// no userspace, no GPUs, no guest agent, denied nodes, a fleet asking for more GPUs than
// the container runs with, a network required and missing or present; the CLI golden
// world's pve1/901 is "more", 902 "mismatch", 950 "nolib", 951 "denied") is made for real
// (real LXC containers with the real guest agent on a host running the real host agent),
// and the model's status of the same container must show what the real one shows.
func testModelStatusOfRunningContainers(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	// The "netok" container shares the host's network namespace: give it a default route.
	mustRun(t, "ip", "-n", h.ns, "route", "add", "default", "dev", "eth0")
	nv, uvm := h.hostMajors(t)
	quiet := noGuestAgent()
	s, model := modelOf(t, f, h)
	kv := model.Driver.GetKernelVersion()

	cases := []struct {
		short   string
		opts    ctOpts
		gpus    []string // applied
		fleet   []string // judged against (nil: gpus)
		network bool     // require_network
		model   agenttest.Container
		// after runs after the apply, before the statuses are compared.
		after func(t *testing.T, ct *container)
	}{
		{short: "ready", opts: ctOpts{Files: map[string]string{mlLib + kv: "x\n"}}, gpus: []string{"0"},
			model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "mismatch", opts: ctOpts{Files: map[string]string{mlLib + "550.54.14": "x\n"}}, gpus: []string{"1"},
			model: agenttest.Container{Guest: true, Lib: "550.54.14"}},
		{short: "nolib", gpus: []string{"0"}, model: agenttest.Container{Guest: true}},
		{short: "nogpu", gpus: []string{}, model: agenttest.Container{Guest: true}},
		{short: "noguest", opts: ctOpts{Files: quiet}, gpus: []string{"1"}, model: agenttest.Container{}},
		{short: "nogpunoguest", opts: ctOpts{Files: quiet}, gpus: []string{}, model: agenttest.Container{}},
		{short: "more", opts: ctOpts{Files: map[string]string{mlLib + kv: "x\n"}}, gpus: []string{"0"}, fleet: []string{"0", "1"},
			model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "nonet", opts: ctOpts{Files: map[string]string{mlLib + kv: "x\n"}}, gpus: []string{"1"}, network: true,
			model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "netok", opts: ctOpts{Files: map[string]string{mlLib + kv: "x\n"}, Config: []string{"lxc.net.0.type = none"}}, gpus: []string{"1"}, network: true,
			model: agenttest.Container{Guest: true, Lib: kv, Network: true}},
		{short: "denied", opts: ctOpts{Files: map[string]string{mlLib + kv: "x\n"}}, gpus: []string{"1"},
			model: agenttest.Container{Guest: true, Lib: kv, Denied: true},
			// Someone drops the GPU's and uvm's cgroup rules and restarts it by hand: the
			// nodes are there, every open is refused.
			after: func(t *testing.T, ct *container) {
				var keep []string
				for _, l := range strings.Split(ct.readConfig(), "\n") {
					if strings.HasPrefix(l, "lxc.cgroup2.devices.allow") && (strings.Contains(l, " c "+fmt.Sprint(nv)+":") || strings.Contains(l, " c "+fmt.Sprint(uvm)+":")) {
						continue
					}
					keep = append(keep, l)
				}
				ct.writeConfig(t, strings.Join(keep, "\n"))
				ct.Kill(t)
				ct.Start(t)
			}},
	}
	cts := make([]*container, len(cases))
	var entries []fleetCt
	for i, tc := range cases {
		cts[i] = h.newContainer(t, "k"+tc.short, tc.opts)
		entries = append(entries, fleetCt{Host: h, Ct: cts[i], GPUs: tc.gpus, State: "running", RequireNetwork: tc.network})
	}
	fl := f.writeFleet(t, "contract", entries)
	f.ctl(t, "apply", fl, "--timeout", "30s")
	for i, tc := range cases {
		if tc.after != nil {
			tc.after(t, cts[i])
		}
		m := tc.model
		m.ID, m.GPUs, m.RunState = cts[i].name, tc.gpus, "running"
		model.Add(m)
	}
	for i, tc := range cases {
		t.Run(tc.short, func(t *testing.T) {
			fleet := tc.fleet
			if fleet == nil {
				fleet = tc.gpus
			}
			spec := &pb.ContainerSpec{Id: cts[i].name, Gpus: fleet, Style: pb.Style_STYLE_RAW, WantState: "running", RequireNetwork: tc.network}
			want := agenttest.StatusViewOf(model.StatusOf(spec.GetId(), spec))
			// The guest's report of a container just (re)started may be on its way: wait
			// for the agent's view to settle on the model's, and show the last difference.
			var diff string
			deadline := time.Now().Add(20 * time.Second)
			for {
				resp, err := hostStatus(s, []*pb.ContainerSpec{spec})
				if err != nil {
					t.Fatal(err)
				}
				got := agenttest.StatusViewOf(resp.GetContainers()[0])
				got.Warnings = slices.DeleteFunc(got.Warnings, simulatedHostWarning)
				if diff = cmp.Diff(want, got, cmpopts.EquateEmpty()); diff == "" {
					t.Logf("%s: %s %q, restart required %v: as the model says", tc.short, got.State, got.Reasons, got.RestartRequired)
					return
				}
				if time.Now().After(deadline) {
					break
				}
				time.Sleep(300 * time.Millisecond)
			}
			t.Errorf("the model (internal/controller/agenttest) and the real agent report %s differently (-model +agent):\n%s", tc.short, diff)
		})
	}
}

// modelOf is a session with h's agent and a model of h: the agent's own GPUs and driver,
// and the minors of the simulated host's nvidiactl and uvm nodes (it backs them with other
// character devices than a real host's).
func modelOf(t *testing.T, f *fabric, h *host) (*wire.Session, *agenttest.Agent) {
	t.Helper()
	s := f.agentSession(t, h)
	first, err := hostStatus(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	model := agenttest.New(h.name)
	model.GPUs, model.Driver = first.GetHost().GetGpus(), first.GetHost().GetDriver()
	for p, m := range map[string]*uint32{"/dev/nvidiactl": &model.CtlMinor, "/dev/nvidia-uvm": &model.UVMMinor, "/dev/nvidia-uvm-tools": &model.UVMToolsMinor} {
		_, minor, ok := h.hostNode(t, p)
		if !ok {
			t.Fatalf("the simulated host has no %s", p)
		}
		*m = minor
	}
	return s, model
}

// simulatedHostWarning is the warning of a guest on a simulated GPU host: its container
// sees this machine's /proc, which has no /proc/driver/nvidia, and the guest says it took
// the kernel driver's version from the host's expectation. On a real host the container
// sees the driver's own file and gives no such warning.
func simulatedHostWarning(w string) bool {
	return strings.HasPrefix(w, "read the kernel driver version: ") && strings.Contains(w, "using the host's")
}

// hostStatus is one host.Status call on s, bounded by 10 seconds.
func hostStatus(s *wire.Session, specs []*pb.ContainerSpec) (*pb.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.Open(ctx, "host.Status")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := st.Send(&pb.StatusRequest{Containers: specs}); err != nil {
		return nil, err
	}
	var resp pb.StatusResponse
	if err := st.RecvReply(&resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// testModelAppliesToRunningContainers holds the model's apply of containers that run after
// it (a start, a restart, no change to a running one, a restart into a container that is
// not ready) to the real agent's: the same request goes through the real agent's
// host.Apply, on real LXC containers with the real guest agent, and through the model's
// apply, with the model given the state each container is in; what the controller shows
// of each container must agree (written, restarted, started, failed, the status after,
// the plan's changes and restart reasons, the progress steps in order). Two fields are
// left out, said here: the plan's diff (its context lines are the test container's own
// config, which the model does not have) and the simulated host's guest warning.
func testModelAppliesToRunningContainers(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	quiet := noGuestAgent()
	s, model := modelOf(t, f, h)
	kv := model.Driver.GetKernelVersion()
	ready := map[string]string{mlLib + kv: "x\n"}

	cases := []struct {
		short  string
		files  map[string]string
		before []string // GPUs applied and running before; nil: never managed, stopped
		gpus   []string // the spec applied now (the fleet wants it running)
		model  agenttest.Container
	}{
		{short: "start", files: ready, gpus: []string{"0"}, model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "add", files: ready, before: []string{"0"}, gpus: []string{"0", "1"}, model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "swap", files: ready, before: []string{"0"}, gpus: []string{"1"}, model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "drop", files: ready, before: []string{"1"}, gpus: []string{}, model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "same", files: ready, before: []string{"1"}, gpus: []string{"1"}, model: agenttest.Container{Guest: true, Lib: kv}},
		{short: "mismatch", files: map[string]string{mlLib + "550.54.14": "x\n"}, before: []string{"0"}, gpus: []string{"0", "1"},
			model: agenttest.Container{Guest: true, Lib: "550.54.14"}},
		{short: "noguest", files: quiet, before: []string{"0"}, gpus: []string{"1"}, model: agenttest.Container{}},
	}
	cts := make([]*container, len(cases))
	var before []fleetCt
	for i, tc := range cases {
		cts[i] = h.newContainer(t, "a"+tc.short, ctOpts{Files: tc.files})
		if tc.before != nil {
			before = append(before, fleetCt{Host: h, Ct: cts[i], GPUs: tc.before, State: "running"})
		}
	}
	// Ten seconds: the one container without a guest agent waits them out.
	f.ctl(t, "apply", f.writeFleet(t, "contract-before", before), "--timeout", "10s")

	req := &pb.ApplyRequest{TimeoutMs: 8000}
	for i, tc := range cases {
		m := tc.model
		m.ID, m.GPUs, m.RunState = cts[i].name, tc.before, "running"
		if tc.before == nil {
			m.RunState = "stopped"
		}
		model.Add(m)
		req.Containers = append(req.Containers, &pb.ContainerSpec{Id: cts[i].name, Gpus: tc.gpus, Style: pb.Style_STYLE_RAW, WantState: "running"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	got, gotSteps, err := applySteps(ctx, s, req)
	if err != nil {
		t.Fatalf("real host.Apply: %v", err)
	}
	wantSteps := map[string][]string{}
	want, err := model.Apply(ctx, req, func(p *pb.ApplyProgress) {
		wantSteps[p.GetContainerId()] = append(wantSteps[p.GetContainerId()], p.GetStep())
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range cases {
		t.Run(tc.short, func(t *testing.T) {
			id := cts[i].name
			g := agenttest.ApplyViewOf(got.GetContainers()[i], gotSteps[id], h.root, h.guestDir)
			w := agenttest.ApplyViewOf(want.GetContainers()[i], wantSteps[id], "", "/run/gpupass/guests")
			g.Plan.Diff, w.Plan.Diff = "", ""
			g.Status.Warnings = slices.DeleteFunc(g.Status.Warnings, simulatedHostWarning)
			if d := cmp.Diff(w, g, cmpopts.EquateEmpty()); d != "" {
				t.Errorf("the model (internal/controller/agenttest) and the real agent apply %s differently (-model +agent):\n%s\nagent error %q, model error %q",
					tc.short, d, got.GetContainers()[i].GetError(), want.GetContainers()[i].GetError())
				return
			}
			t.Logf("%s: written %v, restarted %v, started %v, steps %v, then %s %q: as the model says",
				tc.short, g.Written, g.Restarted, g.Started, g.Steps, g.Status.State, g.Status.Reasons)
		})
	}
}

// applySteps runs host.Apply on s and returns the result and the steps its progress
// named, by container, in order.
func applySteps(ctx context.Context, s *wire.Session, req *pb.ApplyRequest) (*pb.ApplyResponse, map[string][]string, error) {
	st, err := s.Open(ctx, "host.Apply")
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	if err := st.Send(req); err != nil {
		return nil, nil, err
	}
	steps := map[string][]string{}
	for {
		var up pb.ApplyUpdate
		if err := st.RecvReply(&up); err != nil {
			return nil, nil, err
		}
		if p := up.GetProgress(); p != nil {
			steps[p.GetContainerId()] = append(steps[p.GetContainerId()], p.GetStep())
		}
		if r := up.GetResult(); r != nil {
			return r, steps, nil
		}
	}
}
