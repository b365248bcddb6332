package hostagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pki"
	"gpupass/internal/readiness"
	"gpupass/internal/runner"
	"gpupass/internal/runtime"
)

// Service is the whole daemon: guest registry, controller listener, metrics, systemd.
type Service struct {
	Config *hostconfig.Config
	Log    *log.Entry
	Runner runner.Runner
	// Runtime overrides the runtime built from Config (tests).
	Runtime runtime.Runtime
	// Listener overrides the TLS listener built from Config (tests, socket activation).
	Listener net.Listener
	// Ready, when set, is called once the agent is serving (after READY=1).
	Ready func(addr net.Addr, a *Agent)
}

// NewRuntime builds the configured runtime.
func NewRuntime(cfg *hostconfig.Config, r runner.Runner) (runtime.Runtime, error) {
	switch cfg.Runtime {
	case hostconfig.RuntimePct:
		return &runtime.PCT{Runner: r, HostRoot: cfg.HostRoot, ProcRoot: ProcRoot(cfg.HostRoot), StateDir: filepath.Join(cfg.StateDir, "pct")}, nil
	case hostconfig.RuntimeLXC:
		return &runtime.LXC{Runner: r, LXCPath: cfg.LXCPath, StateDir: filepath.Join(cfg.StateDir, "lxc"), ProcRoot: ProcRoot(cfg.HostRoot)}, nil
	}
	return nil, fmt.Errorf("runtime %q: want pct or lxc", cfg.Runtime)
}

func notify(state string) {
	_, _ = daemon.SdNotify(false, state)
}

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	cfg := s.Config
	l := s.Log
	if l == nil {
		l = log.Discard()
	}
	r := s.Runner
	if r == nil {
		r = runner.Exec{}
	}
	rt := s.Runtime
	if rt == nil {
		var err error
		if rt, err = NewRuntime(cfg, r); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	notify("STATUS=starting: guest registry")
	metrics := NewMetrics()
	stopGPU := startGPUMetrics(ctx, cfg, metrics, l)
	defer stopGPU()
	guests := guestchan.New(guestchan.Config{
		Dir: cfg.GuestSocketDir, ProcRoot: filepath.Dir(ProcRoot(cfg.HostRoot)), Heartbeat: cfg.Heartbeat, StaleAfter: cfg.GuestStaleAfter,
		Log: l.WithField("part", "guests"), Build: buildVersion(),
	})
	agent, err := New(cfg, Options{Runtime: rt, Guests: guests, Log: l, Metrics: metrics})
	if err != nil {
		return err
	}

	ln := s.Listener
	if ln == nil {
		tc, err := pki.ServerTLS(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key, cfg.AllowedControllers)
		if err != nil {
			return fmt.Errorf("controller listener TLS (%s): %w", cfg.File, err)
		}
		raw, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("listen on %s (listen in %s): %w", cfg.Listen, cfg.File, err)
		}
		ln = tls.NewListener(raw, tc)
	}

	g, gctx := errgroup.WithContext(ctx)
	agent.mu.Lock()
	agent.base = gctx
	agent.mu.Unlock()
	g.Go(func() error { return guests.Run(gctx) })
	// Every container the agent already manages gets its guest socket back at once.
	for _, id := range agent.knownIDs() {
		if _, err := guests.Ensure(id); err != nil {
			l.WithError(err).WithField("container", id).Warn("cannot re-create guest socket")
		}
		if spec, ok := agent.desiredSpec(id); ok {
			if p, err := agent.plan(gctx, spec); err == nil {
				agent.setExpectation(id, agent.expectation(p))
			}
		}
	}

	notify("STATUS=preparing GPU device nodes")
	if err := agent.Prepare(gctx, r); err != nil {
		l.WithError(err).Warn("host preparation incomplete: GPU containers will be reported not ready with this reason")
		notify("STATUS=host preparation incomplete: " + err.Error())
	}
	notify("STATUS=reconciling interrupted applies")
	if err := agent.Reconcile(gctx); err != nil {
		l.WithError(err).Error("reconcile interrupted applies")
	}

	g.Go(func() error { return agent.ServeControllers(gctx, ln) })
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listen for metrics on %s: %w", cfg.MetricsListen, err)
		}
		srv := &http.Server{Handler: metricsMux(metrics), ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(mln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		g.Go(func() error { <-gctx.Done(); return srv.Close() })
	}
	g.Go(func() error { return agent.trackGuests(gctx, metrics) })
	g.Go(func() error { return agent.watchDriver(gctx, driverWatchInterval) })
	if iv, err := daemon.SdWatchdogEnabled(false); err == nil && iv > 0 {
		g.Go(func() error { return watchdog(gctx, iv/2) })
	}

	notify("READY=1")
	notify(fmt.Sprintf("STATUS=serving controllers on %s, %d container(s) known", ln.Addr(), len(agent.knownIDs())))
	l.WithField("listen", ln.Addr().String()).WithField("runtime", rt.Name()).Info("host agent ready")
	if s.Ready != nil {
		s.Ready(ln.Addr(), agent)
	}
	err = g.Wait()
	notify("STOPPING=1")
	return err
}

func metricsMux(m *Metrics) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	return mux
}

func watchdog(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			notify("WATCHDOG=1")
		}
	}
}

// trackGuests keeps the readiness gauges current as guests report.
// driverWatchInterval is how often the running agent re-reads the host's driver (a
// module reload or upgrade without a reboot).
const driverWatchInterval = 30 * time.Second

func (a *Agent) trackGuests(ctx context.Context, m *Metrics) error {
	events, cancel := a.guests.Subscribe(256)
	defer cancel()
	countConnected := func() {
		n := 0
		for _, id := range a.guests.IDs() {
			if s, ok := a.guests.Latest(id); ok && s.Connected {
				n++
			}
		}
		m.guests.Set(float64(n))
	}
	countConnected() // guests that connected before the subscription
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			countConnected()
			snap := ev.Snapshot
			m.setReady(ev.ID, readiness.Reported(snap.Connected, snap.Stale, snap.Report))
		}
	}
}
