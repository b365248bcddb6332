// Package gpumetrics gives the host agent the GPU metrics no other GPU-on-LXC tool gives:
// per container, from the host and without exec, the GPU memory and compute utilisation of
// the processes in that container (NVML's per-process lists mapped to containers through
// /proc/<pid>/cgroup), and per host the driver version, the GPUs' persistence mode and the
// Xid errors the kernel logged. NVML is loaded at run time (dlopen of libnvidia-ml.so.1)
// and never required: without it the per-container series are absent, not zero.
package gpumetrics

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"gpupass/internal/guestchan"
)

// ErrNoNVML: the NVML library is not there (no driver userspace on this host).
var ErrNoNVML = errors.New("NVML not available")

// Source reads the GPUs' state; NVML is the real one, tests use a fake.
type Source interface {
	Snapshot() (Snapshot, error)
}

// Recorded is a Source that answers a recorded snapshot (gpupass-host-agent gpu-snapshot
// output): for replaying what a GPU host showed.
type Recorded struct{ Snap Snapshot }

// Snapshot implements Source.
func (r Recorded) Snapshot() (Snapshot, error) { return r.Snap, nil }

// Snapshot is what NVML says now.
type Snapshot struct {
	Driver string
	GPUs   []GPU
}

// GPU is one device and the processes using it.
type GPU struct {
	Index       int
	UUID        string
	Persistence *bool // nil: NVML could not say
	Procs       []Proc
}

// Proc is one process on a GPU (host PID namespace).
type Proc struct {
	PID         int
	MemoryBytes uint64
	SMUtil      *uint32 // percent over NVML's last sample window; nil: no sample
}

// Usage is what one container uses on one GPU.
type Usage struct {
	Container   string
	GPUIndex    int
	GPUUUID     string
	MemoryBytes uint64
	SMUtil      uint32 // sum over the container's processes, capped at 100
	Processes   int
}

// Map assigns each process of snap to the container whose cgroup it is in
// (procRoot/<pid>/cgroup, read by guestchan.ContainerOfCgroup) and sums per container and
// GPU. Processes of the host, or gone since NVML listed them, are left out. The result is
// sorted by container, then GPU index.
func Map(snap Snapshot, procRoot string) []Usage {
	type key struct {
		ct  string
		gpu int
	}
	sums := map[key]*Usage{}
	for _, g := range snap.GPUs {
		for _, p := range g.Procs {
			ct, ok := containerOf(procRoot, p.PID)
			if !ok {
				continue
			}
			k := key{ct, g.Index}
			u := sums[k]
			if u == nil {
				u = &Usage{Container: ct, GPUIndex: g.Index, GPUUUID: g.UUID}
				sums[k] = u
			}
			u.MemoryBytes += p.MemoryBytes
			if p.SMUtil != nil {
				u.SMUtil = min(u.SMUtil+*p.SMUtil, 100)
			}
			u.Processes++
		}
	}
	out := make([]Usage, 0, len(sums))
	for _, u := range sums {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Container != out[j].Container {
			return out[i].Container < out[j].Container
		}
		return out[i].GPUIndex < out[j].GPUIndex
	})
	return out
}

// containerOf reads the cgroup v2 line ("0::/path") of pid and names its container.
func containerOf(procRoot string, pid int) (string, bool) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return guestchan.ContainerOfCgroup(path)
		}
	}
	return "", false
}

// validPID guards against a PID NVML reports as 0 (a process it cannot name).
func validPID(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("pid %d", pid)
	}
	return nil
}
