package hostagent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	pb "gpupass/proto/gpupass/v1"
)

// Metrics are the host agent's Prometheus metrics.
type Metrics struct {
	reg           *prometheus.Registry
	ready         *prometheus.GaugeVec
	gpus          prometheus.Gauge
	applies       *prometheus.CounterVec
	applyDuration prometheus.Histogram
	guests        prometheus.Gauge
	state         *prometheus.GaugeVec
	reason        *prometheus.GaugeVec
	drv           *driverWatch // host driver changes (driverwatch.go)
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
	m.state = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gpupass_container_state", Help: "1 for the GPU container's state at its last status (ready, not-ready, stopped, error, pending).",
	}, []string{"container", "state"})
	// The reason's kind and device, not its text: label values stay few and stable (the
	// text, with its versions, errors and times, is in gpupass status and doctor).
	m.reason = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gpupass_container_not_ready_reason", Help: "1 for each reason kind (and the device it names, \"\" none) the GPU container's last status gave.",
	}, []string{"container", "kind", "device"})
	m.drv = newDriverWatch(m.reg)
	m.reg.MustRegister(m.ready, m.gpus, m.applies, m.applyDuration, m.guests, m.state, m.reason,
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

// setStatus replaces the container's state and reason series with its last status's: one
// reason series per distinct kind and device of its details (the kind as in JSON's
// reasons_detail, pb.ReasonKindName).
func (m *Metrics) setStatus(id, state string, details []*pb.Reason) {
	m.state.DeletePartialMatch(prometheus.Labels{"container": id})
	m.state.WithLabelValues(id, state).Set(1)
	m.reason.DeletePartialMatch(prometheus.Labels{"container": id})
	for _, r := range details {
		m.reason.WithLabelValues(id, pb.ReasonKindName(r.GetKind()), r.GetDevice()).Set(1)
	}
}

// Register adds collectors (the GPU metrics of internal/gpumetrics) to the registry.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Registry is the registry /metrics serves (tests list its metric names).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
