package hostagent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the host agent's Prometheus metrics.
type Metrics struct {
	reg           *prometheus.Registry
	ready         *prometheus.GaugeVec
	gpus          prometheus.Gauge
	applies       *prometheus.CounterVec
	applyDuration prometheus.Histogram
	guests        prometheus.Gauge
}

// NewMetrics registers the metrics on a fresh registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		ready: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "gpupass_container_ready", Help: "1 when the GPU container is ready, 0 otherwise.",
		}, []string{"container"}),
		gpus: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gpupass_host_gpus", Help: "NVIDIA GPUs the host's driver lists.",
		}),
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "gpupass_apply_total", Help: "Container applies by result (ok, not-ready, error).",
		}, []string{"result"}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "gpupass_apply_duration_seconds", Help: "Duration of one container's apply, readiness wait included.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
		}),
		guests: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gpupass_guests_connected", Help: "Guest agents connected now.",
		}),
	}
	m.reg.MustRegister(m.ready, m.gpus, m.applies, m.applyDuration, m.guests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *Metrics) setReady(id string, ready bool) {
	v := 0.0
	if ready {
		v = 1
	}
	m.ready.WithLabelValues(id).Set(v)
}

// Register adds collectors (the GPU metrics of internal/gpumetrics) to the registry.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Registry is the registry /metrics serves (tests list its metric names).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
