package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"gpupass/internal/buildinfo"
	"gpupass/internal/fleet"
	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// Defaults.
const (
	DefaultTimeout  = 10 * time.Second // per host: connect, TLS, Hello and one call
	DefaultParallel = 512              // hosts asked at once by plan, status and doctor
)

// Wire method names of the host agent.
const (
	MethodInventory = "host.Inventory"
	MethodPlan      = "host.Plan"
	MethodApply     = "host.Apply"
	MethodStatus    = "host.Status"
	MethodWatch     = "host.Watch"
)

// ErrUnknownContainer is returned by Doctor for a host/id the fleet does not name.
var ErrUnknownContainer = errors.New("unknown container")

// Options configure a Controller.
type Options struct {
	Fleet *fleet.Fleet
	// TLS is the client configuration (pki.ClientTLS); ServerName is set per host.
	TLS *tls.Config
	// Timeout bounds each host's connect + TLS + Hello + call for plan, status and doctor,
	// and the connect for apply and watch. Default DefaultTimeout.
	Timeout time.Duration
	// Parallel bounds how many hosts plan, status and doctor ask at once. Default
	// DefaultParallel.
	Parallel int
	Log      *log.Entry
	// Dial opens the TCP connection (default: net.Dialer). Tests and benchmarks may wrap it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Controller asks the fleet's host agents.
type Controller struct {
	opts Options
	log  *log.Entry
}

// New returns a Controller.
func New(opts Options) *Controller {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.Log == nil {
		opts.Log = log.Discard()
	}
	if opts.Dial == nil {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		opts.Dial = d.DialContext
	}
	return &Controller{opts: opts, log: opts.Log}
}

// conn is one host session; close it when done.
type conn struct {
	*wire.Session
	stop func() bool
}

func (c *conn) close() {
	c.stop()
	_ = c.Session.Close()
}

// stageError says how far a host got before it failed.
type stageError struct {
	stage, addr string
	err         error
}

func (e *stageError) Error() string {
	return fmt.Sprintf("%s %s: %v", e.stage, e.addr, e.err)
}

func (e *stageError) Unwrap() error { return e.err }

// connect opens the mTLS + yamux session to h. ctx bounds the whole session's life: when
// it ends the connection is closed, so a host that stops answering at any stage never
// holds a caller past its deadline.
func (c *Controller) connect(ctx context.Context, h fleet.Host) (*conn, error) {
	raw, err := c.opts.Dial(ctx, "tcp", h.Address)
	if err != nil {
		return nil, &stageError{"connect to", h.Address, err}
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	fail := func(stage string, err error) (*conn, error) {
		stop()
		raw.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return nil, &stageError{stage, h.Address, err}
	}
	cfg := c.opts.TLS.Clone()
	cfg.ServerName = h.ServerName
	if cfg.ClientSessionCache != nil {
		// crypto/tls keys sessions by server name only; hosts sharing a name or IP (one
		// machine, several ports) must not overwrite each other's tickets.
		cfg.ClientSessionCache = hostSessions{cfg.ClientSessionCache, h.Address}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail("TLS handshake with", err)
	}
	s, err := wire.Client(ctx, tc, wire.Config{Role: pb.Role_ROLE_CONTROLLER, Build: buildinfo.Version, Log: c.log}, nil)
	if err != nil {
		return fail("hello to", err)
	}
	return &conn{Session: s, stop: stop}, nil
}

// describe turns a host failure into the reason shown to the user.
func describe(h fleet.Host, err error, timeout time.Duration) string {
	var se *stageError
	stage := ""
	if errors.As(err, &se) {
		stage = se.stage + " " + se.addr
	}
	switch {
	case errors.Is(err, context.Canceled):
		return "interrupted before " + h.Name + " answered (a host agent finishes or rolls back an apply on its own; gpupass status shows the outcome)"
	case (errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err)) && stage == "":
		return fmt.Sprintf("no answer from %s within %s; is the host up and gpupass-host-agent running?", h.Address, timeout)
	case errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err):
		return fmt.Sprintf("no answer within %s (%s timed out); is the host up and gpupass-host-agent running?", timeout, stage)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused by %s: gpupass-host-agent is not listening there", h.Address)
	case errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH):
		return fmt.Sprintf("%s is unreachable: %v", h.Address, err)
	}
	var ve *tls.CertificateVerificationError
	if errors.As(err, &ve) {
		return fmt.Sprintf("%v (is the host certificate issued by the fleet CA for %q? gpupass pki issue --name %s --ip/--dns ...)", err, h.ServerName, h.Name)
	}
	return err.Error()
}

// eachHost runs fn for every host, at most limit at once. fn records its own outcome.
func eachHost(ctx context.Context, hosts []fleet.Host, limit int, fn func(ctx context.Context, i int, h fleet.Host)) {
	var g errgroup.Group
	g.SetLimit(limit)
	for i, h := range hosts {
		g.Go(func() error {
			fn(ctx, i, h)
			return nil
		})
	}
	_ = g.Wait()
}

// hostSessions scopes a shared TLS session cache to one host address.
type hostSessions struct {
	tls.ClientSessionCache
	addr string
}

func (h hostSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return h.ClientSessionCache.Get(h.addr + " " + key)
}

func (h hostSessions) Put(key string, cs *tls.ClientSessionState) {
	h.ClientSessionCache.Put(h.addr+" "+key, cs)
}
