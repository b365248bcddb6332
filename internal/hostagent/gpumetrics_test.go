package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"gpupass/internal/gpumetrics"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
)

// TestGPUMetricsWithoutNVML: the service's GPU metrics on a host without NVML (this one:
// the real dlopen of libnvidia-ml.so.1 fails): gpupass_nvml_available 0, the per-container
// series absent (not zero), and the Xids of the host root's kernel log (a fixture at
// dev/kmsg) counted.
func TestGPUMetricsWithoutNVML(t *testing.T) {
	if n, err := gpumetrics.OpenNVML(); err == nil {
		n.Close()
		t.Skip("this host has NVML: TestReplayGPUHost covers it")
	}
	root := t.TempDir()
	kmsg, err := os.ReadFile(filepath.Join("..", "gpumetrics", "testdata", "kmsg.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "dev", "kmsg"), kmsg, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := hostconfig.Default()
	cfg.HostRoot = root
	m := NewMetrics()
	stop := startGPUMetrics(context.Background(), cfg, m, log.Component(log.New(log.Options{Out: testWriter{t}}), "test"))
	want := `
# HELP gpupass_nvml_available 1 when the host agent could load NVML (libnvidia-ml.so.1) and read the GPUs, 0 otherwise.
# TYPE gpupass_nvml_available gauge
gpupass_nvml_available{host="` + hostname(t) + `"} 0
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "gpupass_nvml_available", "gpupass_container_gpu_memory_used_bytes", "gpupass_container_gpu_utilization_percent"); err != nil {
		t.Error(err)
	}
	stop() // the fixture ends: once Follow has returned every line is counted
	n, err := testutil.GatherAndCount(m.Registry(), "gpupass_gpu_xid_errors_total")
	if err != nil || n != 2 {
		t.Errorf("%d Xid series (%v), want 2 (the fixture's two GPUs)", n, err)
	}
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
