package gputest

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
)

func TestParseManifest(t *testing.T) {
	got, err := ParseManifest([]byte("# comment\n/dev/nvidia0 c 195:0 0666\n\n/dev/nvidia-caps d - 0755 # dir\n/dev/nvidia-uvm f - 0644\n/dev/nvidia9 l nvidia0 0777\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Entry{
		{Path: "/dev/nvidia0", Type: 'c', Major: 195, Minor: 0, Mode: 0o666},
		{Path: "/dev/nvidia-caps", Type: 'd', Mode: 0o755},
		{Path: "/dev/nvidia-uvm", Type: 'f', Mode: 0o644},
		{Path: "/dev/nvidia9", Type: 'l', Target: "nvidia0", Mode: 0o777},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	wantNodes := map[string]gpu.Node{
		"/dev/nvidia0":    {Path: "/dev/nvidia0", Char: true, Major: 195, Mode: os.ModeDevice | os.ModeCharDevice | 0o666},
		"/dev/nvidia-uvm": {Path: "/dev/nvidia-uvm", Mode: 0o644},
		"/dev/nvidia9":    {Path: "/dev/nvidia9", Mode: os.ModeSymlink | 0o777},
	}
	if diff := cmp.Diff(ManifestNodes(got), wantNodes); diff != "" {
		t.Errorf("ManifestNodes (-got +want):\n%s", diff)
	}
	for _, bad := range []string{"/dev/x c 1 0666\n", "/dev/x z - 0644\n", "/dev/x c 1:2 999\n", "/tmp/x f - 0644\n", "/dev/x c 1:2\n"} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("ParseManifest(%q) accepted", bad)
		}
	}
}

func TestEveryFixtureManifestParses(t *testing.T) {
	names := Names()
	if len(names) < 5 {
		t.Fatalf("fixtures = %v, want at least 5", names)
	}
	for _, n := range names {
		if es := Manifest(t, n); len(es) == 0 {
			t.Errorf("fixture %s: empty manifest", n)
		}
	}
}
