// Package guesttest is a tiny in-process host agent for guest agent tests: it listens on
// a unix socket, accepts guest sessions with internal/wire, hands out an expectation and
// collects the reports guests push.
package guesttest

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// Method is the guest session stream (guest.Method; repeated here to keep this package
// free of the code under test).
const Method = "guest.Session"

// Report is a report as the host received it.
type Report struct {
	*pb.GuestReport
	At time.Time // when the host held it
}

// Host is the host side of guest sessions.
type Host struct {
	Socket  string
	Reports chan Report // every report received, in order (buffered; full means dropped)

	t   testing.TB
	log *log.Entry

	mu       sync.Mutex
	exp      *pb.Expectation
	ln       net.Listener
	sessions map[*wire.Session]struct{}
	streams  map[*wire.Stream]struct{}
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	hellos   []*pb.Hello
}

// Hellos returns the Hello of every session accepted so far.
func (h *Host) Hellos() []*pb.Hello {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*pb.Hello(nil), h.hellos...)
}

// NewHost listens on socket and serves until the test ends.
func NewHost(t testing.TB, socket string, exp *pb.Expectation) *Host {
	t.Helper()
	h := &Host{Socket: socket, Reports: make(chan Report, 4096), t: t, log: log.ForTest(t, "fakehost"), exp: exp,
		sessions: map[*wire.Session]struct{}{}, streams: map[*wire.Stream]struct{}{}}
	h.Start()
	t.Cleanup(h.Stop)
	return h
}

// Start listens again after Stop (the socket file is re-created, as a restarted host
// agent does).
func (h *Host) Start() {
	h.t.Helper()
	_ = os.Remove(h.Socket)
	ln, err := net.Listen("unix", h.Socket)
	if err != nil {
		h.t.Fatalf("guesttest: listen %s: %v", h.Socket, err)
	}
	// Guests of unprivileged containers connect as a mapped uid.
	if err := os.Chmod(h.Socket, 0o666); err != nil {
		h.t.Fatalf("guesttest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.mu.Lock()
	h.ln, h.cancel = ln, cancel
	h.mu.Unlock()
	mux := wire.NewMux()
	mux.Handle(Method, h.serveGuest)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			h.wg.Add(1)
			go func() {
				defer h.wg.Done()
				sess, err := wire.Server(ctx, conn, wire.Config{Role: pb.Role_ROLE_HOST_AGENT, Build: "guesttest", Log: h.log}, mux)
				if err != nil {
					conn.Close()
					return
				}
				h.mu.Lock()
				h.sessions[sess] = struct{}{}
				h.hellos = append(h.hellos, sess.Peer())
				h.mu.Unlock()
				_ = sess.Serve(ctx)
				sess.Close()
				h.mu.Lock()
				delete(h.sessions, sess)
				h.mu.Unlock()
			}()
		}
	}()
}

// Stop closes the listener and every session, like a host agent going away, and removes
// the socket file.
func (h *Host) Stop() {
	h.mu.Lock()
	ln, cancel := h.ln, h.cancel
	h.ln, h.cancel = nil, nil
	sessions := make([]*wire.Session, 0, len(h.sessions))
	for s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.mu.Unlock()
	if ln == nil {
		return
	}
	ln.Close()
	cancel()
	for _, s := range sessions {
		s.Close()
	}
	h.wg.Wait()
	_ = os.Remove(h.Socket)
}

// SetExpectation changes the expectation and sends it to every connected guest.
func (h *Host) SetExpectation(exp *pb.Expectation) {
	h.mu.Lock()
	h.exp = exp
	streams := make([]*wire.Stream, 0, len(h.streams))
	for s := range h.streams {
		streams = append(streams, s)
	}
	h.mu.Unlock()
	for _, s := range streams {
		_ = s.Reply(exp)
	}
}

func (h *Host) serveGuest(ctx context.Context, st *wire.Stream) error {
	h.mu.Lock()
	exp := h.exp
	h.streams[st] = struct{}{}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.streams, st)
		h.mu.Unlock()
	}()
	if err := st.Reply(exp); err != nil {
		return err
	}
	for {
		r := &pb.GuestReport{}
		if err := st.Recv(r); err != nil {
			return err
		}
		select {
		case h.Reports <- Report{GuestReport: r, At: time.Now()}:
		default: // full: the report is dropped
		}
	}
}

// ErrTimeout is returned by Wait when no matching report came in time.
var ErrTimeout = errors.New("no matching report in time")

// Wait returns the next report for which match is true (nil match: any), skipping others.
func (h *Host) Wait(timeout time.Duration, match func(*pb.GuestReport) bool) (Report, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case r := <-h.Reports:
			if match == nil || match(r.GuestReport) {
				return r, nil
			}
		case <-t.C:
			return Report{}, ErrTimeout
		}
	}
}
