package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"google.golang.org/protobuf/proto"

	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

const (
	// Magic opens every Hello.
	Magic = "gpupass"
	// ProtocolVersion is bumped on a breaking change; additive fields need no bump.
	ProtocolVersion = 1

	defaultHelloTimeout = 5 * time.Second
	defaultMaxStreams   = 64
)

// Config configures one end of a session.
type Config struct {
	Role         pb.Role
	Build        string
	ContainerID  string // guest dialers: the container id claimed in Hello
	BootID       string // guest dialers
	MaxFrame     int    // default DefaultMaxFrame
	HelloTimeout time.Duration
	// MaxStreams bounds the streams the peer may have open at once on this side; more are
	// answered with RESOURCE_EXHAUSTED. Default 64.
	MaxStreams int
	Log        *log.Entry
	// Accept, on the accepting side, decides whether the peer may proceed; a non-nil error
	// refuses the session and its text is sent as the reason.
	Accept func(peer *pb.Hello, conn net.Conn) error
}

func (c Config) withDefaults() Config {
	if c.MaxFrame <= 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = defaultHelloTimeout
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = defaultMaxStreams
	}
	if c.Log == nil {
		c.Log = log.Discard()
	}
	return c
}

// yamuxConfig is built explicitly rather than trusting library defaults.
func yamuxConfig(c Config) *yamux.Config {
	return &yamux.Config{
		AcceptBacklog:          c.MaxStreams * 2,
		EnableKeepAlive:        true,
		KeepAliveInterval:      15 * time.Second,
		ConnectionWriteTimeout: 10 * time.Second,
		MaxStreamWindowSize:    256 * 1024,
		StreamOpenTimeout:      10 * time.Second,
		StreamCloseTimeout:     30 * time.Second,
		LogOutput:              io.Discard,
	}
}

// Session is a yamux session after a successful Hello.
type Session struct {
	cfg  Config
	mux  *Mux
	ys   *yamux.Session
	conn net.Conn
	peer *pb.Hello
	log  *log.Entry

	sem chan struct{}
	wg  sync.WaitGroup
}

// Client dials the handshake over conn as the initiating side and returns the session.
// mux serves streams the peer opens (nil: none).
func Client(ctx context.Context, conn net.Conn, cfg Config, mux *Mux) (*Session, error) {
	cfg = cfg.withDefaults()
	ys, err := yamux.Client(conn, yamuxConfig(cfg))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux client: %w", err)
	}
	s := newSession(cfg, mux, ys, conn)
	if err := s.clientHello(ctx); err != nil {
		ys.Close()
		return nil, err
	}
	return s, nil
}

// Server accepts the handshake over conn and returns the session. cfg.Accept may refuse.
func Server(ctx context.Context, conn net.Conn, cfg Config, mux *Mux) (*Session, error) {
	cfg = cfg.withDefaults()
	ys, err := yamux.Server(conn, yamuxConfig(cfg))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start yamux server: %w", err)
	}
	s := newSession(cfg, mux, ys, conn)
	if err := s.serverHello(ctx); err != nil {
		ys.Close()
		return nil, err
	}
	return s, nil
}

func newSession(cfg Config, mux *Mux, ys *yamux.Session, conn net.Conn) *Session {
	return &Session{cfg: cfg, mux: mux, ys: ys, conn: conn, log: cfg.Log, sem: make(chan struct{}, cfg.MaxStreams)}
}

func (s *Session) helloDeadline(ctx context.Context) time.Time {
	d := time.Now().Add(s.cfg.HelloTimeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

func (s *Session) clientHello(ctx context.Context) error {
	st, err := s.ys.OpenStream()
	if err != nil {
		return fmt.Errorf("open hello stream: %w", err)
	}
	defer st.Close()
	_ = st.SetDeadline(s.helloDeadline(ctx))
	hello := &pb.Hello{Magic: Magic, ProtocolVersion: ProtocolVersion, Role: s.cfg.Role, Build: s.cfg.Build,
		ContainerId: s.cfg.ContainerID, BootId: s.cfg.BootID}
	if err := WriteFrame(st, hello, s.cfg.MaxFrame); err != nil {
		return fmt.Errorf("send hello: %w", err)
	}
	var rep pb.HelloReply
	if err := ReadFrame(bufio.NewReader(st), &rep, s.cfg.MaxFrame); err != nil {
		return fmt.Errorf("read hello reply: %w", err)
	}
	if !rep.GetAccepted() {
		if rep.GetProtocolVersion() != ProtocolVersion {
			return fmt.Errorf("hello: %w: %s", ErrIncompatibleProtocol, rep.GetReason())
		}
		return fmt.Errorf("hello: %w: %s", ErrRefused, rep.GetReason())
	}
	if rep.GetProtocolVersion() != ProtocolVersion {
		return fmt.Errorf("hello: %w: peer speaks version %d, we speak %d", ErrIncompatibleProtocol, rep.GetProtocolVersion(), ProtocolVersion)
	}
	s.peer = &pb.Hello{Magic: Magic, ProtocolVersion: rep.GetProtocolVersion(), Role: rep.GetRole(), Build: rep.GetBuild()}
	return nil
}

func (s *Session) serverHello(ctx context.Context) error {
	dl := s.helloDeadline(ctx)
	actx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	// The deadline also bounds the connection's reads (cleared once the Hello is accepted):
	// a peer that stalls inside a yamux frame keeps yamux's receive loop in a read that
	// holds the stream's lock, which the stream accept below waits for whatever its
	// context says; without this, only yamux's keepalive (about 25 s) ended such a peer's
	// handshake (found by FuzzServerSession).
	_ = s.conn.SetReadDeadline(dl)
	st, err := s.ys.AcceptStreamWithContext(actx)
	if err != nil {
		return fmt.Errorf("accept hello stream: %w", err)
	}
	defer st.Close()
	_ = st.SetDeadline(dl)
	var hello pb.Hello
	if err := ReadFrame(bufio.NewReader(st), &hello, s.cfg.MaxFrame); err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	rep := &pb.HelloReply{Accepted: true, ProtocolVersion: ProtocolVersion, Build: s.cfg.Build, Role: s.cfg.Role}
	var refuse error
	switch {
	case hello.GetMagic() != Magic:
		refuse = fmt.Errorf("hello: %w: bad magic %q", ErrRefused, hello.GetMagic())
	case hello.GetProtocolVersion() != ProtocolVersion:
		refuse = fmt.Errorf("hello: %w: peer speaks version %d, we speak %d", ErrIncompatibleProtocol, hello.GetProtocolVersion(), ProtocolVersion)
	case s.cfg.Accept != nil:
		if err := s.cfg.Accept(&hello, s.conn); err != nil {
			refuse = fmt.Errorf("hello: %w: %w", ErrRefused, err)
		}
	}
	if refuse != nil {
		rep.Accepted = false
		rep.Reason = refuse.Error()
	}
	if err := WriteFrame(st, rep, s.cfg.MaxFrame); err != nil && refuse == nil {
		return fmt.Errorf("send hello reply: %w", err)
	}
	if refuse != nil {
		// Give the reply a moment to leave before the session is torn down.
		_ = st.Close()
		time.Sleep(10 * time.Millisecond)
		return refuse
	}
	_ = s.conn.SetReadDeadline(time.Time{})
	s.peer = &hello
	return nil
}

// Peer is the peer's Hello (on the dialing side: its role and build from the reply).
func (s *Session) Peer() *pb.Hello { return s.peer }

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.ys.CloseChan() }

// Close ends the session and waits for the handlers it started.
func (s *Session) Close() error {
	err := s.ys.Close()
	s.wg.Wait()
	return err
}

// NumStreams is the number of open streams (for metrics and tests).
func (s *Session) NumStreams() int { return s.ys.NumStreams() }

// Open starts a call: it opens a stream and sends the Call frame. ctx bounds the whole
// stream: when it ends the stream is closed.
func (s *Session) Open(ctx context.Context, method string) (*Stream, error) {
	if s.ys.IsClosed() {
		return nil, fmt.Errorf("open %s: %w", method, ErrClosed)
	}
	ys, err := s.ys.OpenStream()
	if err != nil {
		if errors.Is(err, yamux.ErrSessionShutdown) {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return nil, fmt.Errorf("open %s: %w", method, err)
	}
	st := newStream(ys, s.cfg.MaxFrame, method)
	st.watch(ctx)
	call := &pb.Call{Method: method}
	if d, ok := ctx.Deadline(); ok {
		call.DeadlineUnixNano = d.UnixNano()
	}
	// The Call frame goes out with the first request (or before the first read).
	if st.pending, err = AppendFrame(nil, call, s.cfg.MaxFrame); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// Call makes a unary call: one request, one reply.
func (s *Session) Call(ctx context.Context, method string, req, resp proto.Message) error {
	st, err := s.Open(ctx, method)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.Send(req); err != nil {
		return ctxErr(ctx, err)
	}
	if err := st.RecvReply(resp); err != nil {
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("call %s: %w: stream closed without a reply", method, io.ErrUnexpectedEOF)
		}
		return ctxErr(ctx, err)
	}
	return nil
}

func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w", cerr, err)
	}
	// The stream's I/O deadline is the context's and may fire a moment before ctx.Err().
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return err
}

// Serve runs handlers for the streams the peer opens until the session or ctx ends. It
// returns nil when the session closes normally.
func (s *Session) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.ys.Close() })
	defer stop()
	// Handlers' contexts end when the session does.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.ys.CloseChan():
			cancel()
		case <-ctx.Done():
		}
	}()
	defer s.wg.Wait()
	for {
		ys, err := s.ys.AcceptStream()
		if err != nil {
			if ctx.Err() != nil || s.ys.IsClosed() || errors.Is(err, yamux.ErrSessionShutdown) {
				return nil
			}
			return fmt.Errorf("accept stream: %w", err)
		}
		// A slot is taken here, in the order the peer opened its streams, not by whichever
		// handler goroutine runs first: a peer's first stream is served even when it opens
		// more than MaxStreams right after it (before, the race could refuse the first one).
		s.wg.Add(1)
		select {
		case s.sem <- struct{}{}:
			go func() {
				defer s.wg.Done()
				defer func() { <-s.sem }()
				s.serveStream(ctx, ys)
			}()
		default:
			go func() {
				defer s.wg.Done()
				st := newStream(ys, s.cfg.MaxFrame, "")
				defer st.Close()
				_ = st.Fail(Errorf(pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED, "too many open streams (limit %d)", s.cfg.MaxStreams))
			}()
		}
	}
}

// serveStream reads a stream's call and runs its handler; the caller holds a slot.
func (s *Session) serveStream(ctx context.Context, ys *yamux.Stream) {
	st := newStream(ys, s.cfg.MaxFrame, "")
	defer st.Close()
	_ = ys.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	var call pb.Call
	if err := st.Recv(&call); err != nil {
		if !errors.Is(err, io.EOF) {
			s.log.WithError(err).Debug("bad call frame")
			_ = st.Fail(err)
		}
		return
	}
	_ = ys.SetReadDeadline(time.Time{})
	st.method = call.GetMethod()
	h, ok := s.mux.lookup(call.GetMethod())
	if !ok {
		_ = st.Fail(errUnknownMethod(call.GetMethod()))
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st.cancel = cancel
	if call.GetDeadlineUnixNano() > 0 {
		var c2 context.CancelFunc
		hctx, c2 = context.WithDeadline(hctx, time.Unix(0, call.GetDeadlineUnixNano()))
		defer c2()
	}
	st.watch(hctx)
	if err := h(hctx, st); err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() == nil && !s.ys.IsClosed() {
			_ = st.Fail(err)
		}
	}
}
