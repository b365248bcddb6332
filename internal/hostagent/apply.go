package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"gpupass/internal/guestchan"
	"gpupass/internal/journal"
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
	_, statErr := os.Stat(a.guestDir(id))
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

	// The transaction: the intent (the digest found, the digest it will write, the backup
	// of the old bytes) is journaled before anything is written, and every change made
	// has its undo (txn.go). An apply that changes nothing journals nothing.
	restart := p.state.Running && p.pb.Restart.GetRequired() && refusal == ""
	start := !p.state.Running && p.pb.Start && refusal == ""
	t := &txn{id: id, intent: journal.Entry{WasRunning: p.state.Running, Digest: p.digest, After: p.digest, GuestDirCreated: errors.Is(statErr, os.ErrNotExist)}}
	var op *journal.Op
	if p.res.Changed || restart || start || t.intent.GuestDirCreated || a.hasConflict(id) {
		if p.res.Changed {
			t.intent.After = pveconf.Digest(p.res.New)
			if t.intent.Backup, err = a.journal.SaveBackup(a.backupDir(id), filepath.Base(p.file.Path), p.old); err != nil {
				return fail(fmt.Errorf("apply to container %s: %w (nothing was written)", id, err))
			}
		}
		intent := t.intent
		if intent.Spec, err = protojson.Marshal(spec); err != nil {
			return fail(fmt.Errorf("encode spec: %w", err))
		}
		if op, err = a.journal.Begin(id, intent); err != nil {
			return fail(err)
		}
		defer func() { a.prune(id); a.refreshJournalState() }()
		progress(id, "journal", op.ID)
		crash("begin")
	}

	if p.res.Changed {
		progress(id, "write", fmt.Sprintf("%d change(s) to %s", len(p.res.Changes), p.file.Path))
		f := *p.file
		f.BackupDir = "" // the journal's backup, named in the intent, is the one kept
		if _, err := f.Write(p.res.New, p.digest); err != nil {
			outcome, detail := a.runUndo(context.WithoutCancel(ctx), op, a.undoStack(t), "write failed: "+err.Error())
			if errors.Is(err, pveconf.ErrDigestMismatch) {
				err = wire.Errorf(pb.ErrorCode_ERROR_CODE_CONFLICT, "%s changed while applying: nothing was written; run plan again (%v)", p.file.Path, err)
			}
			if outcome != journal.OutcomeAsWas {
				return fail(fmt.Errorf("write %s: %w (nothing was written; %s)", p.file.Path, err, detail))
			}
			return fail(fmt.Errorf("write %s: %w (the container and its config are as they were)", p.file.Path, err))
		}
		crash("written-unjournaled")
		t.configWritten = true
		result.Written = true
		if err := op.Step(journal.StepWritten, journal.Entry{Backup: t.intent.Backup}); err != nil {
			l.WithError(err).Error("journal write failed")
		}
		crash("written")
	}

	if refusal != "" {
		// Written, and the restart is left to the person (HA): say so and stop here.
		result.Status = a.status(ctx, spec)
		_ = op.Done(journal.OutcomeDesired, "written; restart refused: "+refusal)
		return fail(errors.New(refusal))
	}

	restarted, started := false, false
	since := a.now()
	switch {
	case restart:
		progress(id, "restart", pb.Brief(pb.DetailsOf(p.pb.Restart.GetReasons(), p.pb.Restart.GetDetails())))
		_ = op.Step(journal.StepRestart, journal.Entry{Detail: strings.Join(p.pb.Restart.GetReasons(), "; ")})
		crash("restart-journaled")
		t.runTouched = true
		since = a.now()
		if err := a.rt.Restart(ctx, id); err != nil {
			return a.rollback(ctx, op, t, p, result, fmt.Errorf("restart container %s: %w", id, err), progress)
		}
		restarted = true
		crash("restarted")
	case start:
		progress(id, "start", "fleet wants it running")
		_ = op.Step(journal.StepRestart, journal.Entry{Detail: "start"})
		crash("restart-journaled")
		t.runTouched = true
		since = a.now()
		if err := a.rt.Start(ctx, id); err != nil {
			return a.rollback(ctx, op, t, p, result, fmt.Errorf("start container %s: %w", id, err), progress)
		}
		started = true
		crash("restarted")
	}
	// A start is not a restart: the answer says which one happened (issue 19).
	result.Restarted, result.Started = restarted, started

	running := p.state.Running || started
	if !running {
		result.Status = a.status(ctx, spec)
		_ = op.Done(journal.OutcomeDesired, "stopped container written and left stopped")
		return result
	}

	progress(id, "wait-ready", fmt.Sprintf("waiting up to %v for the guest's report", timeout))
	snap, werr := a.waitReady(ctx, id, since, restarted || started, timeout)
	status := a.status(ctx, spec)
	result.Status = status
	if status.GetState() == StateReady {
		_ = op.Step(journal.StepReady, journal.Entry{})
		crash("ready")
		_ = op.Done(journal.OutcomeDesired, "")
		return result
	}
	detail := strings.Join(status.GetReasons(), "; ")
	_ = op.Step(journal.StepNotReady, journal.Entry{Detail: detail})
	crash("not-ready")
	if passthroughBroken(snap) && (result.Written || restarted || started) {
		return a.rollback(ctx, op, t, p, result, fmt.Errorf("container %s is not ready after apply: %s", id, detail), progress)
	}
	if werr != nil && snap.Report == nil {
		l.WithError(werr).Info("no guest report before the deadline")
	}
	_ = op.Done(journal.OutcomeDesired, "not ready: "+detail)
	return result
}

// waitReady waits for the guest's push: a report of the running container's generation
// (its init and the init's start time: after a restart, only the new instance's guest
// counts, whatever the clock says) that is ready, or the deadline. Where the generation
// cannot be read, a report received after since (after a restart) counts. No polling:
// the registry wakes us.
func (a *Agent) waitReady(ctx context.Context, id string, since time.Time, restarted bool, timeout time.Duration) (guestchan.Snapshot, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var gen guestchan.Generation
	known := false
	if st, err := a.rt.State(wctx, id); err == nil && st.Running {
		gen, known = a.generationOf(st.InitPID)
	}
	fresh := func(s guestchan.Snapshot) bool {
		if !s.Connected || s.Report == nil {
			return false
		}
		if known && !s.Generation.IsZero() {
			return s.Generation == gen
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

// rollback undoes every change the apply made (txn.go: the config only while it still
// holds what gpupass wrote, the guest socket directory it created, the run state) in
// reverse order, and reports each undo that failed.
func (a *Agent) rollback(ctx context.Context, op *journal.Op, t *txn, p *planned, result *pb.ContainerResult, cause error, progress progressFunc) *pb.ContainerResult {
	id := p.spec.GetId()
	l := a.log.WithField("container", id)
	if errors.Is(cause, runtime.ErrTaskRunning) {
		// A PVE task still holds the container: a rollback now would race it. Leave both
		// as they are and say so; the journal keeps the backup for the reconcile.
		_ = op.Done(journal.OutcomeFailed, cause.Error()+"; not rolled back while the PVE task runs")
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
	outcome, detail := a.runUndo(rctx, op, a.undoStack(t), cause.Error())
	result.RolledBack = outcome == journal.OutcomeAsWas
	if result.Status == nil {
		result.Status = &pb.ContainerStatus{Id: id, Gpus: p.spec.GetGpus(), State: StateError}
	}
	result.Status.Reasons = append(result.Status.Reasons, cause.Error())
	if result.RolledBack {
		result.Error = cause.Error() + " (rolled back: the config and the container are as they were)"
	} else {
		result.Error = cause.Error() + "; rollback failed: " + detail
		result.Status.Reasons = append(result.Status.Reasons, "rollback: "+detail)
	}
	if result.Status.GetState() == StateReady {
		result.Status.State = StateError
	}
	l.WithError(cause).WithField("outcome", outcome).Warn("apply rolled back")
	return result
}

func short(d string) string {
	if len(d) > 12 {
		return d[:12]
	}
	return d
}
