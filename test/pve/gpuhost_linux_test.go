package pve

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/lxctest"
	"gpupass/internal/pvelab"
)

// TestSimulatedGPUHost: the stand-in GPU nodes sit where PVE's hooks look, so the real pct
// starts a privileged container with the GPU as devN entries, the container opens them
// (enforced allow rules PVE rendered), and this process sees the fixture's /proc/devices
// and /proc/driver/nvidia while /etc/pve stays the real pmxcfs.
func TestSimulatedGPUHost(t *testing.T) {
	h := pvelab.SimulateGPUHost(t, gpu.SimOptions{GPUs: 1})
	devices, err := os.ReadFile("/proc/devices")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(devices), " nvidia-uvm\n") {
		t.Fatalf("/proc/devices is not the fixture's:\n%s", devices)
	}
	if _, err := os.Stat(gpu.SimulatedMarker); err != nil {
		t.Fatalf("/proc/driver is not the fixture's: %v", err)
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
