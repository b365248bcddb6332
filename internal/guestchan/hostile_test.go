package guestchan

import (
	"bufio"
	"context"
	"crypto/rand"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// rawGuest is a guest below the wire package: a yamux session after an accepted Hello,
// with a guest.Session stream opened by hand, for frames the wire package would not send.
type rawGuest struct {
	ys *yamux.Session
	st *yamux.Stream
}

func dialRaw(t *testing.T, sock string, pid int32) *rawGuest {
	t.Helper()
	conn, err := dialAs(sock, pid)
	if err != nil {
		t.Fatal(err)
	}
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	ys, err := yamux.Client(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ys.Close() })
	hs, err := ys.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	hello := &pb.Hello{Magic: wire.Magic, ProtocolVersion: wire.ProtocolVersion, Role: pb.Role_ROLE_GUEST_AGENT}
	if err := wire.WriteFrame(hs, hello, 0); err != nil {
		t.Fatal(err)
	}
	var rep pb.HelloReply
	if err := wire.ReadFrame(bufio.NewReader(hs), &rep, 0); err != nil || !rep.GetAccepted() {
		t.Fatalf("raw hello: %v, %v", err, rep.GetReason())
	}
	hs.Close()
	st, err := ys.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	if err := wire.WriteFrame(st, &pb.Call{Method: Method}, 0); err != nil {
		t.Fatal(err)
	}
	return &rawGuest{ys: ys, st: st}
}

// closedWithin reports whether the session ends within d.
func (g *rawGuest) closedWithin(d time.Duration) bool {
	select {
	case <-g.ys.CloseChan():
		return true
	case <-time.After(d):
		return false
	}
}

// replyError reads Reply frames until an Error one and returns its code.
func (g *rawGuest) replyError(t *testing.T) pb.ErrorCode {
	t.Helper()
	_ = g.st.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(g.st)
	for {
		var rep pb.Reply
		if err := wire.ReadFrame(br, &rep, 0); err != nil {
			t.Fatalf("no error frame: %v", err)
		}
		if e := rep.GetError(); e != nil {
			return e.GetCode()
		}
	}
}

// heartbeat keeps g reporting every interval until the test ends; it returns the number
// of reports sent so far.
func heartbeat(t *testing.T, g *testGuest, every time.Duration) func() uint64 {
	var sent atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			n := sent.Add(1)
			if g.st.Send(&pb.GuestReport{Seq: n, Ready: true, Trigger: "heartbeat"}) != nil {
				return
			}
			select {
			case <-tk.C:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
	return sent.Load
}

// TestHostileGuests: hostile peers on container 901's socket are refused or limited, and a
// guest of 902 reporting meanwhile is unaffected; afterwards a good guest of 901 connects.
func TestHostileGuests(t *testing.T) {
	const (
		maxBytes   = 4096
		rate       = 50
		burst      = 10
		idle       = 600 * time.Millisecond
		helloLimit = 300 * time.Millisecond
	)
	tests := []struct {
		name string
		run  func(t *testing.T, f *fixture, sock string)
	}{
		{"garbage bytes instead of a session", func(t *testing.T, f *fixture, sock string) {
			conn, err := dialAs(sock, f.procs.inContainer("901"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			junk := make([]byte, 4096)
			_, _ = rand.Read(junk)
			_, _ = conn.Write(junk)
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Errorf("connection not closed by the host: %v", err)
			}
		}},
		{"silent peer that never says hello", func(t *testing.T, f *fixture, sock string) {
			conn, err := dialAs(sock, f.procs.inContainer("901"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Errorf("connection not closed by the host: %v", err)
			}
			if d := time.Since(start); d < helloLimit/2 {
				t.Errorf("closed after %v, before the hello timeout", d)
			}
		}},
		{"oversized frame", func(t *testing.T, f *fixture, sock string) {
			g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{})
			g.expectation(t)
			// The host may close the session before the whole frame is written: ignore
			// the send's error, the answer is what counts.
			_ = g.st.Send(&pb.GuestReport{Warnings: []string{strings.Repeat("x", 2*maxBytes)}})
			select {
			case err := <-g.recvErr:
				if wire.CodeOf(err) != pb.ErrorCode_ERROR_CODE_FRAME_TOO_LARGE {
					t.Errorf("guest got %v, want FRAME_TOO_LARGE", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no error for an oversized frame")
			}
			select {
			case <-g.sess.Done():
			case <-time.After(5 * time.Second):
				t.Error("session open after an oversized frame")
			}
			if s, _ := f.r.Latest("901"); s.Report != nil {
				t.Error("the oversized report was stored")
			}
		}},
		{"malformed frame", func(t *testing.T, f *fixture, sock string) {
			g := dialRaw(t, sock, f.procs.inContainer("901"))
			_, _ = g.st.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
			if code := g.replyError(t); code != pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME {
				t.Errorf("error code %v, want MALFORMED_FRAME", code)
			}
			if !g.closedWithin(5 * time.Second) {
				t.Error("session open after a malformed frame")
			}
		}},
		{"undecodable report", func(t *testing.T, f *fixture, sock string) {
			g := dialRaw(t, sock, f.procs.inContainer("901"))
			_, _ = g.st.Write([]byte{3, 0x0a, 0x05, 'a'}) // field 1 claims 5 bytes, has 1
			if code := g.replyError(t); code != pb.ErrorCode_ERROR_CODE_MALFORMED_FRAME {
				t.Errorf("error code %v, want MALFORMED_FRAME", code)
			}
		}},
		{"flood of streams", func(t *testing.T, f *fixture, sock string) {
			g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{})
			g.expectation(t)
			var wg sync.WaitGroup
			var payloads, failures atomic.Int32
			for range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					defer cancel()
					st, err := g.sess.Open(ctx, Method)
					if err != nil {
						failures.Add(1)
						return
					}
					defer st.Close()
					if err := st.RecvReply(&pb.Expectation{}); err != nil {
						failures.Add(1)
					} else {
						payloads.Add(1)
					}
				}()
			}
			wg.Wait()
			if payloads.Load() != 0 || failures.Load() != 40 {
				t.Errorf("extra streams: %d served, %d refused; want 0 and 40", payloads.Load(), failures.Load())
			}
			// The first stream still works both ways.
			f.r.SetExpectation("901", gpuExpectation(1))
			if e := g.expectation(t); e.GetDevices()[0].GetMinor() != 1 {
				t.Errorf("expectation after the flood: %v", e)
			}
			g.report(t, &pb.GuestReport{Ready: true})
			f.waitFor("901", "report after the flood", seqIs(1))
		}},
		{"streams that never send a call", func(t *testing.T, f *fixture, sock string) {
			g := dialRaw(t, sock, f.procs.inContainer("901"))
			for range 40 {
				st, err := g.ys.OpenStream()
				if err != nil {
					break
				}
				defer st.Close()
			}
			// The guest.Session stream opened first is served regardless.
			if err := wire.WriteFrame(g.st, &pb.GuestReport{Seq: 7}, 0); err != nil {
				t.Fatal(err)
			}
			f.waitFor("901", "report", seqIs(7))
		}},
		{"report flood", func(t *testing.T, f *fixture, sock string) {
			g := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{})
			g.expectation(t)
			start := time.Now()
			const n = 300
			for range n {
				g.report(t, &pb.GuestReport{Ready: true})
			}
			time.Sleep(time.Second / rate) // a token for the marker
			g.report(t, &pb.GuestReport{Ready: true})
			s := f.waitFor("901", "the last report", seqIs(n+1))
			accepted := n + 1 - s.Dropped
			allowed := burst + uint64(rate*time.Since(start).Seconds()) + 1
			t.Logf("%d reports in %v: %d accepted, %d dropped", n+1, time.Since(start), accepted, s.Dropped)
			if s.Dropped == 0 || accepted > allowed {
				t.Errorf("%d accepted, %d dropped; want drops and at most %d accepted", accepted, s.Dropped, allowed)
			}
			if !s.Connected {
				t.Error("the flooding guest was disconnected, want only its excess dropped")
			}
		}},
		{"slow sender", func(t *testing.T, f *fixture, sock string) {
			g := dialRaw(t, sock, f.procs.inContainer("901"))
			_, _ = g.st.Write([]byte{100, 0x50}) // a 100-byte frame, then a trickle
			start := time.Now()
			for range 40 {
				if _, err := g.st.Write([]byte{0x01}); err != nil {
					break
				}
				if g.closedWithin(50 * time.Millisecond) {
					break
				}
			}
			if !g.closedWithin(3 * idle) {
				t.Fatal("a trickling sender kept its session past the idle timeout")
			}
			if d := time.Since(start); d < idle/2 {
				t.Errorf("closed after %v, before the idle timeout %v", d, idle)
			}
			if s, _ := f.r.Latest("901"); s.Report != nil {
				t.Error("a partial frame was stored")
			}
		}},
		{"guest that never reads", func(t *testing.T, f *fixture, sock string) {
			g := dialRaw(t, sock, f.procs.inContainer("901"))
			for i := range 300 {
				f.r.SetExpectation("901", gpuExpectation(uint32(i%10), 1, 2, 3, 4, 5, 6, 7, 8))
				time.Sleep(200 * time.Microsecond)
			}
			if err := wire.WriteFrame(g.st, &pb.GuestReport{Seq: 9}, 0); err != nil {
				t.Fatal(err)
			}
			f.waitFor("901", "report of the non-reader", seqIs(9))
		}},
		{"session flood", func(t *testing.T, f *fixture, sock string) {
			var ok []*testGuest
			var refused int
			for range 6 {
				g, err := connectGuest(t, sock, f.procs.inContainer("901"), guestOpts{})
				switch {
				case err == nil:
					ok = append(ok, g)
				case isRefused(err, "too many sessions for container 901"):
					refused++
				default:
					t.Errorf("connect: %v", err)
				}
			}
			if len(ok) != 2 || refused != 4 {
				t.Errorf("%d sessions accepted, %d refused; want 2 and 4", len(ok), refused)
			}
			for _, g := range ok {
				g.close()
			}
			f.waitFor("901", "the flood to end", func(s Snapshot) bool { return s.Sessions == 0 })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			noLeaks(t)
			cfg := testConfig(t)
			cfg.MaxReportBytes = maxBytes
			cfg.ReportRate, cfg.ReportBurst = rate, burst
			cfg.MaxSessionsPerContainer = 2
			cfg.HelloTimeout = helloLimit
			cfg.IdleTimeout = idle
			f := start(t, cfg)
			sock := f.ensure("901")
			sock902 := f.ensure("902")
			f.r.SetExpectation("901", gpuExpectation(0))
			f.r.SetExpectation("902", gpuExpectation(1))
			by := mustGuest(t, sock902, f.procs.inContainer("902"), guestOpts{})
			by.expectation(t)
			sent := heartbeat(t, by, 25*time.Millisecond)

			tt.run(t, f, sock)

			// The bystander kept reporting throughout, and still is.
			n := sent()
			s := f.waitFor("902", "the bystander's next reports", func(s Snapshot) bool { return s.Report.GetSeq() >= n+2 })
			if !s.Connected || s.Dropped != 0 || s.Sessions != 1 {
				t.Errorf("bystander 902: %+v, want connected, nothing dropped", s)
			}
			// A good guest of 901 still gets in (the limit is two sessions: the hostile
			// one, if still open, and this one).
			good := mustGuest(t, sock, f.procs.inContainer("901"), guestOpts{claim: "901"})
			good.expectation(t)
			time.Sleep(time.Second / rate) // the hostile peer may have spent the container's tokens
			if err := good.st.Send(&pb.GuestReport{Seq: 1000, Ready: true}); err != nil {
				t.Fatal(err)
			}
			f.waitFor("901", "the good guest's report", seqIs(1000))
		})
	}
}
