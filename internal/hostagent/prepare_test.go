package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/runner"
)

func TestParseCapFile(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want migCap
		ok   bool
	}{
		{"mig config (H100)", "DeviceFileMinor: 1\nDeviceFileMode: 256\nDeviceFileModify: 1\n", migCap{1, 0o400}, true},
		{"mig monitor (H100)", "DeviceFileMinor: 2\nDeviceFileMode: 292\nDeviceFileModify: 1\n", migCap{2, 0o444}, true},
		{"no mode: strictest", "DeviceFileMinor: 7\n", migCap{7, 0o400}, true},
		{"no minor", "DeviceFileMode: 256\n", migCap{0, 0o400}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ok := parseCapFile(tt.in)
			if diff := cmp.Diff([]any{c.minor, c.mode, ok}, []any{tt.want.minor, tt.want.mode, tt.ok}); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

// Host preparation creates missing MIG capability nodes with the mode the driver's
// capability files ask for (0400 config, 0444 monitor, as on the H100/H200 test hosts),
// never 0666, and the uvm nodes as before.
func TestPrepareCreatesCapsNodesWithDriverModes(t *testing.T) {
	root := gputest.SimulatedRoot(t, gpu.SimOptions{GPUs: 1, MIG: true,
		SkipNodes: []string{gpu.PathUVMTools, "/dev/nvidia-caps/nvidia-cap3", "/dev/nvidia-caps/nvidia-cap5"}})
	inv, err := gpu.Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	capsMajor := inv.Majors[gpu.MajorCaps]
	// The driver's description of its capabilities, with the simulated host's minors.
	capDir := filepath.Join(root, "proc/driver/nvidia/capabilities/mig")
	if err := os.MkdirAll(capDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{
		"config":  "DeviceFileMinor: 3\nDeviceFileMode: 256\nDeviceFileModify: 1\n",
		"monitor": "DeviceFileMinor: 5\nDeviceFileMode: 292\nDeviceFileModify: 1\n",
	} {
		if err := os.WriteFile(filepath.Join(capDir, name), []byte(body), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	cfg := hostconfig.Default()
	cfg.HostRoot = root
	cfg.StateDir = filepath.Join(t.TempDir(), "state")
	cfg.GuestSocketDir = filepath.Join(t.TempDir(), "g")
	a, err := New(cfg, Options{Runtime: newMemRuntime(t.TempDir()), Guests: guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir})})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Prepare(context.Background(), runner.Exec{}); err != nil {
		t.Fatal(err)
	}
	type node struct {
		Major, Minor uint32
		Mode         os.FileMode
	}
	got := map[string]node{}
	after, err := gpu.Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/dev/nvidia-caps/nvidia-cap3", "/dev/nvidia-caps/nvidia-cap5"} {
		n, ok := after.Nodes[p]
		if !ok || !n.Char {
			t.Fatalf("%s not created: %+v", p, n)
		}
		fi, err := os.Stat(after.HostPath(p))
		if err != nil {
			t.Fatal(err)
		}
		got[p] = node{n.Major, n.Minor, fi.Mode().Perm()}
	}
	want := map[string]node{
		"/dev/nvidia-caps/nvidia-cap3": {capsMajor, 3, 0o400},
		"/dev/nvidia-caps/nvidia-cap5": {capsMajor, 5, 0o444},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("caps nodes (-got +want)\n%s", diff)
	}
	if fi, err := os.Stat(after.HostPath(gpu.PathUVMTools)); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("%s: %v %v, want created 0666", gpu.PathUVMTools, fi, err)
	}
}
