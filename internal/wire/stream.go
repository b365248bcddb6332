package wire

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	pb "gpupass/proto/gpupass/v1"
)

// Stream is one call on a session: the caller sends a Call frame and request frames, the
// callee answers with Reply frames. Either side may be the opener.
type Stream struct {
	conn     net.Conn
	r        *bufio.Reader
	max      int
	method   string
	wmu      sync.Mutex
	stopOnce sync.Once
	stop     chan struct{}
	cancel   context.CancelFunc // callee side: cancels the handler's context
	pending  []byte             // caller side: the Call frame, sent with the first request
}

func newStream(conn net.Conn, max int, method string) *Stream {
	return &Stream{conn: conn, r: bufio.NewReaderSize(conn, 512), max: max, method: method, stop: make(chan struct{})}
}

// watch closes the stream when ctx ends before Close is called.
func (s *Stream) watch(ctx context.Context) {
	if ctx.Done() == nil {
		return
	}
	if d, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(d)
	}
	go func() {
		select {
		case <-ctx.Done():
			_ = s.conn.SetDeadline(time.Now())
			_ = s.conn.Close()
		case <-s.stop:
		}
	}()
}

// CancelOnPeerClose, on the callee side, cancels the handler's context when the caller
// closes its end or goes away. Use it after the last frame the caller is meant to send
// (unary and server-streaming calls do it for you).
func (s *Stream) CancelOnPeerClose() {
	if s.cancel == nil {
		return
	}
	go func() {
		var b [1]byte
		_, _ = s.r.Read(b[:])
		s.cancel()
	}()
}

// Send writes one raw frame (after the Call frame, when that is still pending: one write
// carries both, which saves a yamux frame and a wake-up of the callee per call).
func (s *Stream) Send(m proto.Message) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	buf, err := AppendFrame(s.pending, m, s.max)
	s.pending = nil
	if err != nil {
		return fmt.Errorf("send %s: %w", s.method, err)
	}
	if _, err := s.conn.Write(buf); err != nil {
		return fmt.Errorf("send %s: %w", s.method, err)
	}
	return nil
}

// flush sends a pending Call frame.
func (s *Stream) flush() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.pending == nil {
		return nil
	}
	buf := s.pending
	s.pending = nil
	if _, err := s.conn.Write(buf); err != nil {
		return fmt.Errorf("send %s: %w", s.method, err)
	}
	return nil
}

// Recv reads one raw frame.
func (s *Stream) Recv(m proto.Message) error {
	if err := s.flush(); err != nil {
		return err
	}
	return ReadFrame(s.r, m, s.max)
}

// Reply sends m wrapped in a Reply frame (callee side).
func (s *Stream) Reply(m proto.Message) error {
	body, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("marshal reply: %w", err)
	}
	return s.Send(&pb.Reply{Body: &pb.Reply_Payload{Payload: body}})
}

// Fail sends err as an Error frame (callee side); the stream should then be closed.
func (s *Stream) Fail(err error) error {
	return s.Send(&pb.Reply{Body: &pb.Reply_Error{Error: toPB(err)}})
}

// RecvReply reads one Reply frame into m (caller side). An Error frame is returned as
// *Error; io.EOF means the callee closed the stream without more replies.
func (s *Stream) RecvReply(m proto.Message) error {
	var rep pb.Reply
	if err := s.Recv(&rep); err != nil {
		return err
	}
	switch b := rep.Body.(type) {
	case *pb.Reply_Error:
		return &Error{Code: b.Error.GetCode(), Message: b.Error.GetMessage()}
	case *pb.Reply_Payload:
		if err := proto.Unmarshal(b.Payload, m); err != nil {
			return fmt.Errorf("decode reply to %s: %w: %w", s.method, ErrMalformedFrame, err)
		}
		return nil
	default:
		return fmt.Errorf("reply to %s: %w: empty reply", s.method, ErrMalformedFrame)
	}
}

// Close ends the stream.
func (s *Stream) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	err := s.conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
