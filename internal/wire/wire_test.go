package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// transport makes a connected pair of net.Conns.
type transport struct {
	name string
	pair func(t testing.TB) (client, server net.Conn)
}

func transports() []transport {
	return []transport{
		{"pipe", func(t testing.TB) (net.Conn, net.Conn) {
			a, b := net.Pipe()
			return a, b
		}},
		{"unix", unixPair},
	}
}

func unixPair(t testing.TB) (net.Conn, net.Conn) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		ch <- c
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	if s == nil {
		t.Fatal("accept failed")
	}
	return c, s
}

type pair struct {
	client, server *Session
	served         chan error
}

// connect runs the handshake on both ends; the server side serves srvMux, the client
// side cliMux.
func connect(t *testing.T, tr transport, srvCfg, cliCfg Config, srvMux, cliMux *Mux) (*pair, error) {
	t.Helper()
	cc, sc := tr.pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := Server(ctx, sc, srvCfg, srvMux)
		ch <- res{s, err}
	}()
	cs, cerr := Client(ctx, cc, cliCfg, cliMux)
	r := <-ch
	if cerr != nil || r.err != nil {
		if cs != nil {
			cs.Close()
		}
		if r.s != nil {
			r.s.Close()
		}
		cc.Close()
		sc.Close()
		return nil, errors.Join(cerr, r.err)
	}
	p := &pair{client: cs, server: r.s, served: make(chan error, 2)}
	sctx, scancel := context.WithCancel(context.Background())
	go func() { p.served <- r.s.Serve(sctx) }()
	go func() { p.served <- cs.Serve(sctx) }()
	t.Cleanup(func() {
		scancel()
		cs.Close()
		r.s.Close()
		<-p.served
		<-p.served
	})
	return p, nil
}

func echoMux() *Mux {
	m := NewMux()
	HandleUnary(m, "test.Echo", func(ctx context.Context, req *pb.Call) (*pb.Call, error) {
		return &pb.Call{Method: "echo:" + req.GetMethod()}, nil
	})
	HandleUnary(m, "test.Fail", func(ctx context.Context, req *pb.Call) (*pb.Call, error) {
		return nil, Errorf(pb.ErrorCode_ERROR_CODE_NOT_FOUND, "container %q not found", req.GetMethod())
	})
	HandleUnary(m, "test.Block", func(ctx context.Context, req *pb.Call) (*pb.Call, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	})
	HandleServerStream(m, "test.Count", func(ctx context.Context, req *pb.Call, s *Stream) error {
		for i := 0; i < 3; i++ {
			if err := s.Reply(&pb.Call{Method: strings.Repeat("x", i)}); err != nil {
				return err
			}
		}
		return nil
	})
	return m
}

func cfgs(t *testing.T) (srv, cli Config) {
	return Config{Role: pb.Role_ROLE_HOST_AGENT, Build: "test", Log: log.ForTest(t, "server")},
		Config{Role: pb.Role_ROLE_CONTROLLER, Build: "test", Log: log.ForTest(t, "client")}
}

func TestRoundTrip(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			srv, cli := cfgs(t)
			p, err := connect(t, tr, srv, cli, echoMux(), nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			var resp pb.Call
			if err := p.client.Call(ctx, "test.Echo", &pb.Call{Method: "hi"}, &resp); err != nil {
				t.Fatal(err)
			}
			if got, want := resp.GetMethod(), "echo:hi"; got != want {
				t.Errorf("echo = %q, want %q", got, want)
			}
			if got, want := p.server.Peer().GetRole(), pb.Role_ROLE_CONTROLLER; got != want {
				t.Errorf("server sees role %v, want %v", got, want)
			}
			err = p.client.Call(ctx, "test.Fail", &pb.Call{Method: "901"}, &resp)
			if CodeOf(err) != pb.ErrorCode_ERROR_CODE_NOT_FOUND || !strings.Contains(err.Error(), `"901"`) {
				t.Errorf("Fail: err = %v, want NOT_FOUND naming 901", err)
			}
			err = p.client.Call(ctx, "test.Nope", &pb.Call{}, &resp)
			if CodeOf(err) != pb.ErrorCode_ERROR_CODE_UNKNOWN_METHOD {
				t.Errorf("unknown method: err = %v, want UNKNOWN_METHOD", err)
			}
			// A stream with several replies.
			st, err := p.client.Open(ctx, "test.Count")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if err := st.Send(&pb.Call{}); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				var r pb.Call
				if err := st.RecvReply(&r); err != nil {
					t.Fatalf("reply %d: %v", i, err)
				}
				if len(r.GetMethod()) != i {
					t.Errorf("reply %d = %q", i, r.GetMethod())
				}
			}
		})
	}
}

func TestEitherSideOpensStreams(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			srv, cli := cfgs(t)
			p, err := connect(t, tr, srv, cli, echoMux(), echoMux())
			if err != nil {
				t.Fatal(err)
			}
			var resp pb.Call
			if err := p.server.Call(context.Background(), "test.Echo", &pb.Call{Method: "from-server"}, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.GetMethod() != "echo:from-server" {
				t.Errorf("got %q", resp.GetMethod())
			}
		})
	}
}

func TestHelloRefusals(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(srv, cli *Config)
		wantErr error
		wantMsg string
	}{
		{
			name: "accept callback refuses",
			mutate: func(srv, cli *Config) {
				srv.Accept = func(*pb.Hello, net.Conn) error { return errors.New("container 902 may not claim 901") }
			},
			wantErr: ErrRefused,
			wantMsg: "container 902 may not claim 901",
		},
	}
	for _, tr := range transports() {
		for _, tc := range tests {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				srv, cli := cfgs(t)
				tc.mutate(&srv, &cli)
				_, err := connect(t, tr, srv, cli, echoMux(), nil)
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.wantErr, tc.wantMsg)
				}
			})
		}
	}
}

// writeRawHello speaks the handshake by hand with a chosen version.
func TestWrongProtocolVersion(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name+"/old-client", func(t *testing.T) {
			cc, sc := tr.pair(t)
			srv, _ := cfgs(t)
			errc := make(chan error, 1)
			go func() {
				s, err := Server(context.Background(), sc, srv, nil)
				if s != nil {
					s.Close()
				}
				errc <- err
			}()
			rep, err := rawHello(cc, &pb.Hello{Magic: Magic, ProtocolVersion: ProtocolVersion + 1, Role: pb.Role_ROLE_CONTROLLER})
			if err != nil {
				t.Fatal(err)
			}
			if rep.GetAccepted() || !strings.Contains(rep.GetReason(), "version") {
				t.Errorf("client side: reply %v, want refusal naming the version", rep)
			}
			if err := <-errc; !errors.Is(err, ErrIncompatibleProtocol) {
				t.Errorf("server side: err = %v, want ErrIncompatibleProtocol", err)
			}
		})
		t.Run(tr.name+"/old-server", func(t *testing.T) {
			cc, sc := tr.pair(t)
			_, cli := cfgs(t)
			go rawServerHello(sc, &pb.HelloReply{Accepted: true, ProtocolVersion: ProtocolVersion + 1})
			_, err := Client(context.Background(), cc, cli, nil)
			if !errors.Is(err, ErrIncompatibleProtocol) {
				t.Errorf("client: err = %v, want ErrIncompatibleProtocol", err)
			}
		})
	}
}

func TestHelloTimeout(t *testing.T) {
	cc, sc := unixPair(t)
	defer cc.Close()
	srv, _ := cfgs(t)
	srv.HelloTimeout = 100 * time.Millisecond
	start := time.Now()
	_, err := Server(context.Background(), sc, srv, nil)
	if err == nil {
		t.Fatal("server accepted a silent peer")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("hello timeout took %v", d)
	}
}

func TestMalformedFrames(t *testing.T) {
	huge := binary.AppendUvarint(nil, DefaultMaxFrame+1)
	tests := []struct {
		name     string
		bytes    []byte
		halfOpen bool // close our write side after the bytes (truncation)
		wantCode pb.ErrorCode
	}{
		{"oversized", huge, false, pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE},
		{"garbage body", append(binary.AppendUvarint(nil, 4), 0xff, 0xff, 0xff, 0xff), false, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME},
		{"bad varint", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, false, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME},
		{"truncated", append(binary.AppendUvarint(nil, 100), []byte("short")...), true, pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME},
	}
	for _, tr := range transports() {
		for _, tc := range tests {
			t.Run(tr.name+"/"+tc.name, func(t *testing.T) {
				srv, cli := cfgs(t)
				p, err := connect(t, tr, srv, cli, echoMux(), nil)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				st, err := p.client.Open(ctx, "test.Echo")
				if err != nil {
					t.Fatal(err)
				}
				if err := st.flush(); err != nil { // the Call frame first: the bad frame is the request
					t.Fatal(err)
				}
				if _, err := st.conn.Write(tc.bytes); err != nil {
					t.Fatal(err)
				}
				if tc.halfOpen {
					// yamux Close is a half close: the callee sees EOF mid-frame.
					st.conn.Close()
				}
				var r pb.Call
				err = st.RecvReply(&r)
				if tc.halfOpen {
					// Our side is closed for reading too; only the session's health matters.
					err = nil
				} else if CodeOf(err) != tc.wantCode {
					t.Errorf("err = %v, want code %v", err, tc.wantCode)
				}
				st.Close()
				// The session survives: a normal call still works.
				if err := p.client.Call(ctx, "test.Echo", &pb.Call{Method: "after"}, &r); err != nil {
					t.Fatalf("call after bad frame: %v", err)
				}
			})
		}
	}
}

func TestPeerVanishesMidCall(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			srv, cli := cfgs(t)
			p, err := connect(t, tr, srv, cli, echoMux(), nil)
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() {
				var r pb.Call
				errc <- p.client.Call(context.Background(), "test.Block", &pb.Call{}, &r)
			}()
			time.Sleep(50 * time.Millisecond)
			p.server.conn.Close()
			select {
			case err := <-errc:
				if err == nil {
					t.Fatal("call succeeded after the peer vanished")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("call hung after the peer vanished")
			}
		})
	}
}

func TestCancellation(t *testing.T) {
	for _, tr := range transports() {
		t.Run(tr.name, func(t *testing.T) {
			srv, cli := cfgs(t)
			handlerDone := make(chan struct{})
			var once sync.Once
			m := echoMux()
			HandleUnary(m, "test.Block", func(ctx context.Context, req *pb.Call) (*pb.Call, error) {
				<-ctx.Done()
				once.Do(func() { close(handlerDone) })
				return nil, ctx.Err()
			})
			p, err := connect(t, tr, srv, cli, m, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() {
				var r pb.Call
				errc <- p.client.Call(ctx, "test.Block", &pb.Call{}, &r)
			}()
			time.Sleep(50 * time.Millisecond)
			cancel()
			select {
			case err := <-errc:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("err = %v, want context.Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("cancelled call did not return")
			}
			select {
			case <-handlerDone:
			case <-time.After(5 * time.Second):
				t.Fatal("the callee's handler was not cancelled when the caller went away")
			}
			// Deadlines travel in the Call frame too.
			dctx, dcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer dcancel()
			var r pb.Call
			if err := p.client.Call(dctx, "test.Block", &pb.Call{}, &r); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("deadline: err = %v, want DeadlineExceeded", err)
			}
		})
	}
}

func TestStreamLimit(t *testing.T) {
	srv, cli := cfgs(t)
	srv.MaxStreams = 2
	p, err := connect(t, transports()[1], srv, cli, echoMux(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < 2; i++ {
		st, err := p.client.Open(ctx, "test.Block")
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
	}
	time.Sleep(50 * time.Millisecond)
	var r pb.Call
	err = p.client.Call(ctx, "test.Echo", &pb.Call{}, &r)
	if CodeOf(err) != pb.ErrorCode_ERROR_CODE_RESOURCE_EXHAUSTED {
		t.Errorf("third stream: err = %v, want RESOURCE_EXHAUSTED", err)
	}
}

// Slots go to streams in the order the peer opened them: a stream opened first is served
// even when the peer opens many more at once right after it (the slot was once taken by
// whichever handler goroutine ran first, and the first stream could be refused).
func TestStreamLimitInOpenOrder(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for round := 0; round < 20; round++ {
		srv, cli := cfgs(t)
		srv.MaxStreams = 2
		p, err := connect(t, transports()[1], srv, cli, echoMux(), nil)
		if err != nil {
			t.Fatal(err)
		}
		first, err := p.client.Open(ctx, "test.Echo")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			st, err := p.client.Open(ctx, "test.Block")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
		}
		if err := first.Send(&pb.Call{Method: "ping"}); err != nil {
			t.Fatal(err)
		}
		var r pb.Call
		if err := first.RecvReply(&r); err != nil || r.GetMethod() != "echo:ping" {
			t.Fatalf("round %d: the first stream: %v %v, want its echo (it was opened before the others)", round, err, &r)
		}
		first.Close()
	}
}
