package hostagent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

func TestJournalInterrupted(t *testing.T) {
	j := &Journal{Dir: t.TempDir()}
	spec := &pb.ContainerSpec{Id: "901", Gpus: []string{"0", "1"}}

	finished, err := j.Begin(spec, true, "abc")
	if err != nil {
		t.Fatal(err)
	}
	if err := finished.Step(StepWritten, Entry{Backup: "/b/1"}); err != nil {
		t.Fatal(err)
	}
	if err := finished.Done(OutcomeDesired, ""); err != nil {
		t.Fatal(err)
	}

	cut, err := j.Begin(&pb.ContainerSpec{Id: "902", Gpus: []string{"1"}}, false, "def")
	if err != nil {
		t.Fatal(err)
	}
	if err := cut.Step(StepWritten, Entry{Backup: "/b/2"}); err != nil {
		t.Fatal(err)
	}
	// A torn last line, as a crash during the write leaves it.
	f, err := os.OpenFile(cut.path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"op":"x","step":"resta`)
	f.Close()

	got, err := j.Interrupted()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("interrupted = %d ops, want 1", len(got))
	}
	in := got[0]
	var steps []string
	for _, e := range in.Entries {
		steps = append(steps, e.Step)
	}
	if diff := cmp.Diff(steps, []string{StepBegin, StepWritten}); diff != "" {
		t.Errorf("steps (-got +want):\n%s", diff)
	}
	if in.Spec.GetId() != "902" || in.Spec.GetGpus()[0] != "1" {
		t.Errorf("spec = %v", in.Spec)
	}
	if w, ok := in.Has(StepWritten); !ok || w.Backup != "/b/2" {
		t.Errorf("written step = %+v, %v", w, ok)
	}
	if in.Entries[0].WasRunning || in.Entries[0].Digest != "def" {
		t.Errorf("begin entry = %+v", in.Entries[0])
	}
	if err := in.Op.Done(OutcomeAsWas, "test"); err != nil {
		t.Fatal(err)
	}
	if got, _ := j.Interrupted(); len(got) != 0 {
		t.Errorf("after done: %d interrupted", len(got))
	}
	done, _ := filepath.Glob(filepath.Join(j.Dir, "done", "*.jsonl"))
	if len(done) != 2 {
		t.Errorf("done dir has %d files, want 2", len(done))
	}
}
