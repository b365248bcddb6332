package gpumetrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"gpupass/internal/gpu"
)

// TestReplayGPUHost replays what a real H200 host showed (scripts/gpu-metrics/proof.sh,
// testdata/h200): cudaalloc held 1 GiB through the CUDA driver API from inside the cgroup
// lxc.payload.9901; NVML's process list (nvml-snapshot.txt, from gpupass-host-agent
// gpu-snapshot) and /proc/<pid>/cgroup go through the real Collector, and its
// per-container series must be the lines the host agent's /metrics served there
// (metrics.txt). NVML counts the process's CUDA context too, so the container's memory is
// at least the allocation.
func TestReplayGPUHost(t *testing.T) {
	replayGPUHost(t, filepath.Join("testdata", "h200"), "9901")
}

// TestReplayGPUHostLXC replays the same proof in a REAL LXC container on an H200 host
// (scripts/gpu-metrics/lxc-proof.sh, testdata/h200-lxc): container 901 (busybox, no NVIDIA
// files in its template, driver: host through our lxc.hook.mount) ran cudaalloc with the
// host's libcuda bound in by the hook; the host agent's /metrics showed its 1 GiB plus the
// CUDA context under container="901". The process sat in LXC's own attach cgroup below
// the host's (0::/process_api/core/lxc.payload.901/.lxc).
func TestReplayGPUHostLXC(t *testing.T) {
	dir := filepath.Join("testdata", "h200-lxc")
	replayGPUHost(t, dir, "901")

	// What makes it a driver: host container, as the fixture recorded it.
	for _, c := range []struct{ name, file, want string }{
		{"hook in the container config", "ct.config", "lxc.hook.mount = "},
		{"hook is ours", "ct.config", "gpupass-host-agent driver hook"},
		{"template without NVIDIA files", "log.txt", "NVIDIA files in the template: 0\n"},
		{"libcuda from the hook's bind", "log.txt", "its libcuda: /usr/lib/gpupass-driver/lib/libcuda.so."},
		{"real LXC payload cgroup", "proc-cgroup.txt", "/lxc.payload.901/"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, c.file))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), c.want) {
				t.Errorf("%s lacks %q", c.file, c.want)
			}
		})
	}
}

// replayGPUHost feeds a GPU host's recorded NVML snapshot and /proc/<pid>/cgroup through
// the real Collector and compares with the /metrics the host agent served there.
func replayGPUHost(t *testing.T, dir, container string) {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var snap Snapshot
	if err := json.Unmarshal(read("nvml-snapshot.txt"), &snap); err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(read("pid.txt")))
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, pid, "cgroup"), read("proc-cgroup.txt"), 0o644); err != nil {
		t.Fatal(err)
	}
	ver, err := gpu.ParseVersion(read("driver-version.txt"))
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{Host: "vm", ProcRoot: proc, Source: fakeSource{snap: snap}, KernelDriver: func() string { return ver.Version }}

	// The captured exposition, less the utilisation (sampled at another instant than the
	// snapshot) and the other collectors' metrics.
	names := []string{"gpupass_container_gpu_memory_used_bytes", "gpupass_container_gpu_processes",
		"gpupass_gpu_persistence_mode", "gpupass_nvml_available", "gpupass_nvml_driver_info", "gpupass_host_driver_info"}
	var want strings.Builder
	keep := false
	for _, line := range strings.Split(string(read("metrics.txt")), "\n") {
		if strings.HasPrefix(line, "# HELP ") {
			f := strings.Fields(line)
			keep = len(f) > 2 && contains(names, f[2])
		}
		if keep {
			want.WriteString(line + "\n")
		}
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want.String()), names...); err != nil {
		t.Errorf("replay differs from what the host agent served on the GPU host:\n%v", err)
	}
	if n := testutil.CollectAndCount(c, "gpupass_container_gpu_utilization_percent"); n != 1 {
		t.Errorf("%d utilisation series, want 1 (container %s on GPU 0)", n, container)
	}

	// The amount: at least what cudaalloc allocated, under the container's label.
	f := strings.Fields(string(read("cudaalloc.txt")))
	allocated, err := strconv.ParseFloat(f[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got float64
	for _, mf := range mfs {
		if mf.GetName() != "gpupass_container_gpu_memory_used_bytes" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "container" && l.GetValue() == container {
					got = m.GetGauge().GetValue()
				}
			}
		}
	}
	if got < allocated || got > allocated+(1<<30) {
		t.Errorf("container %s uses %.0f bytes, want the %.0f allocated plus a CUDA context (< 1 GiB)", container, got, allocated)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
