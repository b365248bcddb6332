package hostagent

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"gpupass/internal/journal"
	pb "gpupass/proto/gpupass/v1"
)

// reconcileReadyTimeout bounds the readiness wait of an apply completed on start.
var reconcileReadyTimeout = 30 * time.Second

// Reconcile finishes the applies an earlier agent left unfinished (killed at any step),
// each on its own: one it cannot read is quarantined and reported, and the others still
// proceed. The config's digest decides: still the one found before the apply, nothing was
// written; the one the apply was writing, the apply is completed (or, if it cannot be,
// undone); anything else is someone else's edit, left as it is and marked conflict. The
// journal says which, and status and doctor say so for a conflict or a quarantined file.
func (a *Agent) Reconcile(ctx context.Context) error {
	ops, broken, err := a.journal.Pending()
	if err != nil {
		return err
	}
	for _, b := range broken {
		a.log.WithField("container", b.Container).WithField("file", b.File).WithField("quarantined", b.Quarantined).
			WithError(b.Err).Error("unreadable journal quarantined: not reconciled")
	}
	seen := map[string]bool{}
	for _, p := range ops {
		seen[p.Op.Container] = true
		a.reconcileOne(ctx, p)
	}
	a.refreshJournalState()
	for _, id := range a.knownIDs() {
		seen[id] = true
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		a.prune(id)
	}
	return nil
}

// reconcileOne settles one unfinished operation.
func (a *Agent) reconcileOne(ctx context.Context, p journal.Pending) {
	in := p.Intent()
	l := a.log.WithField("container", in.Container).WithField("op", p.Op.ID).WithField("last_step", p.Last().Step)
	spec := &pb.ContainerSpec{}
	if err := protojson.Unmarshal(in.Spec, spec); err != nil || spec.GetId() != in.Container {
		if err == nil {
			err = fmt.Errorf("its spec names container %q", spec.GetId())
		}
		b := a.journal.Quarantine(filepath.Base(p.Op.Path), fmt.Errorf("read journal %s: decode spec: %w", filepath.Base(p.Op.Path), err))
		l.WithField("quarantined", b.Quarantined).WithError(b.Err).Error("unreadable journal quarantined: not reconciled")
		return
	}
	id := spec.GetId()
	_, cur, err := a.configFile(id).Read()
	if err != nil {
		_ = p.Op.Done(journal.OutcomeFailed, "reconcile on start: "+err.Error())
		l.WithError(err).Error("interrupted apply: cannot read the config")
		return
	}
	t := &txn{id: id, intent: in}
	_, t.runTouched = p.Has(journal.StepRestart)
	wrote := in.After != "" && in.After != in.Digest
	rb, rollingBack := p.Has(journal.StepRollback)
	switch {
	case rollingBack:
		// A rollback follows the write's journal entry, or a write that failed (and left
		// the config untouched).
		_, t.configWritten = p.Has(journal.StepWritten)
		unlock := a.lock(id)
		outcome, detail := a.runUndo(ctx, p.Op, a.undoStack(t), "reconciled on start: finished the rollback of: "+rb.Detail)
		unlock()
		l.WithField("outcome", outcome).WithField("detail", detail).Warn("interrupted rollback finished")
	case wrote && cur != in.After && cur != in.Digest:
		detail := fmt.Sprintf("reconciled on start: %s was changed by someone else while this apply was unfinished (digest %s; gpupass was writing %s over %s): left as it is",
			a.configFile(id).Path, short(cur), short(in.After), short(in.Digest))
		_ = p.Op.Done(journal.OutcomeConflict, detail)
		l.Warn("interrupted apply: the config was edited meanwhile; left as it is (conflict)")
	case cur == in.Digest && !t.runTouched:
		_ = p.Op.Done(journal.OutcomeAsWas, "interrupted before the config was written; nothing to undo")
		l.Info("interrupted apply had written nothing")
	default:
		// The config holds what the apply wrote (or it had nothing to write and a restart
		// was issued): complete it. The editor is idempotent and the restart rule judges the
		// running container. An agent killed between the stop and the start of a restart
		// left the container stopped; it was running before this apply, so it is started
		// again. Pending PVE changes were allowed by the interrupted apply (it refuses before
		// writing otherwise, and PVE makes pending changes only for running containers).
		res := a.applyOne(ctx, spec, applyOpts{timeout: reconcileReadyTimeout, keepRunning: in.WasRunning, applyPending: in.WasRunning}, nil)
		if res.GetError() == "" {
			_ = p.Op.Done(journal.OutcomeDesired, "reconciled on start: "+res.GetStatus().GetState())
			l.Info("interrupted apply completed")
			return
		}
		t.configWritten = wrote // the config held what it wrote: that is why it went on
		unlock := a.lock(id)
		outcome, detail := a.runUndo(ctx, p.Op, a.undoStack(t), "reconciled on start: could not complete: "+res.GetError())
		unlock()
		l.WithField("outcome", outcome).WithField("detail", detail).Warn("interrupted apply rolled back")
	}
}
