package hostagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"gpupass/internal/buildinfo"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

func buildVersion() string { return buildinfo.Version }

// Mux returns the controller-facing handlers.
func (a *Agent) Mux() *wire.Mux {
	m := wire.NewMux()
	wire.HandleUnary(m, "host.Inventory", func(ctx context.Context, _ *pb.InventoryRequest) (*pb.HostInventory, error) {
		return a.inventory(ctx, true), nil
	})
	wire.HandleUnary(m, "host.Plan", func(ctx context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
		if err := validateSpecs(req.GetContainers()); err != nil {
			return nil, err
		}
		return a.Plan(ctx, req)
	})
	wire.HandleUnary(m, "host.Status", func(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error) {
		return a.Status(ctx, req), nil
	})
	wire.HandleServerStream(m, "host.Apply", func(ctx context.Context, req *pb.ApplyRequest, s *wire.Stream) error {
		if err := validateSpecs(req.GetContainers()); err != nil {
			return err
		}
		var mu sync.Mutex
		progress := func(id, step, msg string) {
			mu.Lock()
			defer mu.Unlock()
			_ = s.Reply(&pb.ApplyUpdate{Kind: &pb.ApplyUpdate_Progress{Progress: &pb.ApplyProgress{ContainerId: id, Step: step, Message: msg}}})
		}
		// Once started, an apply runs to its end even if the controller goes away: a restart
		// cut in half costs a rollback and another restart cycle. Its own deadlines (the
		// readiness timeout, the runtime's command timeouts) and the agent's shutdown still
		// bound it; a re-run of the controller waits for it on the container's lock and
		// then finds it converged.
		resp := a.Apply(a.detach(ctx), req, progress)
		mu.Lock()
		defer mu.Unlock()
		return s.Reply(&pb.ApplyUpdate{Kind: &pb.ApplyUpdate_Result{Result: resp}})
	})
	wire.HandleServerStream(m, "host.Watch", func(ctx context.Context, req *pb.WatchRequest, s *wire.Stream) error {
		return a.Watch(ctx, req, func(ev *pb.WatchEvent) error { return s.Reply(ev) })
	})
	return m
}

// detach returns a context that ends with the agent, not with the caller.
func (a *Agent) detach(ctx context.Context) context.Context {
	a.mu.Lock()
	base := a.base
	a.mu.Unlock()
	if base == nil {
		return context.WithoutCancel(ctx)
	}
	return base
}

// Bounds on one request: a host has at most a few hundred containers and a few GPUs each.
const (
	maxSpecs        = 10000
	maxGPUsPerSpec  = 64
	maxSelectorSize = 128
)

func validateSpecs(specs []*pb.ContainerSpec) error {
	if len(specs) > maxSpecs {
		return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "%d containers in one request (limit %d)", len(specs), maxSpecs)
	}
	seen := map[string]bool{}
	for i, s := range specs {
		if n := len(s.GetGpus()); n > maxGPUsPerSpec {
			return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "containers[%d].gpus: %d GPUs (limit %d)", i, n, maxGPUsPerSpec)
		}
		for j, g := range s.GetGpus() {
			if len(g) > maxSelectorSize {
				return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "containers[%d].gpus[%d]: selector longer than %d bytes", i, j, maxSelectorSize)
			}
		}
		switch {
		case s.GetId() == "":
			return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "containers[%d]: empty id", i)
		case seen[s.GetId()]:
			return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "containers[%d]: container %s listed twice", i, s.GetId())
		case s.GetWantState() != "" && s.GetWantState() != "running":
			return wire.Errorf(pb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT, "containers[%d].state: %q is not \"\" or \"running\"", i, s.GetWantState())
		}
		seen[s.GetId()] = true
	}
	return nil
}

// ServeControllers accepts controller connections on ln (already a TLS listener that
// requires client certificates chained to the fleet CA) until ctx ends.
func (a *Agent) ServeControllers(ctx context.Context, ln net.Listener) error {
	mux := a.Mux()
	// Connections not yet past TLS and Hello are bounded: beyond the limit new ones are
	// closed at once, so a flood of unauthenticated TCP connections costs little.
	handshakes := make(chan struct{}, maxPendingHandshakes)
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept controller: %w", err)
		}
		select {
		case handshakes <- struct{}{}:
		default:
			if a.refusals.Allow("handshake-limit") {
				a.log.WithField("limit", maxPendingHandshakes).Warn("too many controller connections in their handshake; closing new ones")
			}
			conn.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveController(ctx, conn, mux, func() { <-handshakes })
		}()
	}
}

// maxPendingHandshakes bounds controller connections in TLS or Hello at once.
const maxPendingHandshakes = 128

func (a *Agent) serveController(ctx context.Context, conn net.Conn, mux *wire.Mux, handshaken func()) {
	l := a.log.WithField("peer", conn.RemoteAddr().String())
	var once sync.Once
	done := func() { once.Do(handshaken) }
	defer done()
	if tc, ok := conn.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			// Rate limited per peer host: a scanner must not flood the log.
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			if a.refusals.Allow("tls:" + host) {
				l.WithError(err).Info("controller TLS handshake refused (further refusals from this address are logged at most once a minute)")
			}
			conn.Close()
			return
		}
	}
	sess, err := wire.Server(ctx, conn, wire.Config{
		Role: pb.Role_ROLE_HOST_AGENT, Build: buildVersion(), Log: l, MaxStreams: 256,
		Accept: func(peer *pb.Hello, _ net.Conn) error {
			if peer.GetRole() != pb.Role_ROLE_CONTROLLER {
				return fmt.Errorf("this listener serves controllers, not %v", peer.GetRole())
			}
			return nil
		},
	}, mux)
	done()
	if err != nil {
		l.WithError(err).Info("controller session refused")
		return
	}
	defer sess.Close()
	_ = sess.Serve(ctx)
}
