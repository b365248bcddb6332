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
