package hostagent

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Reconcile finishes the applies an earlier agent left unfinished (killed at any step):
// no duplicate lines, no lost lines, the container as desired or as it was, and the
// journal says which.
func (a *Agent) Reconcile(ctx context.Context) error {
	ops, err := a.journal.Interrupted()
	if err != nil {
		return err
	}
	for _, in := range ops {
		l := a.log.WithField("container", in.Op.Container).WithField("op", in.Op.ID).WithField("last_step", in.Last().Step)
		if _, written := in.Has(StepWritten); !written {
			if _, restarted := in.Has(StepRestart); !restarted {
				_ = in.Op.Done(OutcomeAsWas, "interrupted before the config was written; nothing to undo")
				l.Info("interrupted apply had written nothing")
				continue
			}
		}
		// The config may hold the desired entries while the container still runs the
		// old ones, or was stopped mid-restart. Apply the journaled spec again: the
		// editor is idempotent and the restart rule judges the running container.
		// An agent killed between the stop and the start of a restart left the container
		// stopped; it was running before this apply, so it is started again. Pending PVE
		// changes were allowed by the interrupted apply (it refuses before writing
		// otherwise, and PVE makes pending changes only for running containers).
		res := a.applyOne(ctx, in.Spec, applyOpts{timeout: 30 * time.Second, keepRunning: in.Entries[0].WasRunning, applyPending: in.Entries[0].WasRunning}, nil)
		if res.GetError() == "" {
			_ = in.Op.Done(OutcomeDesired, "reconciled on start: "+res.GetStatus().GetState())
			l.Info("interrupted apply completed")
			continue
		}
		// Could not complete: restore the backup the journal names.
		detail := res.GetError()
		if w, ok := in.Has(StepWritten); ok && w.Backup != "" && !res.GetRolledBack() {
			if err := a.restoreBackup(ctx, in, w.Backup); err != nil {
				detail += "; restore failed: " + err.Error()
				_ = in.Op.Done(OutcomeFailed, detail)
				l.WithError(err).Error("interrupted apply could not be completed or undone")
				continue
			}
		}
		_ = in.Op.Done(OutcomeAsWas, "reconciled on start by rollback: "+detail)
		l.Warn("interrupted apply rolled back")
	}
	return nil
}

func (a *Agent) restoreBackup(ctx context.Context, in Interrupted, backup string) error {
	unlock := a.lock(in.Op.Container)
	defer unlock()
	old, err := os.ReadFile(backup)
	if err != nil {
		return fmt.Errorf("read backup %s: %w", backup, err)
	}
	f := a.configFile(in.Op.Container)
	_, cur, err := f.Read()
	if err != nil {
		return err
	}
	if _, err := f.Write(old, cur); err != nil {
		return err
	}
	if in.Entries[0].WasRunning {
		return a.rt.Restart(ctx, in.Op.Container)
	}
	return nil
}
