package guestchan

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

const (
	// SocketName is the socket's file name in each container's directory.
	SocketName = "agent.sock"
	// GuestDir is where the directory is mounted inside the container (under /dev: no
	// init mounts over it; systemd and OpenRC mount a tmpfs on /run at boot).
	GuestDir = "/dev/gpupass"
	// LegacyGuestDir is where it was mounted before; containers started with the old
	// mount entry may still have it there.
	LegacyGuestDir = "/run/gpupass"
	// Method is the stream a guest opens: it sends GuestReport frames, the host answers with
	// Reply{Expectation} frames, the first at once and a new one on every change.
	Method = "guest.Session"

	defaultHeartbeat      = 10 * time.Second
	defaultMaxReportBytes = 256 << 10
	defaultReportRate     = 20
	defaultMaxSessions    = 4
	defaultHelloTimeout   = 5 * time.Second
	// maxStreams bounds the streams a guest may have open at once on one session.
	maxStreams = 4
	// logEvery is how often one kind of refusal or drop is logged per container.
	logEvery = time.Minute
)

// ErrRunning is returned by Run while another Run is active.
var ErrRunning = errors.New("registry already running")

// Config configures a Registry. Zero fields take the defaults named.
type Config struct {
	// Dir holds one subdirectory per container: <Dir>/<id>/agent.sock (guest_socket_dir,
	// e.g. /run/gpupass/guests).
	Dir string
	// ProcRoot is where /proc/<pid>/cgroup is read ("/" in production, the default).
	ProcRoot string
	// Heartbeat is the guest heartbeat the host expects (default 10s); sent to guests as
	// Expectation.heartbeat_interval_ms.
	Heartbeat time.Duration
	// StaleAfter: a guest with no report for this long is stale (default 3*Heartbeat).
	StaleAfter time.Duration
	// IdleTimeout closes a session that has sent no report for this long (default
	// 2*StaleAfter), so that a silent or stalled peer does not hold a session slot.
	IdleTimeout time.Duration
	// MaxReportBytes caps every frame of a guest session (default 256 KiB).
	MaxReportBytes int
	// ReportRate is the reports per second accepted per container (default 20), with
	// ReportBurst saved up (default 2*ReportRate). Excess reports are dropped and counted.
	ReportRate  float64
	ReportBurst int
	// MaxSessionsPerContainer bounds concurrent sessions per container (default 4); more
	// are refused with a reason.
	MaxSessionsPerContainer int
	// HelloTimeout bounds the handshake (default 5s).
	HelloTimeout time.Duration
	Log          *log.Entry
	Build        string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// PeerPID returns the connecting process's PID (default PeerCredPID: SO_PEERCRED).
	// Tests replace it to simulate several processes from one.
	PeerPID func(conn *net.UnixConn) (int32, error)
	// PeerCgroup returns the contents of /proc/<pid>/cgroup for pid (default: read it
	// under ProcRoot).
	PeerCgroup func(pid int32) (string, error)
	// PeerRoot checks, after PeerCgroup, that the peer is its container's root user and
	// still the process pid names (default RootPeer(ProcRoot): SO_PEERPIDFD, SO_PEERCRED,
	// the peer's uid_map and namespaces); accepted is when the connection was accepted.
	// Tests that simulate pids replace it.
	PeerRoot func(conn *net.UnixConn, pid int32, accepted time.Time) error
	// PeerGeneration returns the generation of the container the accepted peer pid runs in
	// (default ContainerInit(ProcRoot, pid)); every report of the session carries it. An
	// error leaves it unknown (zero). Tests that simulate containers replace it.
	PeerGeneration func(pid int32) (Generation, error)
}

func (c Config) withDefaults() Config {
	if c.ProcRoot == "" {
		c.ProcRoot = "/"
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = defaultHeartbeat
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = 3 * c.Heartbeat
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 2 * c.StaleAfter
	}
	if c.MaxReportBytes <= 0 {
		c.MaxReportBytes = defaultMaxReportBytes
	}
	if c.ReportRate <= 0 {
		c.ReportRate = defaultReportRate
	}
	if c.ReportBurst <= 0 {
		c.ReportBurst = max(1, int(2*c.ReportRate))
	}
	if c.MaxSessionsPerContainer <= 0 {
		c.MaxSessionsPerContainer = defaultMaxSessions
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = defaultHelloTimeout
	}
	if c.Log == nil {
		c.Log = log.Discard()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.PeerPID == nil {
		c.PeerPID = PeerCredPID
	}
	if c.PeerCgroup == nil {
		root := c.ProcRoot
		c.PeerCgroup = func(pid int32) (string, error) { return readProcCgroup(root, pid) }
	}
	if c.PeerRoot == nil {
		c.PeerRoot = RootPeer(c.ProcRoot)
	}
	if c.PeerGeneration == nil {
		root := c.ProcRoot
		c.PeerGeneration = func(pid int32) (Generation, error) { return ContainerInit(root, pid) }
	}
	return c
}

// Snapshot is what the registry knows about one container's guest.
type Snapshot struct {
	// Report is the latest accepted report, its container_id stamped from the identity;
	// nil before the first. It is shared: treat it as read-only.
	Report *pb.GuestReport
	// At is when Report was received (the registry's clock).
	At time.Time
	// Connected says at least one guest session is established.
	Connected bool
	// Stale says a guest was seen but has sent no report for StaleAfter (counted from the
	// latest report or, when it sent none since, from the session's start).
	Stale bool
	// Sessions is the number of established sessions.
	Sessions int
	// BootID is the guest's boot id (from its Hello or latest report).
	BootID string
	// Dropped counts reports dropped by the rate limit.
	Dropped uint64
	// Refused is why the latest guest of this container was refused in its handshake
	// (identity, role, too many sessions), at RefusedAt; "" when none was, or when a guest
	// was accepted since.
	Refused   string
	RefusedAt time.Time
	// Generation is the container generation of the session that sent Report (zero when
	// it could not be read): the host agent accepts for readiness only a report of the
	// container's current generation.
	Generation Generation
}

// Event tells a subscriber that a container's snapshot changed.
type Event struct {
	ID       string
	Snapshot Snapshot
	// Removed says the container was removed (Snapshot is its last state).
	Removed bool
	// Missed counts the events this subscriber lost (its buffer was full) since the one
	// before; when non-zero, resynchronise with IDs and Latest.
	Missed uint64
}

// Registry owns the guest sockets of all containers and what their guests report.
type Registry struct {
	cfg     Config
	log     *log.Entry
	limiter *log.Limiter

	ensureMu   sync.Mutex // serialises Ensure and Remove (file system work outside mu)
	mu         sync.Mutex
	containers map[string]*container
	subs       map[*subscriber]struct{}
	runCtx     context.Context // non-nil while Run is active
	wg         sync.WaitGroup  // every goroutine the registry starts
}

// container is one container's socket and state; guarded by Registry.mu.
type container struct {
	id, dir string
	ln      *net.UnixListener
	cancel  context.CancelFunc // ends the accept loop and sessions; nil when not serving
	done    *sync.WaitGroup    // the goroutines serving ln

	handshakes int // accepted connections still in their Hello
	reserved   int // sessions past the identity check (slots)
	sessions   int // established sessions

	exp   *pb.Expectation
	expCh chan struct{} // closed when exp changes

	report  *pb.GuestReport
	gen     Generation // of the session that sent report
	at      time.Time
	seen    time.Time // latest report or session start: staleness counts from here
	bootID  string
	stale   bool // staleness as last announced
	dropped uint64
	limit   *rate.Limiter // reports accepted (ReportRate, ReportBurst)

	refusal   string    // why the latest refused guest was refused ("" none since the last accept)
	refusedAt time.Time // when

	changed chan struct{} // closed on every change (Wait)
	removed bool
}

type subscriber struct {
	ch     chan Event
	missed uint64
}

// New returns a registry. It listens on nothing until Ensure.
func New(cfg Config) *Registry {
	cfg = cfg.withDefaults()
	return &Registry{
		cfg:        cfg,
		log:        cfg.Log,
		limiter:    log.NewLimiter(logEvery),
		containers: map[string]*container{},
		subs:       map[*subscriber]struct{}{},
	}
}

// lookupOrAdd returns the record of id, creating it. Caller holds r.mu.
func (r *Registry) lookupOrAdd(id string) *container {
	c := r.containers[id]
	if c == nil {
		c = &container{
			id:      id,
			expCh:   make(chan struct{}),
			changed: make(chan struct{}),
			limit:   rate.NewLimiter(rate.Limit(r.cfg.ReportRate), r.cfg.ReportBurst),
		}
		r.containers[id] = c
	}
	return c
}

// Run serves every ensured socket (and those ensured later) until ctx ends, then closes
// the listeners (removing the socket files) and sessions and waits for every goroutine it
// started. The registry keeps its state; a later Run serves only what is ensured again.
func (r *Registry) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.runCtx != nil {
		r.mu.Unlock()
		return fmt.Errorf("run guest channel: %w", ErrRunning)
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.runCtx = runCtx
	for _, c := range r.containers {
		if c.ln != nil {
			r.serveLocked(c)
		}
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.staleLoop(runCtx)
	}()
	r.mu.Unlock()

	<-runCtx.Done()

	r.mu.Lock()
	r.runCtx = nil
	var waits []*sync.WaitGroup
	for _, c := range r.containers {
		if w := r.stopLocked(c); w != nil {
			waits = append(waits, w)
		}
	}
	r.mu.Unlock()
	for _, w := range waits {
		w.Wait()
	}
	r.wg.Wait()
	return nil
}

// serveLocked starts the accept loop of c. Caller holds r.mu, Run is active, c.ln is set.
func (r *Registry) serveLocked(c *container) {
	ctx, cancel := context.WithCancel(r.runCtx)
	c.cancel = cancel
	done := &sync.WaitGroup{}
	c.done = done
	ln := c.ln
	r.wg.Add(1)
	done.Add(1)
	go func() {
		defer r.wg.Done()
		defer done.Done()
		r.acceptLoop(ctx, c, ln, done)
	}()
}

// stopLocked closes c's listener (removing the socket file) and ends its sessions; it
// returns what to wait for. Caller holds r.mu.
func (r *Registry) stopLocked(c *container) *sync.WaitGroup {
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	if c.ln != nil {
		_ = c.ln.Close() // unlinks the socket file
		c.ln = nil
	}
	w := c.done
	c.done = nil
	return w
}

// Remove stops listening for id, removes its socket, closes its sessions, forgets its
// state (expectation and report included) and waits for its goroutines. The directory
// stays: it may still be the source of a running container's bind mount.
func (r *Registry) Remove(id string) {
	r.ensureMu.Lock()
	r.mu.Lock()
	c := r.containers[id]
	if c == nil {
		r.mu.Unlock()
		r.ensureMu.Unlock()
		return
	}
	delete(r.containers, id)
	w := r.stopLocked(c)
	c.removed = true
	r.changedLocked(c, true)
	r.mu.Unlock()
	r.ensureMu.Unlock()
	if w != nil {
		w.Wait()
	}
}

// IDs returns the known container ids (ensured, or given an expectation), sorted.
func (r *Registry) IDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(maps.Keys(r.containers))
}

// SetExpectation stores what the guest of id must check and pushes it at once to its
// connected guests. The registry keeps its own copy, with container_id and
// heartbeat_interval_ms filled in. A nil exp clears it (nothing is pushed).
func (r *Registry) SetExpectation(id string, exp *pb.Expectation) {
	if exp != nil {
		exp = proto.Clone(exp).(*pb.Expectation)
		exp.ContainerId = id
		exp.HeartbeatIntervalMs = r.cfg.Heartbeat.Milliseconds()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupOrAdd(id)
	c.exp = exp
	close(c.expCh)
	c.expCh = make(chan struct{})
}

// Expectation returns the stored expectation of id (shared: read-only), nil if none.
func (r *Registry) Expectation(id string) *pb.Expectation {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c := r.containers[id]; c != nil {
		return c.exp
	}
	return nil
}

// Latest returns the snapshot of id; ok is false for an unknown id.
func (r *Registry) Latest(id string) (Snapshot, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.containers[id]
	if c == nil {
		return Snapshot{}, false
	}
	return r.snapshotLocked(c, r.cfg.Now()), true
}

// Wait blocks until a snapshot of id satisfies pred: the current one, or one after a later
// change (a report, a connection or disconnection, staleness). It returns the latest
// snapshot and ctx.Err() when ctx ends first, and ErrUnknownContainer when id is unknown
// or removed meanwhile. pred runs without the registry's lock held.
func (r *Registry) Wait(ctx context.Context, id string, pred func(Snapshot) bool) (Snapshot, error) {
	for {
		r.mu.Lock()
		c := r.containers[id]
		if c == nil {
			r.mu.Unlock()
			return Snapshot{}, fmt.Errorf("wait for guest of container %s: %w", id, ErrUnknownContainer)
		}
		snap, ch := r.snapshotLocked(c, r.cfg.Now()), c.changed
		r.mu.Unlock()
		if pred(snap) {
			return snap, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return snap, ctx.Err()
		}
	}
}

// Subscribe returns a channel of events with buf slots, and a function that ends the
// subscription and closes the channel. Events are sent on connect and disconnect, on
// every accepted report that changes readiness, reasons, warnings, devices, driver,
// network or boot id, when a guest goes stale or fresh again, and on Remove. A subscriber
// that does not keep up loses events rather than slowing the registry: the next event it
// gets counts them in Missed.
func (r *Registry) Subscribe(buf int) (<-chan Event, func()) {
	s := &subscriber{ch: make(chan Event, max(buf, 0))}
	r.mu.Lock()
	r.subs[s] = struct{}{}
	r.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			r.mu.Lock()
			delete(r.subs, s)
			close(s.ch)
			r.mu.Unlock()
		})
	}
}

func (r *Registry) snapshotLocked(c *container, now time.Time) Snapshot {
	return Snapshot{
		Report:     c.report,
		At:         c.at,
		Connected:  c.sessions > 0,
		Stale:      r.isStale(c, now),
		Sessions:   c.sessions,
		BootID:     c.bootID,
		Dropped:    c.dropped,
		Refused:    c.refusal,
		RefusedAt:  c.refusedAt,
		Generation: c.gen,
	}
}

func (r *Registry) isStale(c *container, now time.Time) bool {
	return !c.seen.IsZero() && now.Sub(c.seen) >= r.cfg.StaleAfter
}

// changedLocked wakes the waiters of c and, when event is set, tells the subscribers.
// Caller holds r.mu.
func (r *Registry) changedLocked(c *container, event bool) {
	close(c.changed)
	c.changed = make(chan struct{})
	if !event || len(r.subs) == 0 {
		return
	}
	ev := Event{ID: c.id, Snapshot: r.snapshotLocked(c, r.cfg.Now()), Removed: c.removed}
	for s := range r.subs {
		ev.Missed = s.missed
		select {
		case s.ch <- ev:
			s.missed = 0
		default:
			s.missed++
		}
	}
}

// staleLoop announces guests going stale. One ticker serves all containers; Latest and
// Wait compute staleness from the clock, so the tick only bounds how late the event is.
func (r *Registry) staleLoop(ctx context.Context) {
	t := time.NewTicker(min(max(r.cfg.StaleAfter/10, 5*time.Millisecond), time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		now := r.cfg.Now()
		for _, c := range r.containers {
			if s := r.isStale(c, now); s != c.stale {
				c.stale = s
				r.changedLocked(c, true)
			}
		}
		r.mu.Unlock()
	}
}
