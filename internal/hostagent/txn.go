package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gpupass/internal/journal"
	"gpupass/internal/pveconf"
	"gpupass/internal/revert"
)

// ErrConflict says the config holds neither the bytes gpupass found nor the bytes it
// wrote: someone else changed it, and gpupass leaves it as it is.
var ErrConflict = errors.New("config changed by someone else")

// crashPoint, when set (tests only), is called at each step of an apply and of a
// rollback; the crash test kills the agent there.
var crashPoint func(point string)

func crash(point string) {
	if crashPoint != nil {
		crashPoint(point)
	}
}

// backupDir is where the config backups of container id are kept.
func (a *Agent) backupDir(id string) string {
	return filepath.Join(a.cfg.StateDir, "backup", journal.Sanitize(id))
}

// txn is what one apply changed, for its undo stack: the same record whether the apply
// runs now or is reconciled from its journal after a crash.
type txn struct {
	id         string
	intent     journal.Entry // Digest (before), After, Backup, WasRunning, GuestDirCreated
	runTouched bool          // a restart or start was issued
	// configWritten: the apply's bytes reached the config (a failed write leaves it
	// untouched, and then its undo must not judge an edit that came first).
	configWritten bool
}

// undoStack builds the undos of t in the order the apply made its changes, so that they
// run in reverse: the config first, then the guest socket directory, then the run state
// (a running container restarts from the restored config; one the apply started stops
// again, and its start record goes). The run state's undo is refused when the config's
// was: a container is not restarted onto a config someone else wrote.
func (a *Agent) undoStack(t *txn) *revert.Reverter {
	rv := &revert.Reverter{}
	configUndone := true
	rv.Add("run state", func(ctx context.Context) error {
		if !configUndone {
			return fmt.Errorf("restore run state of container %s: left as it is, since its config was not restored", t.id)
		}
		return a.undoRunState(ctx, t)
	})
	if t.intent.GuestDirCreated {
		rv.Add("guest socket directory", func(context.Context) error { return a.undoGuestDir(t.id) })
	}
	if t.configWritten && t.intent.After != t.intent.Digest {
		rv.Add("config", func(context.Context) error {
			err := a.undoConfig(t.id, t.intent)
			configUndone = err == nil
			return err
		})
	}
	return rv
}

// undoConfig restores the backup only while the config is still exactly what gpupass
// wrote: holding the before bytes it is done already, holding anything else it is an
// administrator's (or PVE's) edit, left alone with ErrConflict. The write re-checks the
// digest under the config lock.
func (a *Agent) undoConfig(id string, in journal.Entry) error {
	f := a.configFile(id)
	f.BackupDir = "" // the journal's backup is the one kept
	_, cur, err := f.Read()
	if err != nil {
		return fmt.Errorf("restore config of container %s: %w", id, err)
	}
	switch cur {
	case in.Digest:
		return nil
	case in.After:
	default:
		return fmt.Errorf("restore config %s: %w (digest %s; gpupass wrote %s over %s): left as it is; check it, then apply again",
			f.Path, ErrConflict, short(cur), short(in.After), short(in.Digest))
	}
	old, err := os.ReadFile(in.Backup)
	if err != nil {
		return fmt.Errorf("restore config %s: read backup: %w", f.Path, err)
	}
	if d := pveconf.Digest(old); d != in.Digest {
		return fmt.Errorf("restore config %s: backup %s has digest %s, the journal says %s: not restored", f.Path, in.Backup, short(d), short(in.Digest))
	}
	if _, err := f.Write(old, in.After); err != nil {
		if errors.Is(err, pveconf.ErrDigestMismatch) {
			return fmt.Errorf("restore config %s: %w (%v): left as it is", f.Path, ErrConflict, err)
		}
		return fmt.Errorf("restore config %s: %w", f.Path, err)
	}
	crash("undo-config")
	return nil
}

// undoGuestDir removes the guest socket directory the apply created.
func (a *Agent) undoGuestDir(id string) error {
	a.guests.Remove(id)
	dir := a.guestDir(id)
	for _, p := range []string{filepath.Join(dir, "agent.sock"), dir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove guest socket directory %s: %w", dir, err)
		}
	}
	crash("undo-guest-dir")
	return nil
}

// startForgetter is implemented by runtimes that keep their own start record (lxc).
type startForgetter interface {
	ForgetStart(id string) error
}

// undoRunState brings the container back to the run state it had before the apply.
func (a *Agent) undoRunState(ctx context.Context, t *txn) error {
	st, err := a.rt.State(ctx, t.id)
	if err != nil {
		return fmt.Errorf("restore run state of container %s: %w", t.id, err)
	}
	switch {
	case t.intent.WasRunning && !st.Running:
		if err := a.rt.Start(ctx, t.id); err != nil {
			return fmt.Errorf("start container %s again: %w", t.id, err)
		}
	case t.intent.WasRunning && t.runTouched:
		// It was restarted onto the new config: once more, from the restored one.
		if err := a.rt.Restart(ctx, t.id); err != nil {
			return fmt.Errorf("restart container %s with the restored config: %w", t.id, err)
		}
	case !t.intent.WasRunning && st.Running:
		if err := a.rt.Stop(ctx, t.id); err != nil {
			return fmt.Errorf("stop container %s again: %w", t.id, err)
		}
		if sf, ok := a.rt.(startForgetter); ok {
			if err := sf.ForgetStart(t.id); err != nil {
				return fmt.Errorf("forget the start record of container %s: %w", t.id, err)
			}
		}
	}
	crash("undo-run-state")
	return nil
}

// runUndo journals the rollback, runs the undo stack and journals each undo and the
// outcome: as-it-was when every undo succeeded, conflict when the config was changed by
// someone else meanwhile, failed otherwise. The detail names each failed undo.
func (a *Agent) runUndo(ctx context.Context, op *journal.Op, rv *revert.Reverter, cause string) (outcome, detail string) {
	_ = op.Step(journal.StepRollback, journal.Entry{Detail: cause})
	crash("rollback-journaled")
	results := rv.Fail(ctx, func(r revert.Result) {
		e := journal.Entry{Detail: r.Name}
		if r.Err != nil {
			e.Error = r.Err.Error()
		}
		_ = op.Step(journal.StepUndo, e)
	})
	failed := revert.Failed(results)
	if len(failed) == 0 {
		_ = op.Step(journal.StepRolledBack, journal.Entry{Detail: cause})
		_ = op.Done(journal.OutcomeAsWas, cause)
		return journal.OutcomeAsWas, cause
	}
	outcome = journal.OutcomeFailed
	msgs := make([]string, 0, len(failed))
	for _, f := range failed {
		if errors.Is(f.Err, ErrConflict) {
			outcome = journal.OutcomeConflict
		}
		msgs = append(msgs, fmt.Sprintf("undo %s failed: %v", f.Name, f.Err))
	}
	detail = cause + "; " + strings.Join(msgs, "; ")
	_ = op.Done(outcome, detail)
	a.refreshJournalState()
	return outcome, detail
}

// prune bounds the journal and the backups of container id; the backups of unfinished
// operations stay.
func (a *Agent) prune(id string) {
	protect := map[string]bool{}
	if ops, _, err := a.journal.Pending(); err == nil {
		for _, p := range ops {
			protect[p.Intent().Backup] = true
		}
	}
	if n, err := a.journal.Prune(id, a.backupDir(id), protect); err != nil {
		a.log.WithField("container", id).WithError(err).Warn("pruning the journal failed")
	} else if n > 0 {
		a.log.WithField("container", id).WithField("removed", n).Debug("journal pruned")
	}
}

// refreshJournalState reloads the unresolved conflicts and the quarantined journal files,
// which status reports as reasons.
func (a *Agent) refreshJournalState() {
	conflicts := a.journal.Conflicts()
	broken := map[string][]journal.Broken{}
	for _, b := range a.journal.Quarantined() {
		broken[b.Container] = append(broken[b.Container], b)
	}
	a.mu.Lock()
	a.conflicts, a.quarantined = conflicts, broken
	a.mu.Unlock()
}

// hasConflict says whether container id has an unresolved conflict: its next apply is
// journaled even when it changes nothing, and resolves it.
func (a *Agent) hasConflict(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.conflicts[id]
	return ok
}

// journalReasons are the status reasons of container id from its journal: an unresolved
// conflict, a quarantined journal file.
func (a *Agent) journalReasons(id string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	if c, ok := a.conflicts[id]; ok {
		out = append(out, fmt.Sprintf("journal conflict: apply %s could not be undone because the config was changed by someone else meanwhile; gpupass left it as it is (%s); check the config, then apply again", c.Op, c.Detail))
	}
	for _, b := range a.quarantined[journal.Sanitize(id)] {
		out = append(out, fmt.Sprintf("journal quarantined: %s could not be read (%v); it was not reconciled: check the container, then remove the file", b.Quarantined, b.Err))
	}
	return out
}
