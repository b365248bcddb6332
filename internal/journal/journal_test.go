package journal

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func testIntent() Entry {
	return Entry{Spec: json.RawMessage(`{"id":"901","gpus":["0"]}`), WasRunning: true, Digest: "d-before", After: "d-after", Backup: "/b/1"}
}

// An unfinished operation is listed with its intent and steps; a finished one is not; a
// torn last line (a crash mid-write) is ignored.
func TestPendingTornTail(t *testing.T) {
	j := &Journal{Dir: t.TempDir()}
	finished, err := j.Begin("901", testIntent())
	if err != nil {
		t.Fatal(err)
	}
	if err := finished.Step(StepWritten, Entry{}); err != nil {
		t.Fatal(err)
	}
	if err := finished.Done(OutcomeDesired, ""); err != nil {
		t.Fatal(err)
	}
	cut, err := j.Begin("902", testIntent())
	if err != nil {
		t.Fatal(err)
	}
	if err := cut.Step(StepWritten, Entry{}); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(cut.Path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"op":"` + cut.ID + `","step":"resta`)
	f.Close()
	ops, broken, err := j.Pending()
	if err != nil || len(broken) != 0 {
		t.Fatalf("Pending: %v, broken %v", err, broken)
	}
	if len(ops) != 1 {
		t.Fatalf("%d pending, want 1", len(ops))
	}
	var steps []string
	for _, e := range ops[0].Entries {
		steps = append(steps, e.Step)
	}
	if diff := cmp.Diff(steps, []string{StepBegin, StepWritten}); diff != "" {
		t.Errorf("steps (-got +want)\n%s", diff)
	}
	in := ops[0].Intent()
	if diff := cmp.Diff([]string{in.Container, in.Digest, in.After, in.Backup}, []string{"902", "d-before", "d-after", "/b/1"}); diff != "" {
		t.Errorf("intent (-got +want)\n%s", diff)
	}
}

// Each journal file is read on its own: broken ones are quarantined with a note of why,
// and the readable ones are still listed (before: one unreadable file failed them all).
func TestPendingQuarantinesBrokenFiles(t *testing.T) {
	j := &Journal{Dir: t.TempDir()}
	good, err := j.Begin("901", testIntent())
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(j.Dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("20260101T000000.000000-902-aaaaaaaa.jsonl", "garbage\n{\"step\":\"begin\"}\n")
	write("20260101T000000.000000-903-bbbbbbbb.jsonl", `{"op":"x","step":"written","container":"903"}`+"\n")
	write("20260101T000000.000000-904-cccccccc.jsonl", `{"op":"20260101T000000.000000-904-cccccccc","step":"begin","container":"904"}`+"\n"+`{"op":"other","step":"written"}`+"\n")
	if err := os.Mkdir(filepath.Join(j.Dir, "20260101T000000.000000-905-dddddddd.jsonl"), 0o700); err != nil {
		t.Fatal(err) // a directory with a journal's name is skipped, not fatal
	}
	ops, broken, err := j.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if len(ops) != 1 || ops[0].Op.ID != good.ID {
		t.Fatalf("pending %v, want only %s", ops, good.ID)
	}
	var got []string
	for _, b := range broken {
		got = append(got, b.Container)
		if b.Quarantined == "" || b.Err == nil {
			t.Errorf("broken %s: quarantined %q err %v", b.File, b.Quarantined, b.Err)
		}
		if _, err := os.Stat(filepath.Join(j.Dir, b.File)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still in the journal directory", b.File)
		}
	}
	if diff := cmp.Diff(got, []string{"902", "903", "904"}); diff != "" {
		t.Errorf("broken containers (-got +want)\n%s", diff)
	}
	q := j.Quarantined()
	if len(q) != 3 || !strings.Contains(q[0].Err.Error(), "line 1") {
		t.Errorf("quarantined %+v, want three with reasons (the first naming line 1)", q)
	}
	if ops, broken, _ := j.Pending(); len(ops) != 1 || len(broken) != 0 {
		t.Errorf("second Pending: %d ops, %d broken; want 1, 0", len(ops), len(broken))
	}
}

// A conflict is remembered per container until a later operation of it ends otherwise.
func TestConflictRecordedAndCleared(t *testing.T) {
	j := &Journal{Dir: t.TempDir()}
	op, _ := j.Begin("901", testIntent())
	if err := op.Done(OutcomeConflict, "edited meanwhile"); err != nil {
		t.Fatal(err)
	}
	if c := j.Conflicts(); c["901"].Op != op.ID || c["901"].Detail != "edited meanwhile" {
		t.Fatalf("conflicts %+v, want 901's", c)
	}
	op2, _ := j.Begin("901", testIntent())
	if err := op2.Done(OutcomeDesired, ""); err != nil {
		t.Fatal(err)
	}
	if c := j.Conflicts(); len(c) != 0 {
		t.Errorf("conflicts after a good apply: %+v", c)
	}
}

// Pruning keeps the newest Keep records of a container and everything younger than
// KeepFor, never a protected backup, and never another container's records.
func TestPrune(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	j := &Journal{Dir: t.TempDir(), Keep: 3, KeepFor: 24 * time.Hour, Now: func() time.Time { return now }}
	bdir := t.TempDir()
	var backups []string
	for i := 0; i < 8; i++ {
		age := time.Duration(8-i) * 12 * time.Hour // 96h ... 12h old
		mod := now.Add(-age)
		j.Now = func() time.Time { return mod }
		op, err := j.Begin("901", testIntent())
		if err != nil {
			t.Fatal(err)
		}
		if err := op.Done(OutcomeDesired, ""); err != nil {
			t.Fatal(err)
		}
		done := filepath.Join(j.DoneDir(), filepath.Base(op.Path))
		b, err := j.SaveBackup(bdir, "901.conf", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		backups = append(backups, b)
		for _, p := range []string{done, b} {
			if err := os.Chtimes(p, mod, mod); err != nil {
				t.Fatal(err)
			}
		}
	}
	other, _ := j.Begin("902", testIntent())
	_ = other.Done(OutcomeDesired, "")
	old := now.Add(-1000 * time.Hour)
	_ = os.Chtimes(filepath.Join(j.DoneDir(), filepath.Base(other.Path)), old, old)
	j.Now = func() time.Time { return now }
	n, err := j.Prune("901", bdir, map[string]bool{backups[0]: true})
	if err != nil {
		t.Fatal(err)
	}
	// Ages 96..12h: the newest 3 (36, 24, 12h) are kept by count; 24h and younger by age
	// anyway; 96h is protected: removed 84, 72, 60, 48h of the journal (4) and, of the
	// backups, 84..48h (4, the 96h one protected).
	if n != 9 {
		t.Errorf("removed %d, want 9 (5 journal files, 4 backups)", n)
	}
	dones, _ := filepath.Glob(filepath.Join(j.DoneDir(), "*-901-*.jsonl"))
	bs, _ := filepath.Glob(filepath.Join(bdir, "*.bak"))
	if len(dones) != 3 || len(bs) != 4 {
		t.Errorf("left %d journal files and %d backups, want 3 and 4", len(dones), len(bs))
	}
	if _, err := os.Stat(backups[0]); err != nil {
		t.Errorf("the protected backup was removed: %v", err)
	}
	if o, _ := filepath.Glob(filepath.Join(j.DoneDir(), "*-902-*.jsonl")); len(o) != 1 {
		t.Errorf("another container's record was pruned")
	}
}

// FuzzPending reads an arbitrary file as an interrupted apply's journal (what a crash, a
// full disk or an editor could leave). Pending never panics nor fails; what it lists has
// its begin entry first, the rest is quarantined; Done files it away.
func FuzzPending(f *testing.F) {
	j := &Journal{Dir: f.TempDir()}
	op, err := j.Begin("901", testIntent())
	if err != nil {
		f.Fatal(err)
	}
	_ = op.Step(StepWritten, Entry{})
	_ = op.Step(StepRestart, Entry{Detail: "running container has no /dev/nvidia0"})
	seed, err := os.ReadFile(op.Path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-7])
	f.Add([]byte(`{"op":"x","step":"begin","spec":{"id":5}}` + "\n"))
	f.Add([]byte("\n\n"))
	name := filepath.Base(op.Path)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		j := &Journal{Dir: filepath.Join(dir, "journal")}
		_ = os.RemoveAll(j.Dir)
		if err := os.MkdirAll(j.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(j.Dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		ops, broken, err := j.Pending()
		if err != nil {
			t.Fatalf("Pending: %v", err)
		}
		if len(ops)+len(broken) > 1 {
			t.Fatalf("one file gave %d ops and %d broken", len(ops), len(broken))
		}
		for _, p := range ops {
			if p.Intent().Step != StepBegin {
				t.Fatalf("pending op starts with %q", p.Intent().Step)
			}
			if err := p.Op.Done(OutcomeAsWas, "fuzz"); err != nil {
				t.Fatalf("done: %v", err)
			}
		}
		if again, br, err := j.Pending(); err != nil || len(again)+len(br) != 0 {
			t.Fatalf("after done: %d pending, %d broken, %v", len(again), len(br), err)
		}
	})
}
