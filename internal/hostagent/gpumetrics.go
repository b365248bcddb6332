package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/sirupsen/logrus"

	"gpupass/internal/gpu"
	"gpupass/internal/gpumetrics"
	"gpupass/internal/hostconfig"
)

// startGPUMetrics registers the GPU metrics (docs/metrics.md): NVML, loaded at run time
// and never required, for the per-container GPU memory and utilisation; the kernel
// module's version; Xid errors followed in the kernel log. It returns what stops them.
func startGPUMetrics(ctx context.Context, cfg *hostconfig.Config, m *Metrics, l *logrus.Entry) func() {
	host, _ := os.Hostname()
	c := gpuCollector(cfg, host)
	var stops []func()
	if cfg.Simulated {
		l.Info("simulated GPU host: no NVML, per-container GPU metrics absent")
	} else if n, err := gpumetrics.OpenNVML(); err != nil {
		l.WithError(err).Info("NVML not available: per-container GPU metrics absent")
	} else {
		c.Source = n
		stops = append(stops, func() { _ = n.Close() })
	}
	m.Register(c)
	if inv, _ := gpu.Discover(cfg.HostRoot); inv != nil {
		m.gpus.Set(float64(len(inv.GPUs))) // before any controller asks
	}
	xid := gpumetrics.NewXidCounter(m.reg, host)
	if f, err := os.Open(filepath.Join(cfg.HostRoot, "dev", "kmsg")); err != nil {
		l.WithError(err).Info("kernel log not readable: Xid errors not counted")
	} else {
		xctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := xid.Follow(xctx, f); err != nil {
				l.WithError(err).Warn("kernel log reading stopped: Xid errors no longer counted")
			}
		}()
		stops = append(stops, func() { cancel(); f.Close(); <-done })
	}
	return func() {
		for _, s := range stops {
			s()
		}
	}
}

// gpuCollector is the host's GPU metrics collector, without a Source (no NVML) yet.
func gpuCollector(cfg *hostconfig.Config, host string) *gpumetrics.Collector {
	return &gpumetrics.Collector{
		Host: host, ProcRoot: ProcRoot(cfg.HostRoot), MinInterval: time.Second,
		KernelDriver: func() string {
			inv, _ := gpu.Discover(cfg.HostRoot)
			if inv == nil {
				return ""
			}
			return inv.DriverVersion
		},
	}
}
