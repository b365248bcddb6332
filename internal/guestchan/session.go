package guestchan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// refusal is why a peer was refused in its Hello; kind keys the log limiter.
type refusal struct {
	kind string
	err  error
}

func (e *refusal) Error() string { return e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

// errIdle ends a session that sent no report for IdleTimeout.
var errIdle = errors.New("guest idle")

// guestSession is one established (or handshaking) connection of a guest.
type guestSession struct {
	end    context.CancelFunc // ends the session
	idle   *time.Timer        // ends the session when no report comes for IdleTimeout
	active atomic.Bool        // a guest.Session stream is open
	gen    Generation         // the container generation the peer was accepted from
}

// identify reads the peer's PID and cgroup right after the accept, before the handshake,
// so that the PID cannot have been reused by the time it is checked.
func (r *Registry) identify(conn *net.UnixConn, accepted time.Time) peerIdentity {
	pid, err := r.cfg.PeerPID(conn)
	if err != nil {
		return peerIdentity{err: err}
	}
	content, err := r.cfg.PeerCgroup(pid)
	if err != nil {
		return peerIdentity{pid: pid, err: err}
	}
	path, ok := UnifiedCgroup(content)
	if !ok {
		return peerIdentity{pid: pid, err: fmt.Errorf("cgroup of pid %d has no cgroup v2 (0::) line", pid)}
	}
	// Last: the user check also proves (through the pidfd) that the process read above is
	// still the peer.
	if err := r.cfg.PeerRoot(conn, pid, accepted); err != nil {
		return peerIdentity{pid: pid, cgroup: path, err: err}
	}
	gen, err := r.cfg.PeerGeneration(pid)
	if err != nil {
		r.log.WithField("pid", pid).WithError(err).Debug("generation of the guest's container unknown")
	}
	return peerIdentity{pid: pid, cgroup: path, gen: gen}
}

// handleConn runs one connection: identity, Hello, then the session until it ends.
func (r *Registry) handleConn(ctx context.Context, c *container, conn *net.UnixConn, accepted time.Time) {
	ctx, cancelIdle := context.WithCancelCause(ctx)
	cancel := func() { cancelIdle(context.Canceled) }
	defer cancel()
	// Closing the connection is what unblocks every read and write of the session.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	peer := r.identify(conn, accepted)
	lg := r.log.WithField("container", c.id).WithField("pid", peer.pid)
	reserved, established := false, false
	defer func() { r.connDone(c, reserved, established) }()

	gs := &guestSession{end: cancel, gen: peer.gen}
	mux := wire.NewMux()
	mux.Handle(Method, func(hctx context.Context, st *wire.Stream) error {
		return r.serveGuest(hctx, c, gs, st)
	})
	cfg := wire.Config{
		Role:         pb.Role_ROLE_HOST_AGENT,
		Build:        r.cfg.Build,
		MaxFrame:     r.cfg.MaxReportBytes,
		HelloTimeout: r.cfg.HelloTimeout,
		MaxStreams:   maxStreams,
		Log:          lg,
		Accept: func(h *pb.Hello, _ net.Conn) error {
			// Remembered before the peer hears the refusal, so that status already says it.
			ref, otherClaim := checkPeer(c.id, h, peer)
			if ref != nil {
				r.refused(c, ref)
				return ref
			}
			if otherClaim {
				lg.WithField("claim", h.GetContainerId()).Debug("guest calls itself by another name (its hostname): identity is from the kernel")
			}
			if err := r.reserve(c); err != nil {
				ref := &refusal{kind: "sessions", err: err}
				r.refused(c, ref)
				return ref
			}
			reserved = true
			return nil
		},
	}
	sess, err := wire.Server(ctx, conn, cfg, mux)
	r.handshakeDone(c)
	if err != nil {
		var ref *refusal
		switch {
		case errors.As(err, &ref):
			r.logOnce(c.id, "refused-"+ref.kind, func() {
				lg.WithField("cgroup", peer.cgroup).WithField("reason", ref.Error()).Warn("guest refused")
			})
		case ctx.Err() != nil:
		default:
			r.logOnce(c.id, "handshake", func() { lg.WithError(err).Warn("guest handshake failed") })
		}
		return
	}
	defer sess.Close()
	hello := sess.Peer()
	established = true
	r.sessionUp(c, hello)
	lg.WithField("build", hello.GetBuild()).Info("guest connected")
	defer lg.Info("guest disconnected")

	gs.idle = time.AfterFunc(r.cfg.IdleTimeout, func() { cancelIdle(errIdle) })
	defer gs.idle.Stop()
	if err := sess.Serve(ctx); err != nil && ctx.Err() == nil {
		lg.WithError(err).Debug("guest session ended")
	}
	if errors.Is(context.Cause(ctx), errIdle) {
		r.logOnce(c.id, "idle", func() {
			lg.WithField("idle_timeout", r.cfg.IdleTimeout).Warn("guest sent no report within the idle timeout: closed its session")
		})
	}
}

// reserve takes a session slot of c.
func (r *Registry) reserve(c *container) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.removed {
		return fmt.Errorf("container %s is being removed", c.id)
	}
	if c.reserved >= r.cfg.MaxSessionsPerContainer {
		return fmt.Errorf("too many sessions for container %s (limit %d): one guest agent per container is enough", c.id, r.cfg.MaxSessionsPerContainer)
	}
	c.reserved++
	return nil
}

// refused remembers the latest refusal of a guest of c, for status and doctor.
func (r *Registry) refused(c *container, ref *refusal) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.refusal, c.refusedAt = ref.Error(), r.cfg.Now()
	if !c.removed {
		r.changedLocked(c, true)
	}
}

func (r *Registry) sessionUp(c *container, hello *pb.Hello) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.sessions++
	if c.removed {
		return
	}
	c.refusal, c.refusedAt = "", time.Time{} // a guest got in: an older refusal is history
	c.seen = r.cfg.Now()
	c.stale = false
	if b := hello.GetBootId(); b != "" {
		c.bootID = clip(b)
	}
	r.changedLocked(c, true)
}

func (r *Registry) handshakeDone(c *container) {
	r.mu.Lock()
	c.handshakes--
	r.mu.Unlock()
}

func (r *Registry) connDone(c *container, reserved, established bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if reserved {
		c.reserved--
	}
	if established {
		c.sessions--
		if !c.removed {
			r.changedLocked(c, true)
		}
	}
}

// serveGuest serves the guest.Session stream: the expectation goes out at once and again
// on every change, while the guest's reports come in. When the stream ends, so does the
// session.
func (r *Registry) serveGuest(ctx context.Context, c *container, gs *guestSession, st *wire.Stream) error {
	if !gs.active.CompareAndSwap(false, true) {
		return wire.Errorf(pb.ErrorCode_ERROR_CODE_CONFLICT, "a %s stream is already open on this session", Method)
	}
	defer gs.end()
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.pushExpectations(pctx, c, st, gs.end)
	}()
	err := r.receiveReports(ctx, c, gs, st)
	pcancel()
	if err != nil {
		r.logOnce(c.id, "frame", func() {
			r.log.WithField("container", c.id).WithError(err).Warn("bad frame from guest: closing its session")
		})
		// The pusher may hold the stream's write lock, blocked on a guest that does not
		// read: give the error a moment, then close the stream under it.
		failed := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(failed)
			_ = st.Fail(err)
		}()
		select {
		case <-failed:
		case <-time.After(time.Second):
		}
	}
	_ = st.Close()
	wg.Wait()
	return nil
}

// pushExpectations sends c's expectation whenever it differs from the one sent last. A
// failed send ends the session.
func (r *Registry) pushExpectations(ctx context.Context, c *container, st *wire.Stream, end func()) {
	var sent *pb.Expectation
	for {
		r.mu.Lock()
		exp, ch := c.exp, c.expCh
		r.mu.Unlock()
		if exp != nil && exp != sent {
			if err := st.Reply(exp); err != nil {
				if ctx.Err() == nil {
					// A guest that cannot get its expectation is no use connected.
					r.logOnce(c.id, "push", func() {
						r.log.WithField("container", c.id).WithError(err).Warn("push expectation to guest failed: closing its session")
					})
					end()
				}
				return
			}
			sent = exp
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// receiveReports reads reports until the stream ends. A clean end is nil; a bad frame is
// the error to answer with.
func (r *Registry) receiveReports(ctx context.Context, c *container, gs *guestSession, st *wire.Stream) error {
	for {
		rep := &pb.GuestReport{}
		if err := st.Recv(rep); err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// The guest's own call deadline (e.g. --once) ends its stream: not a bad frame.
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		gs.idle.Reset(r.cfg.IdleTimeout)
		if !r.acceptReport(c, gs.gen, rep) {
			r.logOnce(c.id, "rate", func() {
				r.log.WithField("container", c.id).WithField("rate", r.cfg.ReportRate).WithField("burst", r.cfg.ReportBurst).
					Warn("guest reports faster than allowed: dropping the excess")
			})
		}
	}
}

// acceptReport stores rep as c's latest unless the rate limit drops it.
func (r *Registry) acceptReport(c *container, gen Generation, rep *pb.GuestReport) bool {
	rep.ContainerId = c.id // the identity, never the guest's word
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.removed {
		return true // its session is closing; nobody reads this record any more
	}
	now := r.cfg.Now()
	if !c.limit.AllowN(now, 1) {
		c.dropped++
		return false
	}
	significant := c.report == nil || c.stale || c.gen != gen || reportChanged(c.report, rep)
	c.report, c.gen, c.at, c.seen, c.stale = rep, gen, now, now, false
	if b := rep.GetBootId(); b != "" {
		c.bootID = clip(b)
	}
	r.changedLocked(c, significant)
	return true
}

// reportChanged says whether b differs from a in what readers act on (not seq, time or
// trigger).
func reportChanged(a, b *pb.GuestReport) bool {
	if a.GetReady() != b.GetReady() || a.GetBootId() != b.GetBootId() ||
		!slices.Equal(a.GetReasons(), b.GetReasons()) || !slices.Equal(a.GetWarnings(), b.GetWarnings()) ||
		a.GetNetwork().GetOk() != b.GetNetwork().GetOk() || !proto.Equal(a.GetDriver(), b.GetDriver()) ||
		len(a.GetDevices()) != len(b.GetDevices()) {
		return true
	}
	for i, d := range a.GetDevices() {
		if !proto.Equal(d, b.GetDevices()[i]) {
			return true
		}
	}
	return false
}

// maxBootID bounds the boot id kept from a guest (a UUID has 36 characters).
const maxBootID = 128

func clip(s string) string {
	if len(s) > maxBootID {
		return s[:maxBootID]
	}
	return s
}
