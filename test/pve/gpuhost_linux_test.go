package pve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/lxctest"
	"gpupass/internal/pvelab"
)

// TestSimulatedGPUHost: the stand-in GPU nodes sit where PVE looks, so the real pct starts
// a privileged container with the GPU as devN entries and the container opens them (enforced
// allow rules PVE rendered); the host root carries the driver fixture in proc/ and leads to
// the real /etc/pve and /dev.
func TestSimulatedGPUHost(t *testing.T) {
	h := pvelab.SimulateGPUHost(t, gpu.SimOptions{GPUs: 1})
	devices, err := os.ReadFile(filepath.Join(h.Root, "proc/devices"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(devices), " nvidia-uvm\n") {
		t.Fatalf("host root's proc/devices is not the fixture's:\n%s", devices)
	}
	inv, err := gpu.Discover(h.Root)
	if err != nil {
		t.Fatalf("discover the simulated host through its root: %v", err)
	}
	if len(inv.GPUs) != 1 {
		t.Fatalf("discovered %d GPUs, want 1", len(inv.GPUs))
	}
	if _, err := os.Stat(filepath.Join(h.Root, "etc/pve/storage.cfg")); err != nil {
		t.Fatalf("host root does not lead to the real /etc/pve: %v", err)
	}
	probe := lxctest.Probe(t)
	conf := []string{"lxc.mount.entry: " + probe + " usr/local/bin/probe none bind,ro,create=file 0 0"}
	var paths []string
	for i, n := range h.Nodes {
		conf = append(conf, "dev"+string(rune('0'+i))+": "+n.Path+",mode=0666")
		paths = append(paths, n.Path)
	}
	ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: conf})
	ct.Start(t)
	out, _ := ct.Exec(t, append([]string{"/usr/local/bin/probe", "open"}, paths...)...)
	var want strings.Builder
	for _, p := range paths {
		want.WriteString(p + " ok\n")
	}
	if diff := cmp.Diff(want.String(), out); diff != "" {
		t.Errorf("open in the container (-want +got):\n%s", diff)
	}
	pvelab.ParseStrict(t, ct.ConfPath())
}
