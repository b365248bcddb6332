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
		return a.inventory(ctx), nil
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

func validateSpecs(specs []*pb.ContainerSpec) error {
	seen := map[string]bool{}
	for i, s := range specs {
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serveController(ctx, conn, mux)
		}()
	}
}

func (a *Agent) serveController(ctx context.Context, conn net.Conn, mux *wire.Mux) {
	l := a.log.WithField("peer", conn.RemoteAddr().String())
	if tc, ok := conn.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			l.WithError(err).Info("controller TLS handshake refused")
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
	if err != nil {
		l.WithError(err).Info("controller session refused")
		return
	}
	defer sess.Close()
	_ = sess.Serve(ctx)
}
