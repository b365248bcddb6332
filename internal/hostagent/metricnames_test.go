package hostagent

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"gpupass/internal/gpumetrics"
	"gpupass/internal/hostconfig"
	pb "gpupass/proto/gpupass/v1"
)

// exportedNames are the metric names the host agent's /metrics serves, with the label
// names of each, from the real registry: NewMetrics, the GPU collector and the Xid counter
// as Service.Run registers them, fed with the H200 recording
// (internal/gpumetrics/testdata/h200) and one value of each vector so that every family
// shows.
func exportedNames(t *testing.T) (map[string]bool, map[string]map[string]bool) {
	t.Helper()
	m := NewMetrics()
	fx := filepath.Join("..", "gpumetrics", "testdata", "h200")
	var snap gpumetrics.Snapshot
	b, err := os.ReadFile(filepath.Join(fx, "nvml-snapshot.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &snap); err != nil {
		t.Fatal(err)
	}
	proc := t.TempDir()
	pid := strings.TrimSpace(string(mustRead(t, filepath.Join(fx, "pid.txt"))))
	if err := os.MkdirAll(filepath.Join(proc, pid), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, pid, "cgroup"), mustRead(t, filepath.Join(fx, "proc-cgroup.txt")), 0o644); err != nil {
		t.Fatal(err)
	}
	c := gpuCollector(hostconfig.Default(), "pve1")
	c.ProcRoot, c.Source = proc, gpumetrics.Recorded{Snap: snap}
	c.KernelDriver = func() string { return snap.Driver }
	m.Register(c)
	xid := gpumetrics.NewXidCounter(m.reg, "pve1")
	f, err := os.Open(filepath.Join("..", "gpumetrics", "testdata", "kmsg.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := xid.Follow(context.Background(), f); err != nil {
		t.Fatal(err)
	}
	m.setReady("901", false)
	m.setStatus("901", StateNotReady, []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DRIVER_MISMATCH, Want: "580.159.04", Got: "570.1"})})
	m.applies.WithLabelValues("ok").Inc()
	m.applyDuration.Observe(1)
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names, labels := map[string]bool{}, map[string]map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		ls := map[string]bool{}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				ls[l.GetName()] = true
			}
		}
		labels[n] = ls
		if mf.GetType().String() == "HISTOGRAM" {
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
			labels[n+"_bucket"] = map[string]bool{"le": true}
			for l := range ls {
				labels[n+"_bucket"][l] = true
			}
			labels[n+"_sum"], labels[n+"_count"] = ls, ls
		}
	}
	return names, labels
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	metricRe   = regexp.MustCompile(`\bgpupass_[a-z0-9_]+`)
	selectorRe = regexp.MustCompile(`\b(gpupass_[a-z0-9_]+)\{([^}]*)\}`)
	matcherRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// unknownLabels lists, as "metric{label}", the label matchers of the gpupass_ selectors in
// the expressions that name a label the metric does not have (instance and job, which the
// scrape adds, are every metric's).
func unknownLabels(exprs []string, labels map[string]map[string]bool) []string {
	var out []string
	for _, e := range exprs {
		for _, sel := range selectorRe.FindAllStringSubmatch(e, -1) {
			for _, m := range matcherRe.FindAllStringSubmatch(sel[2], -1) {
				if l := m[1]; l != "instance" && l != "job" && !labels[sel[1]][l] {
					out = append(out, sel[1]+"{"+l+"}")
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

// unknownNames lists the gpupass_ metric names in the expressions that are not exported.
func unknownNames(exprs []string, exported map[string]bool) (used, unknown []string) {
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricRe.FindAllString(e, -1) {
			if seen[n] {
				continue
			}
			seen[n] = true
			used = append(used, n)
			if !exported[n] {
				unknown = append(unknown, n)
			}
		}
	}
	sort.Strings(used)
	sort.Strings(unknown)
	return used, unknown
}

// dashboardExprs is every "expr" in a Grafana dashboard's JSON.
func dashboardExprs(t *testing.T, path string) []string {
	var v any
	if err := json.Unmarshal(mustRead(t, path), &v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, v := range x {
				if s, ok := v.(string); ok && k == "expr" {
					out = append(out, s)
				}
				walk(v)
			}
		case []any:
			for _, v := range x {
				walk(v)
			}
		}
	}
	walk(v)
	return out
}

// alertExprs is every rule's expr in a Prometheus rules file.
func alertExprs(t *testing.T, path string) []string {
	var f struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(mustRead(t, path), &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			out = append(out, r.Expr)
		}
	}
	return out
}

// TestDashboardAndAlertMetricNames: every gpupass_ metric that packaging/grafana/gpupass.json
// and packaging/prometheus/alerts.yml use is one the host agent really exports, every label
// their selectors match on is one that metric has, and each uses the per-container and
// fleet metrics issue 18 asks for.
func TestDashboardAndAlertMetricNames(t *testing.T) {
	exported, labels := exportedNames(t)
	root := filepath.Join("..", "..", "packaging")
	tests := []struct {
		name     string
		exprs    []string
		mustUse  []string
		wantBad  []string
		wantBadL []string // label matchers the metric does not have
		fromFile bool
	}{
		{name: "grafana dashboard", exprs: dashboardExprs(t, filepath.Join(root, "grafana", "gpupass.json")), fromFile: true,
			mustUse: []string{"gpupass_container_ready", "gpupass_container_not_ready_reason", "gpupass_host_driver_info", "gpupass_container_gpu_memory_used_bytes", "gpupass_container_gpu_utilization_percent"}},
		{name: "alert rules", exprs: alertExprs(t, filepath.Join(root, "prometheus", "alerts.yml")), fromFile: true,
			mustUse: []string{"gpupass_container_ready", "gpupass_apply_total", "gpupass_nvml_driver_info"}},
		{name: "a misspelt name is caught", exprs: []string{`sum(gpupass_container_gpu_memory_bytes) and gpupass_container_ready`}, wantBad: []string{"gpupass_container_gpu_memory_bytes"}},
		{name: "a label the metric lacks is caught (the reason text, dropped for the kind)", exprs: []string{`gpupass_container_not_ready_reason{reason=~"driver.*", kind="DriverMismatch", instance!=""} == 1`}, wantBadL: []string{"gpupass_container_not_ready_reason{reason}"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			used, bad := unknownNames(tt.exprs, exported)
			if diff := cmp.Diff(bad, tt.wantBad); diff != "" {
				t.Errorf("names not exported by the host agent (-got +want):\n%s\nexported: %v", diff, keys(exported))
			}
			if diff := cmp.Diff(unknownLabels(tt.exprs, labels), tt.wantBadL); diff != "" {
				t.Errorf("label matchers on labels the metric does not have (-got +want):\n%s", diff)
			}
			if tt.fromFile && len(used) == 0 {
				t.Fatalf("no gpupass_ metric found in the expressions: %q", tt.exprs)
			}
			for _, n := range tt.mustUse {
				if !contains(used, n) {
					t.Errorf("does not use %s (uses %v)", n, used)
				}
			}
		})
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
