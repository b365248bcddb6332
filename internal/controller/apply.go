package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"gpupass/internal/fleet"
	"gpupass/internal/inputlimit"
	pb "gpupass/proto/gpupass/v1"
)

// Apply defaults.
const (
	DefaultApplyTimeout  = 2 * time.Minute // readiness deadline per container
	DefaultApplyParallel = 10              // hosts applied at once
	// applyMargin is added per container to the readiness deadline for the host's own
	// work (lock, write, stop and start).
	applyMargin = 60 * time.Second
)

// Progress is one step of an apply on one host, as the host reported it, or the
// controller's own note about the host (Container "").
type Progress struct {
	Time      time.Time
	Host      string
	Container string
	Step      string // journal, lock, write, restart, wait-ready, done, rollback; connect, failed
	Message   string
}

// ApplyOptions tune Apply.
type ApplyOptions struct {
	Timeout  time.Duration // readiness deadline per container (default DefaultApplyTimeout)
	Parallel int           // hosts at once (default DefaultApplyParallel)
	// Progress, if set, is called for every step (from several goroutines, one per host;
	// calls for one host come in order).
	Progress func(Progress)
	// Digests, keyed "host/id", are the config digests of a saved plan (gpupass plan -o
	// json): a host whose config changed since refuses that container's apply with a
	// conflict and writes nothing, so nothing applies that the plan did not show.
	Digests map[string]string
	// ApplyPending allows restarts that apply Proxmox pending changes (listed by plan);
	// without it such containers are refused with the list.
	ApplyPending bool
}

// Apply makes every host match the fleet: write configs, restart where the restart rule
// says so, and wait for readiness. Hosts are applied in parallel (bounded); a host that
// cannot be reached is reported within the connect timeout and holds up no other.
func (c *Controller) Apply(ctx context.Context, opts ApplyOptions) *Report {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultApplyTimeout
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultApplyParallel
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(Progress) {}
	}
	r, work := c.newReport(KindApply)
	eachHost(ctx, c.opts.Fleet.Hosts, opts.Parallel, func(ctx context.Context, i int, h fleet.Host) {
		w := work[i]
		start := time.Now()
		defer func() { w.report.ElapsedMS = time.Since(start).Milliseconds() }()
		note := func(step, msg string) {
			progress(Progress{Time: time.Now(), Host: h.Name, Step: step, Message: msg})
		}
		note("connect", h.Address)
		cctx, ccancel := context.WithTimeout(ctx, c.opts.Timeout)
		callTimeout := c.opts.Timeout + time.Duration(max(1, len(w.entries)))*(opts.Timeout+applyMargin)
		actx, acancel := context.WithTimeout(ctx, callTimeout)
		defer acancel()
		// The session lives under actx; connecting must finish within the connect timeout.
		s, err := c.connectWithin(actx, cctx, h)
		ccancel()
		if err != nil {
			w.fail(err, c.opts.Timeout)
			note("failed", w.report.Error)
			return
		}
		defer s.close()
		w.report.Reachable = true
		if len(w.entries) == 0 {
			if err := c.inventory(actx, s, w); err != nil {
				w.fail(err, callTimeout)
			}
			note("done", "no containers in the fleet for this host")
			return
		}
		if err := c.applyHost(actx, s, w, opts, progress); err != nil {
			if actx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
			}
			w.fail(&stageError{"waiting for the apply on", h.Address, err}, callTimeout)
			note("failed", w.report.Error)
		}
	})
	return r
}

// connectWithin connects under sessionCtx (which then bounds the session's life), giving
// up when connectCtx ends first.
func (c *Controller) connectWithin(sessionCtx, connectCtx context.Context, h fleet.Host) (*conn, error) {
	ctx, cancel := context.WithCancelCause(sessionCtx)
	stop := context.AfterFunc(connectCtx, func() { cancel(connectCtx.Err()) })
	s, err := c.connect(ctx, h)
	if !stop() {
		// connectCtx ended: the connection is being torn down, whatever connect said.
		if s != nil {
			s.close()
		}
		cancel(nil)
		if err == nil {
			err = context.DeadlineExceeded
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		return nil, err
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	prev := s.stop
	s.stop = func() bool { cancel(nil); return prev() }
	return s, nil
}

func (c *Controller) applyHost(ctx context.Context, s *conn, w *hostWork, opts ApplyOptions, progress func(Progress)) error {
	st, err := s.Open(ctx, MethodApply)
	if err != nil {
		return err
	}
	defer st.Close()
	req := &pb.ApplyRequest{Containers: specs(w.entries), TimeoutMs: opts.Timeout.Milliseconds(), ApplyPending: opts.ApplyPending}
	for _, e := range w.entries {
		if d, ok := opts.Digests[w.host.Name+"/"+e.ID]; ok {
			if req.ExpectDigest == nil {
				req.ExpectDigest = map[string]string{}
			}
			req.ExpectDigest[e.ID] = d
		}
	}
	if err := st.Send(req); err != nil {
		return err
	}
	for {
		var up pb.ApplyUpdate
		if err := st.RecvReply(&up); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("the apply stream ended without a result; the host agent's journal says what happened (it reconciles on restart): %w", io.ErrUnexpectedEOF)
			}
			return err
		}
		switch k := up.GetKind().(type) {
		case *pb.ApplyUpdate_Progress:
			p := k.Progress
			progress(Progress{Time: time.Now(), Host: w.host.Name, Container: p.GetContainerId(), Step: p.GetStep(), Message: p.GetMessage()})
		case *pb.ApplyUpdate_Result:
			res := k.Result
			fillHost(w.report, res.GetHost())
			byID := map[string]*pb.ContainerResult{}
			for _, cr := range res.GetContainers() {
				if cr.GetPlan() != nil {
					byID[cr.GetPlan().GetId()] = cr
				} else if cr.GetStatus() != nil {
					byID[cr.GetStatus().GetId()] = cr
				}
			}
			for i, e := range w.entries {
				out := w.out[i]
				out.Simulated = w.report.Simulated
				cr, ok := byID[e.ID]
				if !ok {
					out.State = StateError
					out.Reasons = append(out.Reasons, "the host agent's apply result does not mention this container")
					continue
				}
				applyResult(out, cr)
			}
			return nil
		}
	}
}

// LoadPlanDigests reads a saved plan (the JSON of gpupass plan -o json) and returns the
// config digest of each container, keyed "host/id".
func LoadPlanDigests(path string) (map[string]string, error) {
	b, err := inputlimit.ReadFile(path, inputlimit.PlanJSON)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read plan %s: %w (save it with gpupass plan -f fleet.yaml -o json > %s)", path, err, path)
	}
	// A host that did not answer the plan has no digests in it: what apply would do there
	// was never shown, so the plan cannot vouch for it (issue 19).
	var missing []string
	for _, h := range r.Hosts {
		if !h.Reachable || h.Error != "" {
			why := h.Error
			if why == "" {
				why = "unreachable"
			}
			missing = append(missing, fmt.Sprintf("%s (%s)", h.Name, why))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("read plan %s: it has no answer from host %s, so it never showed what apply would do there; run gpupass plan again when every host answers (or take the host out of the fleet file)", path, strings.Join(missing, ", host "))
	}
	out := map[string]string{}
	for _, c := range r.Containers {
		if c.Digest != "" {
			out[c.Host+"/"+c.ID] = c.Digest
		}
	}
	if len(out) == 0 {
		if r.Kind != "" && r.Kind != KindPlan {
			return nil, fmt.Errorf("read plan %s: it is the JSON of gpupass %s, not of gpupass plan -o json", path, r.Kind)
		}
		return nil, fmt.Errorf("read plan %s: no container digests in it (is it the JSON of gpupass plan -o json?)", path)
	}
	return out, nil
}
