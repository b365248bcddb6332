package gpumetrics

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names (docs/metrics.md); the dashboard and alert tests check theirs against the
// registry, not against this list.
var (
	descMemory = prometheus.NewDesc("gpupass_container_gpu_memory_used_bytes",
		"GPU memory used by the processes of the container on the GPU (NVML per-process lists, mapped through /proc/<pid>/cgroup). Absent without NVML.",
		[]string{"host", "container", "gpu", "gpu_uuid"}, nil)
	descUtil = prometheus.NewDesc("gpupass_container_gpu_utilization_percent",
		"SM (compute) utilisation of the container's processes on the GPU over NVML's last sample window, summed, capped at 100. Absent without NVML.",
		[]string{"host", "container", "gpu", "gpu_uuid"}, nil)
	descProcs = prometheus.NewDesc("gpupass_container_gpu_processes",
		"Processes of the container using the GPU. Absent without NVML.",
		[]string{"host", "container", "gpu", "gpu_uuid"}, nil)
	descNVML = prometheus.NewDesc("gpupass_nvml_available",
		"1 when the host agent could load NVML (libnvidia-ml.so.1) and read the GPUs, 0 otherwise.",
		[]string{"host"}, nil)
	descPersist = prometheus.NewDesc("gpupass_gpu_persistence_mode",
		"1 when the GPU's persistence mode is on (NVML). Absent without NVML.",
		[]string{"host", "gpu", "gpu_uuid"}, nil)
	descKernelDriver = prometheus.NewDesc("gpupass_host_driver_info",
		"The loaded NVIDIA kernel module's version (/proc/driver/nvidia/version), as a label. Absent when no driver is loaded.",
		[]string{"host", "driver_version"}, nil)
	descNVMLDriver = prometheus.NewDesc("gpupass_nvml_driver_info",
		"The driver version NVML (the host's userspace library) reports, as a label; compare with gpupass_host_driver_info (the kernel module). Absent without NVML.",
		[]string{"host", "driver_version"}, nil)
)

// Collector exports the NVML-based metrics at each scrape.
type Collector struct {
	Host     string
	ProcRoot string // /proc of the host
	Source   Source // nil: no NVML (only gpupass_nvml_available 0)
	// KernelDriver reads the loaded kernel module's version ("" when none is loaded).
	KernelDriver func() string
	// MinInterval caches a snapshot this long (scrapes from several Prometheus servers).
	MinInterval time.Duration

	mu   sync.Mutex
	at   time.Time
	snap Snapshot
	err  error
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMemory, descUtil, descProcs, descNVML, descPersist, descNVMLDriver, descKernelDriver} {
		ch <- d
	}
}

func (c *Collector) snapshot() (Snapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Source == nil {
		return Snapshot{}, ErrNoNVML
	}
	if !c.at.IsZero() && time.Since(c.at) < c.MinInterval {
		return c.snap, c.err
	}
	c.snap, c.err = c.Source.Snapshot()
	c.at = time.Now()
	return c.snap, c.err
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.KernelDriver != nil {
		if v := c.KernelDriver(); v != "" {
			ch <- prometheus.MustNewConstMetric(descKernelDriver, prometheus.GaugeValue, 1, c.Host, v)
		}
	}
	snap, err := c.snapshot()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(descNVML, prometheus.GaugeValue, 0, c.Host)
		if !errors.Is(err, ErrNoNVML) {
			ch <- prometheus.NewInvalidMetric(descNVML, err)
		}
		return
	}
	ch <- prometheus.MustNewConstMetric(descNVML, prometheus.GaugeValue, 1, c.Host)
	if snap.Driver != "" {
		ch <- prometheus.MustNewConstMetric(descNVMLDriver, prometheus.GaugeValue, 1, c.Host, snap.Driver)
	}
	for _, g := range snap.GPUs {
		if g.Persistence != nil {
			v := 0.0
			if *g.Persistence {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descPersist, prometheus.GaugeValue, v, c.Host, strconv.Itoa(g.Index), g.UUID)
		}
	}
	for _, u := range Map(snap, c.ProcRoot) {
		labels := []string{c.Host, u.Container, strconv.Itoa(u.GPUIndex), u.GPUUUID}
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(u.MemoryBytes), labels...)
		ch <- prometheus.MustNewConstMetric(descUtil, prometheus.GaugeValue, float64(u.SMUtil), labels...)
		ch <- prometheus.MustNewConstMetric(descProcs, prometheus.GaugeValue, float64(u.Processes), labels...)
	}
}
