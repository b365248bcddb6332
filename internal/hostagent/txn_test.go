package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/journal"
	pb "gpupass/proto/gpupass/v1"
)

// Transaction tests on the fault host (faults_test.go): a real agent, its real journal
// and files, the real PCT runtime over a fake pct script. Each failed before the journal
// became a transaction (internal/journal, txn.go).

const adminEdit = "lxc.environment: ADMIN_EDIT=1"

func (h *faultHost) statusReasons(id string) []string {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := &pb.ContainerSpec{Id: id, Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW}
	st := h.agent.Status(ctx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{spec}})
	return st.GetContainers()[0].GetReasons()
}

func (h *faultHost) appendConf(line string) {
	h.t.Helper()
	f, err := os.OpenFile(h.conf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		h.t.Fatal(err)
	}
}

func hasPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

// An administrator edits the config while an apply is unfinished (the agent killed, or
// the apply failing): neither the reconcile nor the rollback writes the backup over the
// edit. The config keeps it byte for byte, the operation ends `conflict`, the container is
// not restarted onto the edit, and status names the conflict until an apply goes through.
// (Before: the backup was restored over the edit, losing it.)
func TestUndoNeverOverwritesAnAdminEdit(t *testing.T) {
	old := reconcileReadyTimeout
	t.Cleanup(func() { reconcileReadyTimeout = old })
	reconcileReadyTimeout = 300 * time.Millisecond
	tests := []struct {
		name    string
		running bool
		faults  map[string]string
		kill    string // a crash point: killed there, the edit made, then reconciled; "" = no crash
	}{
		{name: "killed after the write, edited, reconciled", running: true, kill: "written"},
		{name: "killed mid-rollback, edited, reconciled", running: true, faults: map[string]string{"fail-reboot": "1"}, kill: "rollback-journaled"},
		{name: "edited while the apply restarts, the restart fails, rolled back", running: true, faults: map[string]string{"fail-reboot": "1", "edit-reboot": adminEdit}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFaultHost(t, tt.running)
			for k, v := range tt.faults {
				h.setFile(k, v)
			}
			var op string
			if tt.kill != "" {
				op = killedApply(t, h, tt.kill, true).Op
				h.appendConf(adminEdit)
			} else {
				res, _ := h.apply(true, time.Second)
				wantContains(t, "error", res.GetError(), "rollback failed", "undo config failed", "changed by someone else", "left as it is")
				if res.GetRolledBack() {
					t.Errorf("said rolled back")
				}
			}
			edited, _ := os.ReadFile(h.conf)
			if !strings.Contains(string(edited), adminEdit) {
				t.Fatalf("the test's edit is not in the config:\n%s", edited)
			}
			actions := len(h.pctActions())
			if tt.kill != "" {
				h = reopenFaultHost(t, h.root, h.bin, filepath.Dir(h.cfg.StateDir))
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if err := h.agent.Reconcile(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if got, _ := os.ReadFile(h.conf); string(got) != string(edited) {
				t.Errorf("the edit was overwritten:\n%s\nwant:\n%s", got, edited)
			}
			if more := h.pctActions()[actions:]; len(more) != 0 {
				t.Errorf("pct actions after the edit: %q, want none", more)
			}
			var o journal.Entry
			if op != "" {
				o = doneOutcome(t, h, op)
			} else {
				o = h.journalOutcome()
			}
			if o.Outcome != journal.OutcomeConflict {
				t.Errorf("journal outcome %q (%s), want conflict", o.Outcome, o.Detail)
			}
			if r := h.statusReasons("901"); !hasPrefix(r, "journal conflict: apply ") {
				t.Errorf("status reasons %q do not name the conflict", r)
			}
			// An apply that goes through resolves it.
			h.setFile("fail-reboot", "0")
			h.apply(true, 300*time.Millisecond)
			if r := h.statusReasons("901"); hasPrefix(r, "journal conflict") {
				t.Errorf("after a good apply, status still says %q", r)
			}
		})
	}
}

// One unreadable journal no longer blocks recovery: it is quarantined and reported by
// status for its container, and the other interrupted apply is reconciled. (Before: the
// undecodable spec failed Reconcile, so the agent did not start.)
func TestReconcileQuarantinesBrokenJournal(t *testing.T) {
	old := reconcileReadyTimeout
	t.Cleanup(func() { reconcileReadyTimeout = old })
	reconcileReadyTimeout = 300 * time.Millisecond
	h := newFaultHost(t, true)
	intent := killedApply(t, h, "written", true)
	jdir := filepath.Join(h.cfg.StateDir, "journal")
	bad := "20260101T000000.000000-902-0badf00d"
	if err := os.WriteFile(filepath.Join(jdir, bad+".jsonl"), []byte(`{"op":"`+bad+`","step":"begin","container":"902","spec":{"id":5}}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h = reopenFaultHost(t, h.root, h.bin, filepath.Dir(h.cfg.StateDir))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.agent.Reconcile(ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if o := doneOutcome(t, h, intent.Op); o.Outcome != journal.OutcomeDesired {
		t.Errorf("the readable journal ended %q (%s), want as-desired", o.Outcome, o.Detail)
	}
	if _, err := os.Stat(filepath.Join(jdir, "quarantine", bad+".jsonl")); err != nil {
		t.Errorf("the broken journal was not quarantined: %v", err)
	}
	if r := h.statusReasons("902"); !hasPrefix(r, "journal quarantined: ") {
		t.Errorf("status of 902 %q does not name the quarantined journal", r)
	}
	if _, ok := h.logs.waitLog(time.Second, "unreadable journal quarantined"); !ok {
		t.Errorf("no error logged for the quarantined journal")
	}
}

// The rollback undoes every change the apply made, newest first: the config, the guest
// socket directory it created, the run state; each undo is journaled, and a failed undo is
// reported in the answer and the journal, never hidden. (Before: the guest socket
// directory stayed, and undos were not journaled.)
func TestRollbackUndoesEveryChange(t *testing.T) {
	tests := []struct {
		name        string
		running     bool
		faults      map[string]string
		wantOutcome string
		wantUndos   []string // name: error ("" ok)
		wantState   string
	}{
		{name: "start fails", running: false, faults: map[string]string{"fail-start": "1"}, wantOutcome: journal.OutcomeAsWas,
			wantUndos: []string{"config: ", "guest socket directory: ", "run state: "}, wantState: "stopped"},
		{name: "reboot fails, and the undo's reboot too", running: true, faults: map[string]string{"fail-reboot": "2"}, wantOutcome: journal.OutcomeFailed,
			wantUndos: []string{"config: ", "guest socket directory: ", "run state: restart container 901 with the restored config"}, wantState: "running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := newFaultHost(t, tt.running)
			for k, v := range tt.faults {
				h.setFile(k, v)
			}
			res, _ := h.apply(true, time.Second)
			h.assertConfAsWas()
			if _, err := os.Stat(filepath.Join(h.cfg.GuestSocketDir, "901")); !os.IsNotExist(err) {
				t.Errorf("the guest socket directory the apply created is still there (%v)", err)
			}
			if s := h.file("state-901"); s != tt.wantState {
				t.Errorf("container %s, want %s", s, tt.wantState)
			}
			files, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "journal", "done", "*.jsonl"))
			if len(files) != 1 {
				t.Fatalf("%d journals", len(files))
			}
			es, _ := journal.ReadFile(files[0])
			var undos []string
			for _, e := range es {
				if e.Step == journal.StepUndo {
					msg := e.Error
					if i := strings.Index(msg, ":"); i > 0 {
						msg = msg[:i]
					}
					undos = append(undos, e.Detail+": "+msg)
				}
			}
			if diff := cmp.Diff(undos, tt.wantUndos); diff != "" {
				t.Errorf("journaled undos (-got +want)\n%s", diff)
			}
			if o := h.journalOutcome(); o.Outcome != tt.wantOutcome {
				t.Errorf("outcome %q (%s), want %q", o.Outcome, o.Detail, tt.wantOutcome)
			}
			if tt.wantOutcome == journal.OutcomeFailed {
				wantContains(t, "error", res.GetError(), "rollback failed", "undo run state failed", "restart container 901 with the restored config")
				if res.GetRolledBack() {
					t.Error("a failed undo reported as rolled back")
				}
			}
		})
	}
}

// An apply that changes nothing writes nothing: no journal, no backup. Journals and
// backups are bounded per container by journal_keep and journal_keep_for. (Before: every
// apply, even a no-op, added a journal file, and backups grew forever.)
func TestJournalBoundedAndNoOpWritesNothing(t *testing.T) {
	h := newFaultHost(t, false)
	h.cfg.JournalKeep, h.cfg.JournalKeepFor = 3, 0
	h.agent.journal.Keep, h.agent.journal.KeepFor = 3, 0
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	apply := func(gpus ...string) *pb.ContainerResult {
		spec := &pb.ContainerSpec{Id: "901", Gpus: gpus, Style: pb.Style_STYLE_RAW}
		return h.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: 300}, nil).GetContainers()[0]
	}
	count := func() (int, int) {
		j, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "journal", "done", "*.jsonl"))
		b, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "backup", "901", "*.bak"))
		return len(j), len(b)
	}
	if r := apply("0"); r.GetError() != "" || !r.GetWritten() {
		t.Fatalf("first apply: %q written %v", r.GetError(), r.GetWritten())
	}
	j1, b1 := count()
	desired := filepath.Join(h.cfg.StateDir, "desired", "901.json")
	d1, err := os.Stat(desired)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if r := apply("0"); r.GetError() != "" || r.GetWritten() {
			t.Fatalf("no-op apply: %q written %v", r.GetError(), r.GetWritten())
		}
	}
	if j, b := count(); j != j1 || b != b1 || j1 != 1 || b1 != 1 {
		t.Errorf("no-op applies: journals %d -> %d, backups %d -> %d; want 1 each, unchanged", j1, j, b1, b)
	}
	if d2, err := os.Stat(desired); err != nil || !d2.ModTime().Equal(d1.ModTime()) {
		t.Errorf("no-op applies rewrote the desired spec %s (%v)", desired, err)
	}
	for i := 0; i < 8; i++ {
		gpus := []string{}
		if i%2 == 1 {
			gpus = []string{"0"}
		}
		if r := apply(gpus...); r.GetError() != "" || !r.GetWritten() {
			t.Fatalf("apply %d: %q written %v", i, r.GetError(), r.GetWritten())
		}
	}
	if j, b := count(); j != 3 || b != 3 {
		t.Errorf("after 9 writing applies with journal_keep 3: %d journals, %d backups; want 3 and 3", j, b)
	}
}
