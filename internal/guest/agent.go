package guest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// Method is the stream a guest opens: it sends GuestReport frames, the host answers with a
// Reply{Expectation} frame at the start and whenever the expectation changes.
const Method = "guest.Session"

// Defaults of the agent loop.
const (
	// DefaultSocket is where the host agent's socket appears in the container: a host
	// directory bind-mounted at /dev/gpupass, which no init mounts over.
	DefaultSocket = "/dev/gpupass/agent.sock"
	// LegacySocket is where it appeared before (/run/gpupass): a container started with
	// the old mount entry still has it there, unless systemd's tmpfs on /run hides it.
	LegacySocket      = "/run/gpupass/agent.sock"
	DefaultHeartbeat  = 10 * time.Second
	DefaultDebounce   = 5 * time.Millisecond
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 5 * time.Second
	dialTimeout       = 5 * time.Second
	// MaxReportFrame caps the frames the guest sends and accepts.
	MaxReportFrame = 1 << 20
	minHeartbeat   = 10 * time.Millisecond
	maxHeartbeat   = time.Hour
)

// Config configures an Agent.
type Config struct {
	// Socket is the host agent's socket; "" means DefaultSocket, then LegacySocket when
	// DefaultSocket cannot be dialled (a container started before the move).
	Socket      string
	ContainerID string // claimed in Hello; the host decides identity from the kernel anyway
	BootID      string
	Build       string
	Checker     *Checker
	Heartbeat   time.Duration // default DefaultHeartbeat; an expectation's heartbeat_interval_ms wins
	Debounce    time.Duration // default DefaultDebounce
	BackoffMin  time.Duration // default DefaultBackoffMin
	BackoffMax  time.Duration // default DefaultBackoffMax
	// ReportRate and ReportBurst pace change reports (a token bucket; default 10 a
	// second, bursts of 20) below the host agent's limit: the latest state is sent late,
	// never dropped.
	ReportRate  float64
	ReportBurst int
	Log         *log.Entry
	// Dial connects to the host agent; default: the unix socket at Socket.
	Dial func(ctx context.Context) (net.Conn, error)
	// Started, if set, is called once the watches are up (systemd READY=1).
	Started func()
	// OnReport, if set, is called with every report sent (systemd STATUS=, tests).
	OnReport func(r *pb.GuestReport)
	// OnState, if set, is called when the connection state changes: "connected",
	// "disconnected: <why>".
	OnState func(state string)
	// OnLocalCheck, if set, is called while the host agent is unreachable with the fast
	// checks (no nvidia-smi) against the last expectation, after every change the Watcher
	// sees: a device that disappears then still takes the ready marker away.
	OnLocalCheck func(r *pb.GuestReport)
}

// Agent keeps the host agent informed: it connects (and reconnects forever, with capped
// exponential backoff), receives the expectation, and sends a full report on connect, on
// every change the Watcher sees, and as a heartbeat.
type Agent struct {
	cfg     Config
	checker Checker // cfg.Checker, its network check cached between network changes
	seq     atomic.Uint64
	limiter *log.Limiter

	netStale atomic.Bool     // a network change came since netState was taken
	netWatch bool            // network changes are watched, so netState may be reused
	netState *pb.Network     // only the session goroutine touches it
	lastExp  *pb.Expectation // the last expectation received; only Run's goroutine touches it
	sockets  []string        // dialled in order by the default Dial
}

// Sockets lists the socket paths the agent dials, in order.
func (a *Agent) Sockets() []string { return append([]string(nil), a.sockets...) }

// New checks cfg and fills in defaults.
func New(cfg Config) (*Agent, error) {
	if cfg.Checker == nil {
		return nil, errors.New("new guest agent: no Checker")
	}
	sockets := []string{cfg.Socket}
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
		sockets = []string{DefaultSocket, LegacySocket}
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.ReportRate <= 0 {
		cfg.ReportRate = reportRate
	}
	if cfg.ReportBurst <= 0 {
		cfg.ReportBurst = reportBurst
	}
	if cfg.Log == nil {
		cfg.Log = log.Discard()
	}
	cfg.ContainerID = truncate(cfg.ContainerID, maxIDLen)
	cfg.BootID = truncate(cfg.BootID, maxIDLen)
	if cfg.Dial == nil {
		cfg.Dial = func(ctx context.Context) (net.Conn, error) { return dialFirst(ctx, sockets) }
	}
	a := &Agent{cfg: cfg, checker: *cfg.Checker, limiter: log.NewLimiter(time.Minute), sockets: sockets}
	network := cfg.Checker.Network
	if network == nil {
		network = CheckNetwork
	}
	a.checker.Network = func() *pb.Network {
		if !a.netWatch || a.netStale.Swap(false) || a.netState == nil {
			a.netState = network()
		}
		return a.netState
	}
	a.netStale.Store(true)
	return a, nil
}

// Run serves until ctx ends (then it returns nil). It fails only when /dev cannot be
// watched.
func (a *Agent) Run(ctx context.Context) error {
	w, err := NewWatcher(a.cfg.Checker.Paths, a.cfg.Log)
	if err != nil {
		return fmt.Errorf("run guest agent: %w", err)
	}
	defer w.Close()
	a.netWatch = w.WatchesNetwork()
	changes := make(chan struct{}, 1)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := w.Run(wctx, func(source string) {
			if source == ChangeNetwork {
				a.netStale.Store(true)
			}
			select {
			case changes <- struct{}{}:
			default:
			}
		})
		if err != nil && wctx.Err() == nil {
			a.cfg.Log.WithError(err).Error("watching for changes stopped: reports come at the heartbeat only")
		}
	}()
	defer func() {
		stop()
		wg.Wait()
	}()
	if a.cfg.Started != nil {
		a.cfg.Started()
	}
	backoff := a.cfg.BackoffMin
	for {
		established, err := a.session(ctx, changes)
		if ctx.Err() != nil {
			return nil
		}
		if established {
			backoff = a.cfg.BackoffMin
		}
		a.state("disconnected: " + err.Error())
		if a.limiter.Allow(errKey(err)) {
			a.cfg.Log.WithError(err).WithField("retry_in", backoff.String()).Info("host agent session ended; reconnecting")
		}
		// ±20% jitter, so that guests of a restarted host agent do not come back in step.
		wait := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		if err := a.waitBackoff(ctx, wait, changes); err != nil {
			return nil
		}
		backoff = min(backoff*2, a.cfg.BackoffMax)
	}
}

// waitBackoff sleeps before the next dial; changes seen meanwhile are checked locally
// against the last expectation (OnLocalCheck). It fails only when ctx ends.
func (a *Agent) waitBackoff(ctx context.Context, wait time.Duration, changes <-chan struct{}) error {
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-changes:
			if a.cfg.OnLocalCheck != nil && a.lastExp != nil {
				r := a.checker.Observe(a.lastExp)
				Assess(a.lastExp, r, false)
				r.ContainerId, r.BootId, r.AgentBuild = a.cfg.ContainerID, a.cfg.BootID, a.cfg.Build
				r.Trigger, r.TimeUnixNano = TriggerChange, time.Now().UnixNano()
				a.cfg.OnLocalCheck(r)
			}
		}
	}
}

// errKey groups errors for log rate limiting: the same failure repeating is logged once a
// minute.
func errKey(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i:]
	}
	return s
}

func (a *Agent) state(s string) {
	if a.cfg.OnState != nil {
		a.cfg.OnState(s)
	}
}

// smiCache remembers the last nvidia-smi result and the state it was taken in.
type smiCache struct {
	fp      string
	res     *pb.SmiResult
	running string // fingerprint of the run in flight, "" when none
}

type smiDone struct {
	fp  string
	res *pb.SmiResult
}

// session runs one connection. established says the host sent an expectation.
func (a *Agent) session(ctx context.Context, changes <-chan struct{}) (established bool, err error) {
	dctx, cancelDial := context.WithTimeout(ctx, dialTimeout)
	conn, err := a.cfg.Dial(dctx)
	cancelDial()
	if err != nil {
		return false, fmt.Errorf("dial host agent: %w", err)
	}
	if addr := conn.RemoteAddr(); addr != nil && addr.Network() == "unix" {
		a.cfg.Log.WithField("socket", addr.String()).Debug("dialled host agent")
	}
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	sess, err := wire.Client(sctx, conn, wire.Config{
		Role: pb.Role_ROLE_GUEST_AGENT, Build: a.cfg.Build, ContainerID: a.cfg.ContainerID, BootID: a.cfg.BootID,
		MaxFrame: MaxReportFrame, MaxStreams: 4, Log: a.cfg.Log,
	}, nil)
	if err != nil {
		conn.Close()
		return false, fmt.Errorf("say hello to host agent: %w", err)
	}
	defer sess.Close()
	wg.Add(1)
	go func() { // the host has no reason to open streams here; answer any with an error
		defer wg.Done()
		_ = sess.Serve(sctx)
	}()
	st, err := sess.Open(sctx, Method)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", Method, err)
	}
	defer st.Close()
	exps := make(chan *pb.Expectation)
	recvErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			e := &pb.Expectation{}
			if err := st.RecvReply(e); err != nil {
				recvErr <- err
				return
			}
			select {
			case exps <- e:
			case <-sctx.Done():
				return
			}
		}
	}()

	var (
		exp       *pb.Expectation
		last      *pb.GuestReport
		smi       smiCache
		smiResult = make(chan smiDone, 1)
		heartbeat = time.NewTimer(time.Hour)
		debounce  = time.NewTimer(time.Hour)
		pending   bool // a debounce is armed
		pace      = newPacer(a.cfg.ReportRate, a.cfg.ReportBurst, time.Now())
	)
	heartbeat.Stop()
	debounce.Stop()
	defer heartbeat.Stop()
	defer debounce.Stop()
	interval := func() time.Duration {
		if ms := exp.GetHeartbeatIntervalMs(); ms > 0 {
			return min(max(time.Duration(ms)*time.Millisecond, minHeartbeat), maxHeartbeat)
		}
		return a.cfg.Heartbeat
	}
	send := func(trigger string) error {
		r := a.build(exp, trigger, &smi, func(fp, nvmlPath string) {
			smi.running = fp
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := a.checker.Deep(sctx, nvmlPath)
				select {
				case smiResult <- smiDone{fp: fp, res: res}:
				case <-sctx.Done():
				}
			}()
		})
		if trigger == TriggerChange && last != nil && sameReport(last, r) {
			return nil // nothing new
		}
		r.Seq = a.seq.Add(1)
		if err := st.Send(r); err != nil {
			return fmt.Errorf("send report: %w", err)
		}
		last = r
		heartbeat.Reset(interval())
		if a.cfg.OnReport != nil {
			a.cfg.OnReport(r)
		}
		return nil
	}
	for {
		select {
		case <-sctx.Done():
			return established, sctx.Err()
		case <-sess.Done():
			return established, wire.ErrClosed
		case err := <-recvErr:
			return established, fmt.Errorf("receive expectation: %w", err)
		case e := <-exps:
			trigger := TriggerChange
			if exp == nil {
				trigger = TriggerConnect
				established = true
				a.state("connected")
				a.cfg.Log.WithField("devices", len(e.GetDevices())).Info("connected to host agent")
			}
			exp = e
			a.lastExp = e
			if err := send(trigger); err != nil {
				return established, err
			}
		case <-changes:
			if exp != nil && !pending {
				pending = true
				debounce.Reset(a.cfg.Debounce)
			}
		case <-debounce.C:
			if wait := pace.take(time.Now()); wait > 0 {
				debounce.Reset(wait) // still pending: the latest state goes out then
				continue
			}
			pending = false
			if err := send(TriggerChange); err != nil {
				return established, err
			}
		case <-heartbeat.C:
			if err := send(TriggerHeartbeat); err != nil {
				return established, err
			}
		case d := <-smiResult:
			smi.running = ""
			smi.fp, smi.res = d.fp, d.res
			if err := send(TriggerChange); err != nil {
				return established, err
			}
		}
	}
}

// build makes one report for exp. When the fast checks pass and nvidia-smi exists, the
// deep check must have run in the same state (the fingerprint); otherwise startSmi is
// asked to run it and the report says it is running.
func (a *Agent) build(exp *pb.Expectation, trigger string, smi *smiCache, startSmi func(fp, nvmlPath string)) *pb.GuestReport {
	c := &a.checker
	r := c.Observe(exp)
	Assess(exp, r, false)
	if r.Ready {
		if _, ok := c.Paths.withDefaults().FindSmi(); ok {
			fp := fingerprint(exp, r)
			if smi.fp == fp && smi.res != nil {
				r.Smi = smi.res
				Assess(exp, r, false)
			} else {
				if smi.running == "" {
					startSmi(fp, r.GetDriver().GetUserspacePath())
				}
				Assess(exp, r, true)
			}
		}
	}
	r.ContainerId = a.cfg.ContainerID
	r.BootId = a.cfg.BootID
	r.AgentBuild = a.cfg.Build
	r.Trigger = trigger
	r.TimeUnixNano = time.Now().UnixNano()
	return r
}

// fingerprint names the state an nvidia-smi result is valid for: the devices, the
// driver versions and the assigned GPUs.
func fingerprint(exp *pb.Expectation, r *pb.GuestReport) string {
	var b strings.Builder
	for _, d := range r.GetDevices() {
		fmt.Fprintf(&b, "%s=%d:%d:%d;", d.GetPath(), d.GetStatus(), d.GetMajor(), d.GetMinor())
	}
	fmt.Fprintf(&b, "k=%s;u=%s;", r.GetDriver().GetKernel(), r.GetDriver().GetUserspace())
	for _, g := range exp.GetGpus() {
		b.WriteString(g.GetUuid() + ";")
	}
	return b.String()
}

// sameReport compares two reports without their sequence number, time and trigger.
func sameReport(a, b *pb.GuestReport) bool {
	a, b = proto.CloneOf(a), proto.CloneOf(b)
	for _, r := range []*pb.GuestReport{a, b} {
		r.Seq, r.TimeUnixNano, r.Trigger = 0, 0, ""
		if r.Smi != nil {
			r.Smi.DurationMs = 0
		}
	}
	return proto.Equal(a, b)
}

// dialledConn is a connection whose RemoteAddr is the path dialled (a unix socket's peer
// address is the path the server bound, which is the host's path, not the container's).
type dialledConn struct {
	net.Conn
	addr net.Addr
}

func (c dialledConn) RemoteAddr() net.Addr { return c.addr }

// dialFirst connects to the first of the sockets that answers and returns the first
// socket's error when none does (the others are fallbacks, their absence is normal).
func dialFirst(ctx context.Context, sockets []string) (net.Conn, error) {
	d := net.Dialer{Timeout: dialTimeout}
	var first error
	var also []string
	for _, s := range sockets {
		c, err := d.DialContext(ctx, "unix", s)
		if err == nil {
			return dialledConn{Conn: c, addr: &net.UnixAddr{Name: s, Net: "unix"}}, nil
		}
		if first == nil {
			first = err
		} else {
			also = append(also, err.Error())
		}
		if ctx.Err() != nil {
			break
		}
	}
	if len(also) > 0 {
		return nil, fmt.Errorf("%w (then %s)", first, strings.Join(also, "; "))
	}
	return nil, first
}
