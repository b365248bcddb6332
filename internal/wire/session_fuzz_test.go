package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	pb "gpupass/proto/gpupass/v1"
)

// replayConn is the accepting side's connection in FuzzServerSession: reads return the
// fuzzed bytes, then block until release (or Close, or the read deadline), then EOF;
// writes are discarded. The wait lets the server act on everything it read before the
// peer's end of stream tears the session down; the deadline is honoured as a socket's is.
type replayConn struct {
	r       *bytes.Reader
	once    sync.Once
	done    chan struct{}
	release chan struct{}

	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{} // closed when the deadline changes
}

func newReplayConn(data []byte) *replayConn {
	return &replayConn{r: bytes.NewReader(data), done: make(chan struct{}), release: make(chan struct{}), wake: make(chan struct{})}
}

func (c *replayConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		dl, wake := c.deadline, c.wake
		c.mu.Unlock()
		var timer <-chan time.Time
		if !dl.IsZero() {
			if time.Until(dl) <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(time.Until(dl))
			defer t.Stop()
			timer = t.C
		}
		if c.r.Len() > 0 {
			return c.r.Read(p)
		}
		select {
		case <-c.release:
			return 0, io.EOF
		case <-c.done:
			return 0, io.EOF
		case <-timer:
			return 0, os.ErrDeadlineExceeded
		case <-wake:
		}
	}
}

func (c *replayConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.wake)
	c.wake = make(chan struct{})
	return nil
}

func (c *replayConn) Write(p []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
		return len(p), nil
	}
}
func (c *replayConn) Close() error                     { c.once.Do(func() { close(c.done) }); return nil }
func (c *replayConn) LocalAddr() net.Addr              { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
func (c *replayConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz-peer", Net: "unix"} }
func (c *replayConn) SetDeadline(t time.Time) error    { return c.SetReadDeadline(t) }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }

// recordConn records what a real client writes.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.buf.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *recordConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf.Bytes()...)
}

// fuzzMux is what the fuzzed server serves: one unary method.
func fuzzMux() *Mux {
	m := NewMux()
	HandleUnary(m, "fuzz.Echo", func(_ context.Context, req *pb.Hello) (*pb.Hello, error) {
		if req.GetBuild() == "fail" {
			return nil, Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "failing as asked")
		}
		return req, nil
	})
	return m
}

// recordClient runs a real client against a real server over a pipe and returns the bytes
// the client sent: the yamux session, the Hello, and calls.
func recordClient(f *testing.F, role pb.Role, calls ...*pb.Hello) []byte {
	f.Helper()
	a, b := net.Pipe()
	rec := &recordConn{Conn: a}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		s, err := Server(ctx, b, Config{Role: pb.Role_ROLE_HOST_AGENT}, fuzzMux())
		if err != nil {
			return
		}
		_ = s.Serve(ctx)
	}()
	c, err := Client(ctx, rec, Config{Role: role, Build: "seed", ContainerID: "901"}, nil)
	if err == nil {
		for _, m := range calls {
			_ = c.Call(ctx, "fuzz.Echo", m, &pb.Hello{})
		}
		c.Close()
	}
	b.Close()
	<-srvDone
	return rec.bytes()
}

// FuzzServerSession feeds arbitrary bytes to the accepting side of a session, as a
// hostile peer on a guest socket or a (certified) controller could send them: yamux
// framing, the Hello, call frames and bodies. It must end cleanly with the input, never
// panic and never hang.
func FuzzServerSession(f *testing.F) {
	f.Add(recordClient(f, pb.Role_ROLE_CONTROLLER, &pb.Hello{Build: "x"}, &pb.Hello{Build: "fail"}))
	f.Add(recordClient(f, pb.Role_ROLE_GUEST_AGENT))
	f.Add(recordClient(f, pb.Role_ROLE_UNSPECIFIED))
	f.Add([]byte{})
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}) // a yamux SYN for stream 1
	f.Fuzz(func(t *testing.T, data []byte) {
		conn := newReplayConn(data)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		accept := func(peer *pb.Hello, _ net.Conn) error {
			if peer.GetRole() != pb.Role_ROLE_CONTROLLER {
				return errors.New("controllers only")
			}
			return nil
		}
		s, err := Server(ctx, conn, Config{Role: pb.Role_ROLE_HOST_AGENT, HelloTimeout: 20 * time.Millisecond, MaxFrame: 1 << 16, MaxStreams: 4, Accept: accept}, fuzzMux())
		if err != nil {
			close(conn.release)
		} else {
			if s.Peer().GetRole() != pb.Role_ROLE_CONTROLLER || s.Peer().GetMagic() != Magic {
				t.Fatalf("accepted a Hello the server must refuse: %v", s.Peer())
			}
			served := make(chan error, 1)
			go func() { served <- s.Serve(ctx) }()
			// Let the handlers finish the streams the input opened, then end the input.
			for deadline := time.Now().Add(200 * time.Millisecond); s.NumStreams() > 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			close(conn.release)
			if err := <-served; err != nil {
				t.Logf("serve: %v", err)
			}
			s.Close()
		}
		if ctx.Err() != nil {
			t.Fatalf("the session outlived its input by 5s (err %v)", err)
		}
	})
}
