package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/pveconf"
	"gpupass/internal/runtime"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// DefaultReadyTimeout bounds the wait for a guest's readiness push when the request
// names no deadline.
const DefaultReadyTimeout = 60 * time.Second

// notReadyGrace is how long apply keeps waiting for a ready report after a fresh one
// said not ready (a device may settle a moment after init starts).
const notReadyGrace = 2 * time.Second

// progressFunc reports apply steps to the caller.
type progressFunc func(id, step, msg string)

// Apply answers host.Apply for every container in req, in parallel across containers and
// serialised per container.
func (a *Agent) Apply(ctx context.Context, req *pb.ApplyRequest, progress progressFunc) *pb.ApplyResponse {
	timeout := time.Duration(req.GetTimeoutMs()) * time.Millisecond
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	results := make([]*pb.ContainerResult, len(req.GetContainers()))
	done := make(chan struct{}, len(results))
	for i, spec := range req.GetContainers() {
		go func() {
			defer func() { done <- struct{}{} }()
			results[i] = a.applyOne(ctx, spec, applyOpts{expectDigest: req.GetExpectDigest()[spec.GetId()], timeout: timeout, applyPending: req.GetApplyPending()}, progress)
		}()
	}
	for range results {
		<-done
	}
	return &pb.ApplyResponse{Host: a.inventory(ctx, false), Containers: results}
}

// applyOpts are the per-call knobs of one container's apply.
type applyOpts struct {
	expectDigest string        // the digest a reviewed plan saw ("" = any)
	timeout      time.Duration // readiness deadline
	// keepRunning starts the container if it is stopped, whatever the spec says: a
	// reconcile of an apply cut between the stop and the start of a restart.
	keepRunning bool
	// applyPending allows a restart or start that applies PVE pending changes.
	applyPending bool
}

func (a *Agent) applyOne(ctx context.Context, spec *pb.ContainerSpec, o applyOpts, progress progressFunc) *pb.ContainerResult {
	id := spec.GetId()
	if progress == nil {
		progress = func(string, string, string) {}
	}
	unlock := a.lock(id)
	defer unlock()
	start := a.now()
	res := a.applyLocked(ctx, spec, o, progress)
	outcome := "ok"
	switch {
	case res.GetError() != "":
		outcome = "error"
	case res.GetStatus().GetState() != StateReady && res.GetStatus().GetState() != StateStopped:
		outcome = "not-ready"
	}
	a.metrics.applies.WithLabelValues(outcome).Inc()
	a.metrics.applyDuration.Observe(a.now().Sub(start).Seconds())
	progress(id, "done", outcome)
	return res
}

func (a *Agent) applyLocked(ctx context.Context, spec *pb.ContainerSpec, o applyOpts, progress progressFunc) *pb.ContainerResult {
	id := spec.GetId()
	expectDigest, timeout := o.expectDigest, o.timeout
	l := a.log.WithField("container", id)
	result := &pb.ContainerResult{}
	fail := func(err error) *pb.ContainerResult {
		result.Error = err.Error()
		if result.Status == nil {
			result.Status = &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), State: StateError, Reasons: []string{err.Error()}}
		}
		l.WithError(err).Warn("apply failed")
		return result
	}

	// The guest directory must exist before the config mounts it into the container.
	if _, err := a.guests.Ensure(id); err != nil {
		return fail(fmt.Errorf("prepare guest socket for container %s: %w", id, err))
	}
	p, err := a.plan(ctx, spec)
	result.Plan = p.pb
	if err != nil {
		return fail(err)
	}
	if o.keepRunning && !p.state.Running {
		p.pb.Start = true
	}
	if expectDigest != "" && expectDigest != p.digest {
		return fail(wire.Errorf(pb.ErrorCode_ERROR_CODE_CONFLICT, "%s changed since the plan (digest %s, now %s): nothing was written; run plan again", p.file.Path, short(expectDigest), short(p.digest)))
	}
	// Proxmox: a locked container is not touched; pending changes and HA are checked before
	// anything is written (pve.go).
	refusal, mayWrite := pveRefusal(p.pb, p.state.Running, p.res.Changed, o.applyPending)
	if refusal != "" && !mayWrite {
		return fail(errors.New(refusal))
	}
	a.setExpectation(id, a.expectation(p))
	if err := a.remember(spec); err != nil {
		return fail(err)
	}

	op, err := a.journal.Begin(spec, p.state.Running, p.digest)
	if err != nil {
		return fail(err)
	}
	progress(id, "journal", op.ID)

	var backup string
	if p.res.Changed {
		progress(id, "write", fmt.Sprintf("%d change(s) to %s", len(p.res.Changes), p.file.Path))
		backup, err = p.file.Write(p.res.New, p.digest)
		if err != nil {
			_ = op.Done(OutcomeAsWas, "write failed: "+err.Error())
			if errors.Is(err, pveconf.ErrDigestMismatch) {
				err = wire.Errorf(pb.ErrorCode_ERROR_CODE_CONFLICT, "%s changed while applying: nothing was written; run plan again (%v)", p.file.Path, err)
			}
			return fail(fmt.Errorf("write %s: %w (the container and its config are as they were)", p.file.Path, err))
		}
		result.Written = true
		if err := op.Step(StepWritten, Entry{Backup: backup}); err != nil {
			l.WithError(err).Error("journal write failed")
		}
	}

	if refusal != "" {
		// Written, and the restart is left to the person (HA): say so and stop here.
		result.Status = a.status(ctx, spec)
		_ = op.Done(OutcomeDesired, "written; restart refused: "+refusal)
		return fail(errors.New(refusal))
	}

	restarted, started := false, false
	since := a.now()
	switch {
	case p.state.Running && p.pb.Restart.GetRequired():
		progress(id, "restart", strings.Join(p.pb.Restart.GetReasons(), "; "))
		_ = op.Step(StepRestart, Entry{Detail: strings.Join(p.pb.Restart.GetReasons(), "; ")})
		since = a.now()
		if err := a.rt.Restart(ctx, id); err != nil {
			return a.rollback(ctx, op, p, backup, result, fmt.Errorf("restart container %s: %w", id, err), progress)
		}
		restarted = true
	case !p.state.Running && p.pb.Start:
		progress(id, "start", "fleet wants it running")
		_ = op.Step(StepRestart, Entry{Detail: "start"})
		since = a.now()
		if err := a.rt.Start(ctx, id); err != nil {
			return a.rollback(ctx, op, p, backup, result, fmt.Errorf("start container %s: %w", id, err), progress)
		}
		started = true
	}
	// A start is not a restart: the answer says which one happened (issue 19).
	result.Restarted, result.Started = restarted, started

	running := p.state.Running || started
	if !running {
		result.Status = a.status(ctx, spec)
		_ = op.Done(OutcomeDesired, "stopped container written and left stopped")
		return result
	}

	progress(id, "wait-ready", fmt.Sprintf("waiting up to %v for the guest's report", timeout))
	snap, werr := a.waitReady(ctx, id, since, restarted || started, timeout)
	status := a.status(ctx, spec)
	result.Status = status
	if status.GetState() == StateReady {
		_ = op.Step(StepReady, Entry{})
		_ = op.Done(OutcomeDesired, "")
		return result
	}
	detail := strings.Join(status.GetReasons(), "; ")
	_ = op.Step(StepNotReady, Entry{Detail: detail})
	if passthroughBroken(snap) && (result.Written || restarted || started) {
		return a.rollback(ctx, op, p, backup, result, fmt.Errorf("container %s is not ready after apply: %s", id, detail), progress)
	}
	if werr != nil && snap.Report == nil {
		l.WithError(werr).Info("no guest report before the deadline")
	}
	_ = op.Done(OutcomeDesired, "not ready: "+detail)
	return result
}

// waitReady waits for the guest's push: a report received after since (after a restart:
// from the new instance) that is ready, or the deadline. No polling: the registry wakes us.
func (a *Agent) waitReady(ctx context.Context, id string, since time.Time, restarted bool, timeout time.Duration) (guestchan.Snapshot, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fresh := func(s guestchan.Snapshot) bool {
		if !s.Connected || s.Report == nil {
			return false
		}
		return !restarted || s.At.After(since)
	}
	snap, err := a.guests.Wait(wctx, id, func(s guestchan.Snapshot) bool { return fresh(s) })
	if err != nil || snap.Report.GetReady() {
		return snap, err
	}
	gctx, gcancel := context.WithTimeout(wctx, notReadyGrace)
	defer gcancel()
	s2, err := a.guests.Wait(gctx, id, func(s guestchan.Snapshot) bool { return fresh(s) && s.Report.GetReady() })
	if err != nil {
		return snap, nil
	}
	return s2, nil
}

// passthroughBroken reports whether the guest's report shows the passthrough itself
// failed (a node missing, denied or wrong), as opposed to a problem the config cannot fix
// (a userspace version mismatch, the network, a guest that never reported).
func passthroughBroken(s guestchan.Snapshot) bool {
	if s.Report == nil {
		return false
	}
	for _, d := range s.Report.GetDevices() {
		switch d.GetStatus() {
		case pb.DeviceStatus_DEVICE_STATUS_MISSING, pb.DeviceStatus_DEVICE_STATUS_DENIED,
			pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE:
			return true
		}
	}
	return false
}

// rollback restores the backup and brings the container back to its previous run state.
func (a *Agent) rollback(ctx context.Context, op *Op, p *planned, backup string, result *pb.ContainerResult, cause error, progress progressFunc) *pb.ContainerResult {
	id := p.spec.GetId()
	l := a.log.WithField("container", id)
	if errors.Is(cause, runtime.ErrTaskRunning) {
		// A PVE task still holds the container: a rollback now would race it. Leave both
		// as they are and say so; the journal keeps the backup for the reconcile.
		_ = op.Done(OutcomeFailed, cause.Error()+"; not rolled back while the PVE task runs")
		result.Error = cause.Error() + "; not rolled back: the PVE task still runs on the container (see its task log, then apply again)"
		if result.Status == nil {
			result.Status = &pb.ContainerStatus{Id: id, Gpus: p.spec.GetGpus(), State: StateError}
		}
		result.Status.State = StateError
		result.Status.Reasons = append(result.Status.Reasons, result.Error)
		l.WithError(cause).Error("apply failed while a PVE task runs: not rolled back")
		return result
	}
	progress(id, "rollback", cause.Error())
	// Roll back even when the caller's context is gone: leave the container as it was.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	var errs []error
	if backup != "" {
		old, err := os.ReadFile(backup)
		if err == nil {
			_, cur, rerr := p.file.Read()
			if rerr == nil {
				_, err = p.file.Write(old, cur)
			} else {
				err = rerr
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("restore %s from %s: %w", p.file.Path, backup, err))
		}
	}
	st, err := a.rt.State(rctx, id)
	switch {
	case err != nil:
		errs = append(errs, err)
	case p.state.Running:
		// Start again from the restored config.
		if err := a.rt.Restart(rctx, id); err != nil {
			errs = append(errs, fmt.Errorf("restart container %s with the restored config: %w", id, err))
		}
	case !p.state.Running && st.Running:
		if err := a.rt.Stop(rctx, id); err != nil {
			errs = append(errs, fmt.Errorf("stop container %s again: %w", id, err))
		}
	}
	result.RolledBack = len(errs) == 0
	if result.Status == nil {
		result.Status = &pb.ContainerStatus{Id: id, Gpus: p.spec.GetGpus(), State: StateError}
	}
	result.Status.Reasons = append(result.Status.Reasons, cause.Error())
	if len(errs) == 0 {
		_ = op.Step(StepRolledBack, Entry{Detail: cause.Error()})
		_ = op.Done(OutcomeAsWas, cause.Error())
		result.Error = cause.Error() + " (rolled back: the config and the container are as they were)"
	} else {
		err := errors.Join(errs...)
		_ = op.Done(OutcomeFailed, cause.Error()+"; rollback: "+err.Error())
		result.Error = cause.Error() + "; rollback failed: " + err.Error()
	}
	if result.Status.GetState() == StateReady {
		result.Status.State = StateError
	}
	l.WithError(cause).Warn("apply rolled back")
	return result
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
