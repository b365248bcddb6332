package hostagent

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"gpupass/internal/atomicfile"
	"gpupass/internal/gpu"
)

// driverRecord is the loaded kernel module's version and NVIDIA majors as the agent last
// saw them; it is kept in <state_dir>/driver.json so that a change across an agent restart
// (a host driver upgrade and reboot) is noticed at start.
type driverRecord struct {
	Version string            `json:"version"`
	Majors  map[string]uint32 `json:"majors"`
}

// driverWatch notices host driver changes (docs/driver.md, "Host driver upgrades").
type driverWatch struct {
	mu      sync.Mutex
	loaded  bool
	last    driverRecord
	change  string // "host driver changed A -> B ..." since the agent started; "" none
	changes prometheus.Counter
	info    *prometheus.GaugeVec
}

func newDriverWatch(reg *prometheus.Registry) *driverWatch {
	w := &driverWatch{
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gpupass_host_driver_changes_total", Help: "Changes of the loaded NVIDIA kernel module's version or majors the agent noticed (at start against its state, or while running).",
		}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gpupass_host_driver_changed", Help: "1 after the host driver changed from one version to another (driver: host containers need a restart, own ones the new userspace).",
		}, []string{"from", "to"}),
	}
	reg.MustRegister(w.changes, w.info)
	return w
}

// describeDriverChange says what changed between two records ("" nothing).
func describeDriverChange(from, to driverRecord) string {
	var parts []string
	if from.Version != to.Version {
		parts = append(parts, fmt.Sprintf("host driver changed %s -> %s", orDefault(from.Version, "none"), orDefault(to.Version, "none")))
	}
	var majors []string
	for _, name := range slices.Sorted(maps.Keys(mergeKeys(from.Majors, to.Majors))) {
		a, okA := from.Majors[name]
		b, okB := to.Majors[name]
		switch {
		case okA && okB && a != b:
			majors = append(majors, fmt.Sprintf("%s %d -> %d", name, a, b))
		case okA && !okB:
			majors = append(majors, fmt.Sprintf("%s %d -> gone", name, a))
		case !okA && okB && len(from.Majors) > 0:
			majors = append(majors, fmt.Sprintf("%s new %d", name, b))
		}
	}
	if len(majors) > 0 {
		parts = append(parts, "device majors changed: "+strings.Join(majors, ", "))
	}
	return strings.Join(parts, "; ")
}

func mergeKeys(a, b map[string]uint32) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// noteDriver compares what discovery found with the last record (loaded from the state
// directory the first time) and records a change: log, metrics, inventory, state file.
func (a *Agent) noteDriver(inv *gpu.Inventory) {
	if inv == nil || inv.DriverVersion == "" {
		return
	}
	w := a.drv
	cur := driverRecord{Version: inv.DriverVersion, Majors: maps.Clone(inv.Majors)}
	path := filepath.Join(a.cfg.StateDir, "driver.json")
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.loaded {
		w.loaded = true
		if b, err := os.ReadFile(path); err == nil && a.cfg.StateDir != "" {
			_ = json.Unmarshal(b, &w.last)
		}
	}
	if w.last.Version == cur.Version && maps.Equal(w.last.Majors, cur.Majors) {
		return
	}
	if w.last.Version != "" {
		w.change = describeDriverChange(w.last, cur) + " at " + a.now().UTC().Format(time.RFC3339)
		w.changes.Inc()
		if w.last.Version != cur.Version {
			w.info.Reset()
			w.info.WithLabelValues(w.last.Version, cur.Version).Set(1)
		}
		a.log.WithField("from", w.last.Version).WithField("to", cur.Version).WithField("change", w.change).Warn("host driver changed")
	}
	w.last = cur
	if a.cfg.StateDir == "" {
		return
	}
	b, _ := json.Marshal(cur)
	if err := os.MkdirAll(a.cfg.StateDir, 0o755); err == nil {
		_ = atomicfile.Write(path, b, 0o644)
	}
}

// driverChange is the change noticed since the agent started ("" none).
func (a *Agent) driverChange() string {
	a.drv.mu.Lock()
	defer a.drv.mu.Unlock()
	return a.drv.change
}

// loadedDriver is the loaded module's version as last seen ("" unknown).
func (a *Agent) loadedDriver() string {
	a.drv.mu.Lock()
	defer a.drv.mu.Unlock()
	return a.drv.last.Version
}

// watchDriver re-reads the host's driver every interval while the agent runs.
func (a *Agent) watchDriver(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			_, _ = a.discover()
		}
	}
}
