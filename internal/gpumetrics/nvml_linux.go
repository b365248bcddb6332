package gpumetrics

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// NVML is the real Source: NVIDIA's go-nvml, which dlopens libnvidia-ml.so.1 at Open.
type NVML struct {
	mu   sync.Mutex
	lib  nvml.Interface
	last map[string]uint64 // per GPU UUID: the newest utilisation sample's timestamp
}

// OpenNVML loads and initialises NVML. A host without the library gets ErrNoNVML.
func OpenNVML() (*NVML, error) {
	lib := nvml.New()
	if ret := lib.Init(); ret != nvml.SUCCESS {
		if ret == nvml.ERROR_LIBRARY_NOT_FOUND || ret == nvml.ERROR_DRIVER_NOT_LOADED {
			return nil, fmt.Errorf("%w: %v", ErrNoNVML, nvml.ErrorString(ret))
		}
		return nil, fmt.Errorf("initialise NVML: %v", nvml.ErrorString(ret))
	}
	return &NVML{lib: lib, last: map[string]uint64{}}, nil
}

// Close shuts NVML down.
func (n *NVML) Close() error {
	if ret := n.lib.Shutdown(); ret != nvml.SUCCESS {
		return fmt.Errorf("shut NVML down: %v", nvml.ErrorString(ret))
	}
	return nil
}

// Snapshot implements Source.
func (n *NVML) Snapshot() (Snapshot, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var s Snapshot
	v, ret := n.lib.SystemGetDriverVersion()
	if ret == nvml.SUCCESS {
		s.Driver = v
	}
	count, ret := n.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return s, fmt.Errorf("count GPUs (NVML): %v", nvml.ErrorString(ret))
	}
	var errs []error
	for i := 0; i < count; i++ {
		dev, ret := n.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("GPU %d (NVML): %v", i, nvml.ErrorString(ret)))
			continue
		}
		g := GPU{Index: i}
		g.UUID, _ = dev.GetUUID()
		if m, ret := dev.GetPersistenceMode(); ret == nvml.SUCCESS {
			on := m == nvml.FEATURE_ENABLED
			g.Persistence = &on
		}
		procs, ret := dev.GetComputeRunningProcesses()
		if ret != nvml.SUCCESS {
			errs = append(errs, fmt.Errorf("GPU %d processes (NVML): %v", i, nvml.ErrorString(ret)))
		}
		// Utilisation samples newer than the last scrape's (NVML keeps a short window).
		util := map[uint32]uint32{}
		since := n.last[g.UUID]
		if since == 0 {
			since = uint64(time.Now().Add(-10 * time.Second).UnixMicro())
		}
		samples, uret := dev.GetProcessUtilization(since)
		if uret == nvml.SUCCESS {
			for _, smp := range samples {
				if smp.TimeStamp > n.last[g.UUID] {
					n.last[g.UUID] = smp.TimeStamp
				}
				util[smp.Pid] = max(util[smp.Pid], smp.SmUtil)
			}
		}
		for _, p := range procs {
			if validPID(int(p.Pid)) != nil {
				continue
			}
			pr := Proc{PID: int(p.Pid), MemoryBytes: p.UsedGpuMemory}
			if u, ok := util[p.Pid]; ok {
				pr.SMUtil = &u
			} else if uret == nvml.SUCCESS || uret == nvml.ERROR_NOT_FOUND {
				// Sampled, and this process had no sample: it did not compute (NVML
				// answers NOT_FOUND when no process did).
				zero := uint32(0)
				pr.SMUtil = &zero
			}
			g.Procs = append(g.Procs, pr)
		}
		s.GPUs = append(s.GPUs, g)
	}
	return s, errors.Join(errs...)
}
