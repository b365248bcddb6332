package hostagent

import (
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	pb "gpupass/proto/gpupass/v1"
)

// FuzzJournal reads an arbitrary file as an interrupted apply's journal (what a crash, a
// full disk or an editor could leave under state_dir/journal). Interrupted never panics;
// what it returns has a spec and at least the begin step; Done files it away.
func FuzzJournal(f *testing.F) {
	j := &Journal{Dir: f.TempDir()}
	op, err := j.Begin(&pb.ContainerSpec{Id: "901", Gpus: []string{"0", "GPU-x"}, Style: pb.Style_STYLE_DEV, WantState: "running"}, true, "d1g3st")
	if err != nil {
		f.Fatal(err)
	}
	_ = op.Step(StepWritten, Entry{Backup: "/var/lib/gpupass/backup/901/901.conf.1.bak"})
	_ = op.Step(StepRestart, Entry{Detail: "running container has no /dev/nvidia0"})
	seed, err := os.ReadFile(op.path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-7]) // torn tail
	f.Add([]byte(`{"op":"x","step":"begin","spec":{"id":5}}` + "\n"))
	f.Add([]byte(`{"op":"x","step":"begin"}` + "\n"))
	f.Add([]byte("\n\n"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		j := &Journal{Dir: filepath.Join(dir, "journal")}
		_ = os.RemoveAll(j.Dir)
		if err := os.MkdirAll(j.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(j.Dir, "op.jsonl"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		ops, err := j.Interrupted()
		if err != nil {
			return // an undecodable spec is reported, not guessed at
		}
		for _, in := range ops {
			if len(in.Entries) == 0 || in.Spec == nil {
				t.Fatalf("interrupted op without entries or spec: %+v", in)
			}
			_ = in.Last()
			_, _ = in.Has(StepWritten)
			if err := in.Op.Done(OutcomeAsWas, "fuzz"); err != nil {
				t.Fatalf("done: %v", err)
			}
		}
		if again, err := j.Interrupted(); err != nil || len(again) != 0 {
			t.Fatalf("after done: %d interrupted, %v", len(again), err)
		}
	})
}

// FuzzDesiredSpec starts an agent over an arbitrary state_dir/desired/*.json file: a file
// it cannot read is skipped with a warning, never a failed start; one it reads is the spec
// the agent then reports.
func FuzzDesiredSpec(f *testing.F) {
	good, _ := protojson.Marshal(&pb.ContainerSpec{Id: "901", Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW, RequireNetwork: true})
	f.Add(good)
	f.Add([]byte(`{"id":"901","gpus":["0","1"],"style":"STYLE_DEV","wantState":"running"}`))
	f.Add([]byte(`{"id":"901","gpus":[1]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`not json`))
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg := hostconfig.Default()
		cfg.StateDir = filepath.Join(base, "state")
		_ = os.RemoveAll(cfg.StateDir)
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, "desired"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.StateDir, "desired", "901.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := New(cfg, Options{Runtime: newMemRuntime(base), Guests: guestchan.New(guestchan.Config{Dir: filepath.Join(base, "g")})})
		if err != nil {
			t.Fatalf("an unreadable desired spec failed the start: %v", err)
		}
		want := &pb.ContainerSpec{}
		if protojson.Unmarshal(b, want) != nil {
			if len(a.desired) != 0 {
				t.Fatalf("an unreadable spec was loaded: %v", a.desired)
			}
			return
		}
		if got, ok := a.desiredSpec(want.GetId()); !ok || !proto.Equal(got, want) {
			t.Fatalf("desired spec %v, want %v", got, want)
		}
	})
}
