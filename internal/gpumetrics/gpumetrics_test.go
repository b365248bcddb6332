package gpumetrics

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type fakeSource struct {
	snap Snapshot
	err  error
}

func (f fakeSource) Snapshot() (Snapshot, error) { return f.snap, f.err }

func u32(v uint32) *uint32 { return &v }
func yes() *bool           { b := true; return &b }

// fixture: two GPUs; container 901 has two processes on GPU 0 (one in a nested cgroup
// of its own, the Proxmox /lxc/<id>/ layout) and one on GPU 1; 902 one on GPU 1; the
// host's persistenced and LXC's monitor are no container's; PID 4999 exited since NVML
// listed it (no /proc entry).
var fixture = Snapshot{Driver: "580.95.05", GPUs: []GPU{
	{Index: 0, UUID: "GPU-aaaa", Persistence: yes(), Procs: []Proc{
		{PID: 4101, MemoryBytes: 1 << 30, SMUtil: u32(60)},
		{PID: 4102, MemoryBytes: 512 << 20, SMUtil: u32(70)},
		{PID: 4300, MemoryBytes: 1 << 20},
		{PID: 4999, MemoryBytes: 4 << 30},
	}},
	{Index: 1, UUID: "GPU-bbbb", Procs: []Proc{
		{PID: 4200, MemoryBytes: 2 << 30, SMUtil: u32(95)},
		{PID: 4101, MemoryBytes: 256 << 20},
		{PID: 4400, MemoryBytes: 1 << 20},
	}},
}}

// TestMap: processes land on their containers through /proc/<pid>/cgroup (fixture tree),
// summed per container and GPU; utilisation sums cap at 100; host processes, LXC's
// monitor and exited processes are left out.
func TestMap(t *testing.T) {
	got := Map(fixture, "testdata/proc")
	want := []Usage{
		{Container: "901", GPUIndex: 0, GPUUUID: "GPU-aaaa", MemoryBytes: 1<<30 + 512<<20, SMUtil: 100, Processes: 2},
		{Container: "901", GPUIndex: 1, GPUUUID: "GPU-bbbb", MemoryBytes: 256 << 20, SMUtil: 0, Processes: 1},
		{Container: "902", GPUIndex: 1, GPUUUID: "GPU-bbbb", MemoryBytes: 2 << 30, SMUtil: 95, Processes: 1},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("Map (-got +want):\n%s", diff)
	}
}

// TestCollector: the exposition of a snapshot (with labels host, container, gpu,
// gpu_uuid), and a host without NVML: only gpupass_nvml_available 0, the per-container
// series absent rather than zero.
func TestCollector(t *testing.T) {
	tests := []struct {
		name string
		src  Source
		want string
	}{
		{"nvml", fakeSource{snap: fixture}, `
# HELP gpupass_container_gpu_memory_used_bytes GPU memory used by the processes of the container on the GPU (NVML per-process lists, mapped through /proc/<pid>/cgroup). Absent without NVML.
# TYPE gpupass_container_gpu_memory_used_bytes gauge
gpupass_container_gpu_memory_used_bytes{container="901",gpu="0",gpu_uuid="GPU-aaaa",host="pve1"} 1.610612736e+09
gpupass_container_gpu_memory_used_bytes{container="901",gpu="1",gpu_uuid="GPU-bbbb",host="pve1"} 2.68435456e+08
gpupass_container_gpu_memory_used_bytes{container="902",gpu="1",gpu_uuid="GPU-bbbb",host="pve1"} 2.147483648e+09
# HELP gpupass_gpu_persistence_mode 1 when the GPU's persistence mode is on (NVML). Absent without NVML.
# TYPE gpupass_gpu_persistence_mode gauge
gpupass_gpu_persistence_mode{gpu="0",gpu_uuid="GPU-aaaa",host="pve1"} 1
# HELP gpupass_nvml_available 1 when the host agent could load NVML (libnvidia-ml.so.1) and read the GPUs, 0 otherwise.
# TYPE gpupass_nvml_available gauge
gpupass_nvml_available{host="pve1"} 1
`},
		{"no nvml", nil, `
# HELP gpupass_nvml_available 1 when the host agent could load NVML (libnvidia-ml.so.1) and read the GPUs, 0 otherwise.
# TYPE gpupass_nvml_available gauge
gpupass_nvml_available{host="pve1"} 0
`},
		{"nvml not found at run time", fakeSource{err: ErrNoNVML}, `
# HELP gpupass_nvml_available 1 when the host agent could load NVML (libnvidia-ml.so.1) and read the GPUs, 0 otherwise.
# TYPE gpupass_nvml_available gauge
gpupass_nvml_available{host="pve1"} 0
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Collector{Host: "pve1", ProcRoot: "testdata/proc", Source: tt.src}
			names := []string{"gpupass_container_gpu_memory_used_bytes", "gpupass_gpu_persistence_mode", "gpupass_nvml_available", "gpupass_container_gpu_utilization_percent"}
			if tt.name == "nvml" {
				names = names[:3]
			}
			if err := testutil.CollectAndCompare(c, strings.NewReader(tt.want), names...); err != nil {
				t.Error(err)
			}
			if tt.name != "nvml" {
				if n := testutil.CollectAndCount(c, "gpupass_container_gpu_memory_used_bytes", "gpupass_container_gpu_utilization_percent"); n != 0 {
					t.Errorf("%d per-container series without NVML, want none (absent, not zero)", n)
				}
			}
		})
	}
	// A failing NVML (not a missing one) is a scrape error, not silence.
	c := &Collector{Host: "pve1", Source: fakeSource{err: errors.New("GPU 0 (NVML): Unknown Error")}}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "Unknown Error") {
		t.Errorf("gather with a failing NVML: %v, want the NVML error", err)
	}
}

// TestParseXid: Xid lines from /dev/kmsg and dmesg; other lines are not Xids.
func TestParseXid(t *testing.T) {
	tests := []struct {
		name, line, pci, xid string
		ok                   bool
	}{
		{"kmsg", "3,1203,90000000,-;NVRM: Xid (PCI:0000:3B:00): 79, pid=4101, name=python3, GPU has fallen off the bus.", "0000:3b:00", "79", true},
		{"dmesg", "[   90.000000] NVRM: Xid (PCI:0000:86:00): 13, pid=4200, name=train, Graphics SM Warp Exception", "0000:86:00", "13", true},
		{"not xid", "4,1002,5100000,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  580.95.05", "", "", false},
		{"garbage", ";;;", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pci, xid, ok := ParseXid(tt.line)
			if pci != tt.pci || xid != tt.xid || ok != tt.ok {
				t.Errorf("ParseXid = %q, %q, %v; want %q, %q, %v", pci, xid, ok, tt.pci, tt.xid, tt.ok)
			}
		})
	}
}

// TestXidFollow: a kernel log fixture (the /dev/kmsg record format) counted per GPU and Xid.
func TestXidFollow(t *testing.T) {
	f, err := os.Open("testdata/kmsg.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reg := prometheus.NewRegistry()
	x := NewXidCounter(reg, "pve1")
	if err := x.Follow(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP gpupass_gpu_xid_errors_total NVIDIA Xid errors in the kernel log (since boot, as far as /dev/kmsg still holds them), by GPU PCI address and Xid.
# TYPE gpupass_gpu_xid_errors_total counter
gpupass_gpu_xid_errors_total{host="pve1",pci="0000:3b:00",xid="79"} 2
gpupass_gpu_xid_errors_total{host="pve1",pci="0000:86:00",xid="13"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
