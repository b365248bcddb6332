package agenttest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// KernelVersion is the driver version of a default fake host.
const KernelVersion = "580.95.05"

// Agent is one fake host agent.
type Agent struct {
	Name      string
	Simulated bool
	GPUs      []*pb.GPU
	Driver    *pb.Driver
	// CtlMinor, UVMMinor and UVMToolsMinor are the minors of /dev/nvidiactl,
	// /dev/nvidia-uvm and /dev/nvidia-uvm-tools: a real host's 255, 0 and 1 (New). A
	// simulated GPU host (test/e2e) backs them with other character devices.
	CtlMinor, UVMMinor, UVMToolsMinor uint32
	// Delay is slept (context-aware) before every answer; StepDelay between apply steps.
	Delay, StepDelay time.Duration
	// Hang makes every call wait until the caller gives up.
	Hang bool
	Log  *log.Entry

	mu         sync.Mutex
	containers map[string]*Container
	changed    chan struct{} // closed and replaced on every change
	calls      map[string]int
	resumed    int // TLS handshakes that resumed a session

	Addr string // set by Serve
}

// New returns a host with two H100s and a loaded 580.95.05 driver whose majors are not the
// textbook ones (uvm at 238, as on the real test host).
func New(name string) *Agent {
	return &Agent{
		Name: name,
		GPUs: []*pb.GPU{
			{Index: 0, Uuid: "GPU-5f2b7c1e-8a3d-4c2b-9e1f-0a1b2c3d4e5f", Minor: 0, BusId: "0000:41:00.0", Model: "NVIDIA H100 80GB HBM3", PersistenceMode: "enabled"},
			{Index: 1, Uuid: "GPU-9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f", Minor: 1, BusId: "0000:61:00.0", Model: "NVIDIA H100 80GB HBM3", PersistenceMode: "disabled"},
		},
		Driver: &pb.Driver{Loaded: true, KernelVersion: KernelVersion,
			Majors: map[string]uint32{"nvidia-frontend": 195, "nvidia-uvm": 238, "nvidia-caps": 241}},
		CtlMinor: 255, UVMMinor: 0, UVMToolsMinor: 1,
		containers: map[string]*Container{},
		changed:    make(chan struct{}),
		calls:      map[string]int{},
	}
}

// Add puts a container on the host. A running container with nil Running was started
// with its current GPUs.
func (a *Agent) Add(c Container) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c.RunState == "" {
		c.RunState = "running"
	}
	if c.Running == nil && c.RunState == "running" {
		gs, _ := a.resolve(c.GPUs)
		c.Running = minors(gs)
	}
	a.containers[c.ID] = &c
	a.notifyLocked()
}

// Update changes a container under the lock and tells watchers.
func (a *Agent) Update(id string, fn func(c *Container)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.containers[id]; ok {
		fn(c)
		a.notifyLocked()
	}
}

// Get returns a copy of a container.
func (a *Agent) Get(id string) (Container, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[id]
	if !ok {
		return Container{}, false
	}
	return *c, true
}

// Resumed returns how many TLS handshakes resumed an earlier session.
func (a *Agent) Resumed() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.resumed
}

// Calls returns how often method was called.
func (a *Agent) Calls(method string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[method]
}

func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *Agent) wait(ctx context.Context, d time.Duration) error {
	if a.Hang {
		<-ctx.Done()
		return ctx.Err()
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (a *Agent) count(method string) {
	a.mu.Lock()
	a.calls[method]++
	a.mu.Unlock()
}

// Mux returns the handlers of the host agent's controller-facing methods.
func (a *Agent) Mux() *wire.Mux {
	m := wire.NewMux()
	wire.HandleUnary(m, "host.Inventory", func(ctx context.Context, _ *pb.InventoryRequest) (*pb.HostInventory, error) {
		a.count("host.Inventory")
		if err := a.wait(ctx, a.Delay); err != nil {
			return nil, err
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.inventory(), nil
	})
	wire.HandleUnary(m, "host.Status", func(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
		a.count("host.Status")
		if err := a.wait(ctx, a.Delay); err != nil {
			return nil, err
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		resp := &pb.StatusResponse{Host: a.inventory()}
		for _, spec := range a.specs(req.GetContainers()) {
			resp.Containers = append(resp.Containers, a.status(spec.GetId(), spec))
		}
		return resp, nil
	})
	wire.HandleUnary(m, "host.Plan", func(ctx context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
		a.count("host.Plan")
		if err := a.wait(ctx, a.Delay); err != nil {
			return nil, err
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		resp := &pb.PlanResponse{Host: a.inventory()}
		for _, spec := range req.GetContainers() {
			resp.Containers = append(resp.Containers, a.plan(spec))
		}
		return resp, nil
	})
	wire.HandleServerStream(m, "host.Apply", func(ctx context.Context, req *pb.ApplyRequest, s *wire.Stream) error {
		a.count("host.Apply")
		if err := a.wait(ctx, a.Delay); err != nil {
			return err
		}
		return a.apply(ctx, req, s)
	})
	wire.HandleServerStream(m, "host.Watch", func(ctx context.Context, req *pb.WatchRequest, s *wire.Stream) error {
		a.count("host.Watch")
		return a.watch(ctx, req, s)
	})
	return m
}

// specs returns the requested specs, or one per known container when none are named.
func (a *Agent) specs(req []*pb.ContainerSpec) []*pb.ContainerSpec {
	if len(req) > 0 {
		return req
	}
	ids := make([]string, 0, len(a.containers))
	for id := range a.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var out []*pb.ContainerSpec
	for _, id := range ids {
		out = append(out, &pb.ContainerSpec{Id: id, Gpus: a.containers[id].GPUs})
	}
	return out
}

func (a *Agent) apply(ctx context.Context, req *pb.ApplyRequest, s *wire.Stream) error {
	resp, err := a.applyWith(ctx, req, func(p *pb.ApplyProgress) error {
		if err := s.Reply(&pb.ApplyUpdate{Kind: &pb.ApplyUpdate_Progress{Progress: p}}); err != nil {
			return err
		}
		return a.wait(ctx, a.StepDelay)
	})
	if err != nil {
		return err
	}
	return s.Reply(&pb.ApplyUpdate{Kind: &pb.ApplyUpdate_Result{Result: resp}})
}

// applyWith is the model's host.Apply: it sends each step to progress and returns the
// result. Its steps and results are the agent's (hostagent's applyLocked; held by
// TestModelAppliesAsTheAgent): a journal entry only when something is written, started
// or restarted; wait-ready only for a container that runs after it; done, with the
// outcome, after every container, failed ones too.
func (a *Agent) applyWith(ctx context.Context, req *pb.ApplyRequest, progress func(*pb.ApplyProgress) error) (*pb.ApplyResponse, error) {
	resp := &pb.ApplyResponse{}
	step := func(id, name, msg string) error {
		return progress(&pb.ApplyProgress{ContainerId: id, Step: name, Message: msg})
	}
	timeout := time.Duration(req.GetTimeoutMs()) * time.Millisecond
	if timeout <= 0 {
		timeout = 60 * time.Second // hostagent.DefaultReadyTimeout
	}
	for _, spec := range req.GetContainers() {
		id := spec.GetId()
		res, err := a.applyOne(ctx, spec, req.GetExpectDigest(), timeout, step)
		if err != nil {
			return nil, err
		}
		resp.Containers = append(resp.Containers, res)
		outcome := "ok"
		switch st := res.GetStatus().GetState(); {
		case res.GetError() != "":
			outcome = "error"
		case st != pb.StateReady && st != "stopped":
			outcome = "not-ready"
		}
		if err := step(id, "done", outcome); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	resp.Host = a.inventory()
	a.mu.Unlock()
	return resp, nil
}

// applyOne applies spec to its container; an error is the stream's, a failed apply is
// the result's.
func (a *Agent) applyOne(_ context.Context, spec *pb.ContainerSpec, expect map[string]string, timeout time.Duration, step func(id, name, msg string) error) (*pb.ContainerResult, error) {
	id := spec.GetId()
	a.mu.Lock()
	p := a.plan(spec)
	c, known := a.containers[id]
	running := known && c.RunState == "running"
	a.mu.Unlock()
	res := &pb.ContainerResult{Plan: p}
	fail := func(msg string) (*pb.ContainerResult, error) {
		// As the agent's: the error, and a status that says it; the plan carries none.
		res.Error = msg
		res.Status = &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), State: "error", Reasons: []string{msg}}
		return res, nil
	}
	if e := p.GetError(); e != "" {
		p.Error = ""
		return fail(e)
	}
	if d, ok := expect[id]; ok && d != "" && d != p.GetDigest() {
		return fail(fmt.Sprintf("%s changed since the plan (digest %s, now %s): nothing was written; run plan again", p.GetConfigPath(), short(d), short(p.GetDigest())))
	}
	restart := running && p.GetRestart().GetRequired()
	start := p.GetStart()
	if len(p.GetChanges()) > 0 || restart || start {
		if err := step(id, "journal", "begin"); err != nil {
			return nil, err
		}
	}
	if len(p.GetChanges()) > 0 {
		if err := step(id, "write", fmt.Sprintf("%d change(s) to %s", len(p.GetChanges()), p.GetConfigPath())); err != nil {
			return nil, err
		}
		res.Written = true
	}
	a.Update(id, func(c *Container) { c.GPUs, c.Style = spec.GetGpus(), spec.GetStyle() })
	if restart || start {
		stepName, msg := "restart", pb.Brief(pb.DetailsOf(p.GetRestart().GetReasons(), p.GetRestart().GetDetails()))
		if start {
			stepName, msg = "start", "fleet wants it running"
		}
		if err := step(id, stepName, msg); err != nil {
			return nil, err
		}
		a.Update(id, func(c *Container) {
			gs, _ := a.resolve(c.GPUs)
			// It starts with the rules rendered from the majors read now: a denial
			// by stale rules is gone.
			c.Running, c.RunState, c.Denied = minors(gs), "running", false
		})
		res.Restarted, res.Started = restart, start
	}
	if running || start {
		if err := step(id, "wait-ready", fmt.Sprintf("waiting up to %v for the guest's report", timeout)); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	res.Status = a.status(id, spec)
	a.mu.Unlock()
	return res, nil
}

// short is the agent's short form of a digest in its messages.
func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}

// watch is the agent's Watch: with specs (the controller sends the fleet's) each event is
// judged against its spec and they name the watched containers; without, container_ids
// are, judged against the desired spec.
func (a *Agent) watch(ctx context.Context, req *pb.WatchRequest, s *wire.Stream) error {
	given := map[string]*pb.ContainerSpec{}
	var givenIDs []string
	for _, spec := range req.GetContainers() {
		if _, dup := given[spec.GetId()]; !dup {
			givenIDs = append(givenIDs, spec.GetId())
		}
		given[spec.GetId()] = spec
	}
	last := map[string]string{} // as the agent's Watch: an event when state, reasons or restart change
	for {
		a.mu.Lock()
		ch := a.changed
		var ids []string
		switch {
		case len(givenIDs) > 0:
			ids = givenIDs
		case len(req.GetContainerIds()) > 0:
			ids = req.GetContainerIds()
		default:
			for id := range a.containers {
				ids = append(ids, id)
			}
			sort.Strings(ids)
		}
		var events []*pb.WatchEvent
		for _, id := range ids {
			spec, ok := given[id]
			if !ok {
				// The desired spec, which the model takes to be what the config passes.
				spec = &pb.ContainerSpec{Id: id}
				if c, ok := a.containers[id]; ok {
					spec.Gpus, spec.Style = c.GPUs, c.Style
				}
			}
			st := a.status(id, spec)
			key := fmt.Sprint(st.GetState(), st.GetReasons(), st.GetRestartRequired())
			if last[id] == key {
				continue
			}
			last[id] = key
			events = append(events, &pb.WatchEvent{Host: a.Name, Status: st, TimeUnixNano: time.Now().UnixNano()})
		}
		a.mu.Unlock()
		for _, ev := range events {
			if err := s.Reply(ev); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
}

// Serve answers on ln with TLS config cfg until tb's cleanup; it returns the address.
func (a *Agent) Serve(tb testing.TB, ln net.Listener, cfg *tls.Config) string {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	mux := a.Mux()
	lg := a.Log
	if lg == nil {
		lg = log.Discard()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.serveConn(ctx, c, cfg, mux, lg)
			}()
		}
	}()
	tb.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	a.Addr = ln.Addr().String()
	return a.Addr
}

// serveConn serves one connection. A resumed TLS handshake is counted as soon as it is
// done, before the session is served: a client that has its answer and exits must find
// its resumption counted (counting when the session ended raced the test's check).
func (a *Agent) serveConn(ctx context.Context, c net.Conn, cfg *tls.Config, mux *wire.Mux, lg *log.Entry) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	tc := tls.Server(c, cfg)
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		lg.WithError(err).Debug("TLS handshake failed")
		return
	}
	if tc.ConnectionState().DidResume {
		a.mu.Lock()
		a.resumed++
		a.mu.Unlock()
	}
	s, err := wire.Server(ctx, tc, wire.Config{Role: pb.Role_ROLE_HOST_AGENT, Build: "agenttest", Log: lg}, mux)
	if err != nil {
		lg.WithError(err).Debug("hello failed")
		return
	}
	defer s.Close()
	if err := s.Serve(ctx); err != nil && !errors.Is(err, context.Canceled) {
		lg.WithError(err).Debug("session ended")
	}
}

// Listen opens a loopback TCP listener closed at tb's cleanup.
func Listen(tb testing.TB, addr string) net.Listener {
	tb.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	return ln
}

// Refused returns a loopback address where nothing listens.
func Refused(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Silent returns the address of a listener that accepts TCP connections and never reads
// or writes: a host that is up but hung.
func Silent(tb testing.TB) string {
	tb.Helper()
	ln := Listen(tb, "")
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}
