package hostagent

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pki"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// TestSoak is the load test behind `make soak` (scripts/soak.sh); it runs only with
// GPUPASS_SOAK=1. One host agent (its guest registry, its controller listener over real
// TLS on 127.0.0.1) serves N simulated guests, each on its own container's unix socket
// reporting every GPUPASS_SOAK_REPORT_EVERY, while M controllers query host.Status back to
// back, for GPUPASS_SOAK_DURATION. No error is allowed anywhere, every container must end
// ready, and memory must stay bounded.
//
// The guests run in this process: each dials from an abstract unix address naming a
// simulated pid, the registry's PeerPID hook reads that pid back, and its PeerCgroup hook
// answers "0::/lxc.payload.<id>" for it, so the identity check runs as in production over
// what a kernel would say (the real SO_PEERCRED path is covered by guestchan's
// TestRealPeerIdentity and TestLXCIdentity).
func TestSoak(t *testing.T) {
	if os.Getenv("GPUPASS_SOAK") != "1" {
		t.Skip("load test: run with GPUPASS_SOAK=1 (make soak)")
	}
	opts := soakOptions{
		guests:      envInt(t, "GPUPASS_SOAK_GUESTS", 200),
		clients:     envInt(t, "GPUPASS_SOAK_CLIENTS", 50),
		duration:    envDuration(t, "GPUPASS_SOAK_DURATION", 60*time.Second),
		reportEvery: envDuration(t, "GPUPASS_SOAK_REPORT_EVERY", time.Second),
	}
	res := runSoak(t, opts)
	md := res.markdown(opts)
	t.Log("\n" + md)
	if out := os.Getenv("GPUPASS_SOAK_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(md), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res.check(t, opts)
}

type soakOptions struct {
	guests, clients       int
	duration, reportEvery time.Duration
}

func envInt(t *testing.T, name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("%s=%q: want a positive number", name, v)
		}
		return n
	}
	return def
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("%s=%q: want a positive duration", name, v)
		}
		return d
	}
	return def
}

// memSample is the process's memory at one moment, after a GC.
type memSample struct {
	at         time.Duration
	heapInuse  uint64
	rss        uint64
	goroutines int
	fds        int
}

func sampleMem(at time.Duration) memSample {
	goruntime.GC()
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	s := memSample{at: at, heapInuse: ms.HeapInuse, goroutines: goruntime.NumGoroutine()}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				s.rss = kb << 10
			}
		}
	}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		s.fds = len(ents)
	}
	return s
}

type soakResult struct {
	simulated                          bool
	elapsed                            time.Duration
	reportsSent, sendErrs              atomic.Int64
	expectations, guestErrs            atomic.Int64
	queries, queryErrs, wrongAnswers   atomic.Int64
	reconnects                         atomic.Int64
	mu                                 sync.Mutex
	latencies                          []time.Duration
	samples                            []memSample
	firstErrs                          []string
	dropped                            uint64
	finalReady, finalConnected, stored int
	warnLines                          []string
}

func (r *soakResult) fail(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.firstErrs) < 10 {
		r.firstErrs = append(r.firstErrs, fmt.Sprintf(format, args...))
	}
}

// soakProcs is the simulated kernel view: pid -> /proc/<pid>/cgroup.
type soakProcs struct {
	mu      sync.Mutex
	cgroups map[int32]string
}

func (p *soakProcs) peerPID(conn *net.UnixConn) (int32, error) {
	name := conn.RemoteAddr().(*net.UnixAddr).Name // @gpupass-soak/<test pid>/<pid>
	n, err := strconv.Atoi(name[strings.LastIndexByte(name, '/')+1:])
	return int32(n), err
}

func (p *soakProcs) cgroup(pid int32) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.cgroups[pid]
	if !ok {
		return "", fmt.Errorf("pid %d: %w", pid, os.ErrNotExist)
	}
	return c, nil
}

// soakDevices are the simulated GPU 0's nodes as a guest reports them.
func soakDevices(inv *gpu.Inventory) []*pb.DeviceCheck {
	var out []*pb.DeviceCheck
	for _, p := range []string{"/dev/nvidia0", gpu.PathCtl, gpu.PathUVM, gpu.PathUVMTools} {
		n := inv.Nodes[p]
		out = append(out, &pb.DeviceCheck{Path: p, Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: n.Major, Minor: n.Minor})
	}
	return out
}

func runSoak(t *testing.T, o soakOptions) *soakResult {
	res := &soakResult{}
	p := newTestPKI(t)
	base, err := os.MkdirTemp("", "gps") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	var root string
	if os.Geteuid() == 0 {
		root = gputest.SimulatedRoot(t, gpu.SimOptions{GPUs: 1})
		res.simulated = true
	} else {
		root = filepath.Join(base, "root") // no driver: reports still flow, status still answers
		if err := os.MkdirAll(root, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	inv, _ := gpu.Discover(root)
	if inv == nil {
		inv = &gpu.Inventory{Nodes: map[string]gpu.Node{}}
	}

	cfg := hostconfig.Default()
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "g")
	cfg.HostRoot = root
	cfg.Heartbeat = o.reportEvery
	cfg.GuestStaleAfter = 5 * o.reportEvery
	logs := &syncBuffer{}
	l := log.Component(log.New(log.Options{Out: logs, Format: "json", Level: "info"}), "hostagent")
	procs := &soakProcs{cgroups: map[int32]string{}}
	reg := guestchan.New(guestchan.Config{
		Dir: cfg.GuestSocketDir, Heartbeat: cfg.Heartbeat, StaleAfter: cfg.GuestStaleAfter,
		Log: l.WithField("part", "guests"), Build: "soak", PeerPID: procs.peerPID, PeerCgroup: procs.cgroup,
		PeerRoot: func(*net.UnixConn, int32, time.Time) error { return nil }, // simulated pids are all root
	})
	ids := make([]string, o.guests)
	for i := range ids {
		ids[i] = strconv.Itoa(1000 + i)
	}
	metrics := NewMetrics()
	agent, err := New(cfg, Options{Runtime: newMemRuntime(filepath.Join(base, "lxc"), ids...), Guests: reg, Log: l, Metrics: metrics, Name: "soak"})
	if err != nil {
		t.Fatal(err)
	}
	devices := soakDevices(inv)
	for _, id := range ids {
		if _, err := reg.Ensure(id); err != nil {
			t.Fatal(err)
		}
		spec := &pb.ContainerSpec{Id: id, Gpus: []string{"0"}}
		if err := agent.remember(spec); err != nil {
			t.Fatal(err)
		}
		exp := &pb.Expectation{ContainerId: id, HeartbeatIntervalMs: o.reportEvery.Milliseconds(), KernelDriverVersion: inv.DriverVersion, DriverLoaded: inv.DriverVersion != ""}
		for _, d := range devices {
			exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: d.GetPath(), Major: d.GetMajor(), Minor: d.GetMinor()})
		}
		agent.setExpectation(id, exp)
	}

	tc, err := pki.ServerTLS(p.ca(), filepath.Join(p.dir, "host.crt"), filepath.Join(p.dir, "host.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := tls.NewListener(raw, tc)
	ctx, cancel := context.WithCancel(context.Background())
	var serverWG sync.WaitGroup
	for _, f := range []func() error{
		func() error { return reg.Run(ctx) },
		func() error { return agent.ServeControllers(ctx, ln) },
		func() error { return agent.trackGuests(ctx, metrics) },
	} {
		serverWG.Add(1)
		go func() {
			defer serverWG.Done()
			if err := f(); err != nil {
				res.fail("host agent: %v", err)
			}
		}()
	}
	defer func() { cancel(); serverWG.Wait() }()

	start := time.Now()
	deadline := start.Add(o.duration)
	loadCtx, stopLoad := context.WithDeadline(ctx, deadline)
	defer stopLoad()
	var loadWG sync.WaitGroup

	// The guests: their sessions carry no deadline (as a guest agent's do not); they end
	// after the final status below.
	guestCtx, stopGuests := context.WithCancel(ctx)
	defer stopGuests()
	var guestWG sync.WaitGroup
	for i, id := range ids {
		pid := int32(200000 + i)
		procs.mu.Lock()
		procs.cgroups[pid] = "0::/lxc.payload." + id + "\n"
		procs.mu.Unlock()
		guestWG.Add(1)
		go func() {
			defer guestWG.Done()
			soakGuest(guestCtx, res, filepath.Join(cfg.GuestSocketDir, id, guestchan.SocketName), id, pid, devices, inv.DriverVersion, o.reportEvery)
		}()
	}
	// Wait until every guest has reported once before the controllers start.
	for _, id := range ids {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := reg.Wait(wctx, id, func(s guestchan.Snapshot) bool { return s.Report != nil })
		wcancel()
		if err != nil {
			res.fail("guest %s never reported: %v", id, err)
			break
		}
	}
	t.Logf("%d guests connected and reporting after %v", o.guests, time.Since(start).Round(time.Millisecond))

	// The controllers.
	for range o.clients {
		loadWG.Add(1)
		go func() {
			defer loadWG.Done()
			soakController(loadCtx, res, ln.Addr().String(), p.clientTLS(t, p.dir, "controller"), o.guests)
		}()
	}
	// Memory, every tenth of the run.
	loadWG.Add(1)
	go func() {
		defer loadWG.Done()
		tk := time.NewTicker(o.duration / 10)
		defer tk.Stop()
		for {
			s := sampleMem(time.Since(start))
			res.mu.Lock()
			res.samples = append(res.samples, s)
			res.mu.Unlock()
			select {
			case <-loadCtx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	loadWG.Wait()
	res.elapsed = time.Since(start)

	// The end state, as the agent knows it, with the guests still connected.
	final := agent.Status(ctx, &pb.StatusRequest{})
	for _, c := range final.GetContainers() {
		if c.GetState() == StateReady {
			res.finalReady++
		} else if len(res.firstErrs) < 10 {
			res.fail("container %s ended %s: %v", c.GetId(), c.GetState(), c.GetReasons())
		}
	}
	for _, id := range ids {
		if s, ok := reg.Latest(id); ok {
			res.dropped += s.Dropped
			if s.Report != nil {
				res.stored++
			}
			if s.Connected {
				res.finalConnected++
			}
		}
	}
	res.samples = append(res.samples, sampleMem(time.Since(start)))
	stopGuests()
	guestWG.Wait()
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"level":"warning"`) || strings.Contains(line, `"level":"error"`) {
			res.warnLines = append(res.warnLines, line)
		}
	}
	return res
}

// soakGuest is one guest agent reduced to its protocol: Hello, guest.Session, a report at
// once and then every interval, expectations read as they come.
func soakGuest(ctx context.Context, res *soakResult, sock, id string, pid int32, devices []*pb.DeviceCheck, driver string, every time.Duration) {
	laddr := &net.UnixAddr{Net: "unix", Name: fmt.Sprintf("@gpupass-soak/%d/%d", os.Getpid(), pid)}
	conn, err := net.DialUnix("unix", laddr, &net.UnixAddr{Net: "unix", Name: sock})
	if err != nil {
		res.guestErrs.Add(1)
		res.fail("guest %s: dial: %v", id, err)
		return
	}
	hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
	sess, err := wire.Client(hctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, Build: "soak", ContainerID: id, BootID: "boot-" + id}, nil)
	hcancel()
	if err != nil {
		res.guestErrs.Add(1)
		res.fail("guest %s: hello: %v", id, err)
		return
	}
	defer sess.Close()
	st, err := sess.Open(ctx, guestchan.Method)
	if err != nil {
		res.guestErrs.Add(1)
		res.fail("guest %s: open session: %v", id, err)
		return
	}
	defer st.Close()
	go func() {
		for {
			if err := st.RecvReply(&pb.Expectation{}); err != nil {
				if ctx.Err() == nil {
					res.guestErrs.Add(1)
					res.fail("guest %s: expectation stream: %v", id, err)
				}
				return
			}
			res.expectations.Add(1)
		}
	}()
	// Spread the guests over the interval, as independent containers are.
	jitter := time.Duration(pid%97) * every / 97
	tk := time.NewTicker(every)
	defer tk.Stop()
	for seq := uint64(1); ; seq++ {
		trigger := "heartbeat"
		if seq == 1 {
			trigger = "connect"
		}
		rep := &pb.GuestReport{
			BootId: "boot-" + id, AgentBuild: "soak", Seq: seq, TimeUnixNano: time.Now().UnixNano(),
			Devices: devices, Driver: &pb.DriverVersions{Kernel: driver, Userspace: driver},
			Network: &pb.Network{Ok: true, DefaultRoute: true}, Ready: true, Trigger: trigger,
		}
		if err := st.Send(rep); err != nil {
			if ctx.Err() == nil {
				res.sendErrs.Add(1)
				res.fail("guest %s: send report %d: %v", id, seq, err)
			}
			return
		}
		res.reportsSent.Add(1)
		if seq == 1 && jitter > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(jitter):
			}
			tk.Reset(every)
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}

// soakController queries host.Status back to back over one TLS session, reconnecting every
// 200 queries, and checks every answer lists all containers.
func soakController(ctx context.Context, res *soakResult, addr string, tc *tls.Config, want int) {
	var sess *wire.Session
	defer func() {
		if sess != nil {
			sess.Close()
		}
	}()
	for n := 0; ctx.Err() == nil; n++ {
		if sess == nil || n%200 == 0 {
			if sess != nil {
				sess.Close()
				res.reconnects.Add(1)
			}
			var err error
			if sess, err = dialController(addr, tc, pb.Role_ROLE_CONTROLLER); err != nil {
				if ctx.Err() == nil {
					res.queryErrs.Add(1)
					res.fail("controller: connect: %v", err)
				}
				sess = nil
				time.Sleep(100 * time.Millisecond)
				continue
			}
		}
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t0 := time.Now()
		var resp pb.StatusResponse
		err := sess.Call(cctx, "host.Status", &pb.StatusRequest{}, &resp)
		d := time.Since(t0)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				res.queryErrs.Add(1)
				res.fail("controller: host.Status: %v", err)
			}
			sess.Close()
			sess = nil
			continue
		}
		res.queries.Add(1)
		if len(resp.GetContainers()) != want {
			res.wrongAnswers.Add(1)
			res.fail("host.Status listed %d containers, want %d", len(resp.GetContainers()), want)
		}
		res.mu.Lock()
		res.latencies = append(res.latencies, d)
		res.mu.Unlock()
	}
}

// peak is the largest of each figure over samples.
func peak(samples []memSample) memSample {
	var p memSample
	for _, s := range samples {
		p.heapInuse, p.rss = max(p.heapInuse, s.heapInuse), max(p.rss, s.rss)
		p.goroutines, p.fds = max(p.goroutines, s.goroutines), max(p.fds, s.fds)
	}
	return p
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// markdown renders the figures for docs/reliability.md.
func (r *soakResult) markdown(o soakOptions) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	lat := append([]time.Duration(nil), r.latencies...)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	var b strings.Builder
	host := "no GPU driver (the machine has no root)"
	if r.simulated {
		host = "a SIMULATED GPU host (1 GPU)"
	}
	fmt.Fprintf(&b, "Run of %s on %s, %d CPUs, %s; %s.\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), goruntime.GOOS+"/"+goruntime.GOARCH, goruntime.NumCPU(), goruntime.Version(), host)
	fmt.Fprintf(&b, "| figure | value |\n|---|---|\n")
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, v) }
	row("duration", r.elapsed.Round(time.Millisecond).String())
	row("simulated guests (one unix socket and session each)", fmt.Sprint(o.guests))
	row("report interval per guest", o.reportEvery.String())
	row("guest reports sent / stored in the end / dropped by the rate limit", fmt.Sprintf("%d / %d containers / %d", r.reportsSent.Load(), r.stored, r.dropped))
	row("guest reports per second (all guests)", fmt.Sprintf("%.0f", float64(r.reportsSent.Load())/r.elapsed.Seconds()))
	row("concurrent controllers (TLS 1.3 + yamux, host.Status back to back)", fmt.Sprint(o.clients))
	row("host.Status answered (each listing every container)", fmt.Sprintf("%d (%.0f/s)", r.queries.Load(), float64(r.queries.Load())/r.elapsed.Seconds()))
	row("host.Status latency p50 / p99 / max", fmt.Sprintf("%v / %v / %v", quantile(lat, 0.5).Round(time.Microsecond), quantile(lat, 0.99).Round(time.Microsecond), quantile(lat, 1).Round(time.Microsecond)))
	row("controller reconnects (new TLS session)", fmt.Sprint(r.reconnects.Load()))
	row("errors: report sends / guest sessions / status calls / wrong answers", fmt.Sprintf("%d / %d / %d / %d", r.sendErrs.Load(), r.guestErrs.Load(), r.queryErrs.Load(), r.wrongAnswers.Load()))
	row("warnings and errors in the host agent's log", fmt.Sprint(len(r.warnLines)))
	row("containers ready / guests connected at the end", fmt.Sprintf("%d / %d of %d", r.finalReady, r.finalConnected, o.guests))
	fmt.Fprintf(&b, "\nMemory of the whole test process (host agent, guests and controllers together), after a GC:\n\n")
	fmt.Fprintf(&b, "| at | heap in use | RSS | goroutines | open fds |\n|---|---|---|---|---|\n")
	for _, s := range r.samples {
		fmt.Fprintf(&b, "| %v | %s | %s | %d | %d |\n", s.at.Round(time.Second), mib(s.heapInuse), mib(s.rss), s.goroutines, s.fds)
	}
	return b.String()
}

// check fails the test unless the run had no errors and memory stayed bounded: the heap
// and the goroutines at the end within a margin of their level once all guests were up.
func (r *soakResult) check(t *testing.T, o soakOptions) {
	for _, e := range r.firstErrs {
		t.Error(e)
	}
	for i, l := range r.warnLines {
		if i == 5 {
			break
		}
		t.Errorf("host agent log: %s", l)
	}
	if n := r.sendErrs.Load() + r.guestErrs.Load() + r.queryErrs.Load() + r.wrongAnswers.Load(); n > 0 {
		t.Errorf("%d errors", n)
	}
	if r.dropped > 0 {
		t.Errorf("%d reports dropped", r.dropped)
	}
	if r.finalReady != o.guests || r.finalConnected != o.guests {
		t.Errorf("%d ready, %d connected at the end, want %d", r.finalReady, r.finalConnected, o.guests)
	}
	if r.queries.Load() == 0 {
		t.Error("no status query answered")
	}
	if len(r.samples) < 3 {
		t.Fatalf("%d memory samples", len(r.samples))
	}
	// Bounded: no growth from the first half of the run (every guest and controller up
	// from the second sample on) to the second half, beyond the noise of in-flight answers.
	load := r.samples[1 : len(r.samples)-1]
	first, second := peak(load[:len(load)/2]), peak(load[len(load)/2:])
	if second.heapInuse > first.heapInuse*3/2+16<<20 {
		t.Errorf("heap in use grew: peak %s in the first half, %s in the second", mib(first.heapInuse), mib(second.heapInuse))
	}
	if second.rss > first.rss*3/2+32<<20 {
		t.Errorf("RSS grew: peak %s in the first half, %s in the second", mib(first.rss), mib(second.rss))
	}
	warm, last := r.samples[1], r.samples[len(r.samples)-1]
	if last.goroutines > warm.goroutines+o.clients*10 {
		t.Errorf("goroutines grew from %d to %d", warm.goroutines, last.goroutines)
	}
	if last.fds > warm.fds+o.clients*2 {
		t.Errorf("open fds grew from %d to %d", warm.fds, last.fds)
	}
}
