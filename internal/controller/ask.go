package controller

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gpupass/internal/fleet"
	"gpupass/internal/hostdriver"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// hostWork is what one host contributes to a report: its entry and its containers'
// entries, owned by the goroutine asking that host.
type hostWork struct {
	host    fleet.Host
	entries []fleet.Container
	report  *Host
	out     []*Container
}

// newReport lays out a report in fleet order and the per-host work items that fill it.
func (c *Controller) newReport(kind string) (*Report, []*hostWork) {
	f := c.opts.Fleet
	r := &Report{Kind: kind, Hosts: make([]Host, len(f.Hosts)), Containers: make([]Container, len(f.Containers))}
	work := make([]*hostWork, len(f.Hosts))
	idx := map[string]*hostWork{}
	for i, h := range f.Hosts {
		r.Hosts[i] = newHost(h)
		work[i] = &hostWork{host: h, report: &r.Hosts[i]}
		idx[h.Name] = work[i]
	}
	for i, ct := range f.Containers {
		r.Containers[i] = newContainer(ct)
		w := idx[ct.Host]
		w.entries = append(w.entries, ct)
		w.out = append(w.out, &r.Containers[i])
	}
	return r, work
}

func specs(entries []fleet.Container) []*pb.ContainerSpec {
	out := make([]*pb.ContainerSpec, len(entries))
	for i, e := range entries {
		out[i] = e.Spec()
	}
	return out
}

// fail records a host-wide failure: unreachable when it could not be asked or did not
// answer in time, error when it answered with one.
func (w *hostWork) fail(err error, timeout time.Duration) {
	reason := describe(w.host, err, timeout)
	w.report.Error = reason
	var we *wire.Error
	// A host whose handler ran out of the call's deadline may say so a moment before our
	// own deadline fires: that is still "did not answer in time".
	if errors.As(err, &we) && we.Code != pb.ErrorCode_ERROR_CODE_DEADLINE_EXCEEDED {
		w.report.Reachable = true
		markHost(w.out, StateError, "host "+w.host.Name+": "+reason)
		return
	}
	w.report.Reachable = false
	markHost(w.out, StateUnreachable, "host "+w.host.Name+" unreachable: "+reason)
}

// ask fills a report by running call on every host, each with its own deadline.
func (c *Controller) ask(ctx context.Context, kind string, call func(ctx context.Context, s *conn, w *hostWork) error) *Report {
	r, work := c.newReport(kind)
	eachHost(ctx, c.opts.Fleet.Hosts, c.opts.Parallel, func(ctx context.Context, i int, h fleet.Host) {
		w := work[i]
		start := time.Now()
		defer func() { w.report.ElapsedMS = time.Since(start).Milliseconds() }()
		hctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
		s, err := c.connect(hctx, h)
		if err != nil {
			w.fail(err, c.opts.Timeout)
			return
		}
		defer s.close()
		w.report.Reachable = true
		if err := call(hctx, s, w); err != nil {
			if hctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
			}
			w.fail(&stageError{"waiting for the answer of", h.Address, err}, c.opts.Timeout)
		}
	})
	return r
}

// fillStatuses copies a host's statuses into the work item's containers.
func (w *hostWork) fillStatuses(sts []*pb.ContainerStatus, warn bool) {
	byID := make(map[string]*pb.ContainerStatus, len(sts))
	for _, st := range sts {
		byID[st.GetId()] = st
	}
	for i, e := range w.entries {
		out := w.out[i]
		out.Simulated = w.report.Simulated
		st, ok := byID[e.ID]
		if !ok {
			out.State = StateError
			out.Reasons = append(out.Reasons, out.note(ReasonDetail{Kind: KindNotReported, Text: "the host agent did not report this container"}))
			continue
		}
		applyStatus(out, st)
		markGPUsDiffer(out, warn)
	}
}

func (c *Controller) inventory(ctx context.Context, s *conn, w *hostWork) error {
	var inv pb.HostInventory
	if err := s.Call(ctx, MethodInventory, &pb.InventoryRequest{}, &inv); err != nil {
		return err
	}
	fillHost(w.report, &inv)
	return nil
}

func (c *Controller) status(ctx context.Context, s *conn, w *hostWork) error {
	return c.statusFor(ctx, s, w, true)
}

// statusFor asks for the statuses of w's containers; warn adds a warning where the
// configured GPUs are not the fleet's (plan shows the change itself instead).
func (c *Controller) statusFor(ctx context.Context, s *conn, w *hostWork, warn bool) error {
	if len(w.entries) == 0 {
		return c.inventory(ctx, s, w)
	}
	var resp pb.StatusResponse
	if err := s.Call(ctx, MethodStatus, &pb.StatusRequest{Containers: specs(w.entries)}, &resp); err != nil {
		return err
	}
	fillHost(w.report, resp.GetHost())
	w.fillStatuses(resp.GetContainers(), warn)
	return nil
}

// Status asks every host for the readiness of its fleet containers. It always returns a
// report; hosts that could not be asked are marked in it.
func (c *Controller) Status(ctx context.Context) *Report {
	return c.ask(ctx, KindStatus, c.status)
}

// PlanDriverVersion is Plan plus, for each container, what a host driver change to
// version to would do (gpupass plan --driver-version): driver: host containers realign at
// their next start, own ones break unless their guest reported the userspace of to.
func (c *Controller) PlanDriverVersion(ctx context.Context, to string) *Report {
	r := c.Plan(ctx)
	for i, e := range c.opts.Fleet.Containers {
		if i >= len(r.Containers) {
			break
		}
		ct := &r.Containers[i]
		f := hostdriver.ForecastUpgrade(e.Driver == fleet.DriverHost, ct.Driver.Userspace, to)
		mode := e.Driver
		if mode == "" {
			mode = fleet.DriverOwn
		}
		ct.DriverUpgrade = &DriverUpgrade{To: to, Mode: mode, Realigns: f.Realigns, Breaks: f.Breaks, Message: f.Text}
	}
	return r
}

// Plan asks every host what apply would change, and for the current readiness of the
// containers with nothing to change.
func (c *Controller) Plan(ctx context.Context) *Report {
	return c.ask(ctx, KindPlan, func(ctx context.Context, s *conn, w *hostWork) error {
		if err := c.statusFor(ctx, s, w, false); err != nil {
			return err
		}
		if len(w.entries) == 0 {
			return nil
		}
		var resp pb.PlanResponse
		if err := s.Call(ctx, MethodPlan, &pb.PlanRequest{Containers: specs(w.entries)}, &resp); err != nil {
			return err
		}
		if resp.GetHost() != nil {
			fillHost(w.report, resp.GetHost())
		}
		byID := map[string]*pb.ContainerPlan{}
		for _, p := range resp.GetContainers() {
			byID[p.GetId()] = p
		}
		for i, e := range w.entries {
			p, ok := byID[e.ID]
			if !ok {
				w.out[i].State = StateError
				w.out[i].Reasons = append(w.out[i].Reasons, w.out[i].note(ReasonDetail{Kind: KindNotReported, Text: "the host agent made no plan for this container"}))
				continue
			}
			applyPlan(w.out[i], p)
		}
		return nil
	})
}
