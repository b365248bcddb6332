package hostagent

import (
	"context"
	"os/exec"
	"sync"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/runner"
)

// persistenceTTL is how long a reading of the GPUs' persistence mode is reused.
const persistenceTTL = time.Minute

// persistence caches the GPUs' persistence mode, which only nvidia-smi (NVML) tells: a
// GPU without it is torn down when its last user closes it, and the next open initialises
// it again (1-3 s per GPU, docs/host-agent.md).
type persistence struct {
	mu     sync.Mutex
	runner runner.Runner // set by Prepare; nil: unknown
	at     time.Time
	modes  map[string]string // normalised bus id -> gpu.PersistenceEnabled|Disabled
}

// persistenceModes returns the modes by bus id, read at most once per persistenceTTL
// when refresh is set (host.Inventory, which doctor asks), else the last reading. It is
// empty on a test or simulated host root (the nvidia-smi here would describe another
// machine's GPUs) and where nvidia-smi is not installed.
func (a *Agent) persistenceModes(ctx context.Context, refresh bool) map[string]string {
	p := &a.persist
	p.mu.Lock()
	defer p.mu.Unlock()
	if !refresh || p.runner == nil || (a.cfg.HostRoot != "" && a.cfg.HostRoot != "/") || time.Since(p.at) < persistenceTTL {
		return p.modes
	}
	p.at = time.Now()
	smi, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return p.modes
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := p.runner.Run(ctx, append([]string{smi}, gpu.PersistenceArgs...)...)
	if err == nil {
		var modes map[string]string
		if modes, err = gpu.ParsePersistence(out); err == nil {
			p.modes = modes
		}
	}
	if err != nil {
		a.log.WithError(err).Warn("cannot read the GPUs' persistence mode")
	}
	return p.modes
}
