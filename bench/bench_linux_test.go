package bench

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) Sample {
		var s Sample
		for _, x := range v {
			s = append(s, time.Duration(x)*time.Millisecond)
		}
		return s
	}
	for _, tc := range []struct {
		name string
		s    Sample
		p    float64
		want float64
	}{
		{"median of odd", ms(3, 1, 2), 50, 2},
		{"median of even is the lower middle (nearest rank)", ms(4, 1, 3, 2), 50, 2},
		{"p95 of 20 is the 19th", ms(20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 95, 19},
		{"p99 of 20 is the maximum", ms(5, 1, 9, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), 99, 20},
		{"single", ms(7), 99, 7},
		{"sub-millisecond", Sample{1500 * time.Microsecond}, 50, 1.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.s.Percentile(tc.p); got != tc.want {
				t.Errorf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
	if got := (Sample{}).Median(); !math.IsNaN(got) {
		t.Errorf("median of nothing = %v, want NaN", got)
	}
}

func TestAimMet(t *testing.T) {
	for _, tc := range []struct {
		name string
		aim  Aim
		want bool
	}{
		{"at most, under", Aim{Value: 31, Want: 40, AtMost: true}, true},
		{"at most, equal", Aim{Value: 40, Want: 40, AtMost: true}, true},
		{"at most, over", Aim{Value: 41, Want: 40, AtMost: true}, false},
		{"at least, over", Aim{Value: 208, Want: 50}, true},
		{"at least, under", Aim{Value: 12, Want: 50}, false},
		{"not measured never meets", Aim{Value: math.NaN(), Want: 50, AtMost: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.aim.Met(); got != tc.want {
				t.Errorf("Met() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestResultsJSON(t *testing.T) {
	s := &Section{}
	s.Add("readiness_push_median_ms", 9.7444, "ms", "")
	s.Add("status_1000_p50_ms", math.NaN(), "ms", "not measured: left out")
	s.Add("guest_binary_mib", 5.5, "MiB", "")
	r := &Results{Sections: []*Section{s}, Ratios: []Figure{{Key: "ratio_poll2s_over_push", Value: 207.6123}}}
	got, err := r.JSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "guest_binary_mib": 5.5,
  "ratio_poll2s_over_push": 207.612,
  "readiness_push_median_ms": 9.744
}
`
	if diff := cmp.Diff(string(got), want); diff != "" {
		t.Errorf("JSON (-got +want):\n%s", diff)
	}
	if v := r.Value("ratio_poll2s_over_push"); v != 207.6123 {
		t.Errorf("Value(ratio) = %v", v)
	}
}

func TestMarkdownNamesEveryFigureAndAim(t *testing.T) {
	s := &Section{Title: "1. Readiness", Method: "how", Limits: []string{"the interval"}}
	s.Add("readiness_push_median_ms", 9.7, "ms", "push")
	r := &Results{Sections: []*Section{s}, Aims: []Aim{{Text: "push vs polling", Value: 12, Want: 50, Unit: "x"}}}
	md := string(r.Markdown())
	for _, want := range []string{"`readiness_push_median_ms` | 9.70 | ms | push", "| push vs polling | 12.0 x | >= 50.0 x | **missed** |", "## 1. Readiness", "- the interval", "SIMULATED"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestFailures(t *testing.T) {
	out := `{"hosts":[{"name":"a","error":"","elapsed_ms":12},{"name":"b","error":"connection refused","elapsed_ms":3}],
	"containers":[{"host":"a","id":"1","state":"ready"},{"host":"b","id":"1","state":"unreachable"}]}`
	got := failures([]byte(out))
	want := "2 hosts, slowest answer 12 ms, container states map[ready:1 unreachable:1], host errors map[connection refused:1]"
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("failures (-got +want):\n%s", diff)
	}
}
