package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"time"

	"gpupass/internal/buildinfo"
)

// Options configure a run.
type Options struct {
	Bin, Work      string
	JSON, Markdown string
	Only           string // comma-separated section names; "" = all
	Merge          bool   // write the figures of an -only run into the existing JSON and Markdown
	Runs           int    // readiness runs per method
	Profile        string // directory for CPU profiles; "" = none
	FleetSizes     []int  // default 1, 10, 100, 1000
}

// Machine describes where the run happened.
type Machine struct {
	CPU, Memory, Kernel, OS, Go, LXC, Build, Date string
	Cores                                         int
}

type section struct {
	name string
	run  func(ctx context.Context, e *Env, r *Results) error
}

// Run runs the selected sections and writes the results. A failing section is reported
// in the results and the error, and the others still run.
func Run(ctx context.Context, o Options, out io.Writer) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: it starts LXC containers and makes cgroups")
	}
	if !isCgroup2("/sys/fs/cgroup") {
		return fmt.Errorf("/sys/fs/cgroup is not cgroup2: run through scripts/bench.sh (a private mount namespace with cgroup2 mounted, as on Proxmox)")
	}
	if o.Runs < 1 {
		o.Runs = 20
	}
	bin, err := filepath.Abs(o.Bin)
	if err != nil {
		return err
	}
	raiseNoFile()
	e := &Env{Bin: bin, Work: o.Work, Out: out, ProfileDir: o.Profile, FleetSizes: o.FleetSizes}
	defer e.Close()
	if err := e.Setup(); err != nil {
		return err
	}
	start := time.Now()
	r := &Results{Machine: machine(bin)}
	want := map[string]bool{}
	for _, s := range strings.Split(o.Only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			want[s] = true
		}
	}
	sections := []section{
		{"readiness", func(ctx context.Context, e *Env, r *Results) error { return readinessSection(ctx, e, r, o.Runs) }},
		{"fleet", fleetSection},
		{"hostagent", hostAgentSection},
		{"guest", guestSection},
		{"apply", applySection},
		{"boot", bootSection},
		{"pct", pctSection},
	}
	var failed, measured []string
	for _, s := range sections {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(out, "== %s\n", s.name)
		t := time.Now()
		load0 := loadavg()
		nsec := len(r.Sections)
		err := s.run(ctx, e, r)
		if len(r.Sections) > nsec {
			r.Sections[nsec].Load = fmt.Sprintf("load average (1 min) %s at the start of this section, %s at its end", load0, loadavg())
		}
		if err != nil {
			fmt.Fprintf(out, "  FAILED: %v\n", err)
			r.Errors = append(r.Errors, s.name+": "+err.Error())
			failed = append(failed, s.name)
			if o.Merge && len(r.Sections) > nsec {
				r.Sections = r.Sections[:nsec] // a failed section never replaces a good one
			}
		} else if len(r.Sections) > nsec {
			measured = append(measured, s.name) // not a skipped one
		}
		fmt.Fprintf(out, "  (%s took %.0f s)\n", s.name, time.Since(t).Seconds())
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted: nothing written: %w", ctx.Err())
	}
	r.Seconds = time.Since(start).Seconds()
	finish(r)
	print(out, r)
	write := func() error { return r.Write(o.JSON, o.Markdown) }
	if o.Merge {
		if o.Only == "" {
			return fmt.Errorf("-merge needs -only: a full run writes everything")
		}
		// The ratios and aims come from the merged figures: this run's over the last ones.
		if err := mergeAims(r, o.JSON); err != nil {
			return err
		}
		write = func() error {
			if len(measured) == 0 {
				fmt.Fprintln(out, "nothing measured: nothing merged")
				return nil
			}
			return r.WriteMerged(o.JSON, o.Markdown, strings.Join(measured, ","))
		}
	}
	if err := write(); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %s and %s\n", o.JSON, o.Markdown)
	if len(failed) > 0 {
		return fmt.Errorf("sections failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// mergeAims recomputes r's ratios and aims from the figures in jsonPath overlaid with r's.
func mergeAims(r *Results, jsonPath string) error {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return fmt.Errorf("merge results: %w", err)
	}
	m := map[string]float64{}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("merge results: %s: %w", jsonPath, err)
	}
	for _, s := range r.Sections {
		for _, f := range s.Figures {
			m[f.Key] = f.Value
		}
	}
	all := &Section{}
	for k, v := range m {
		if !strings.HasPrefix(k, "ratio_") {
			all.Add(k, v, "", "")
		}
	}
	merged := &Results{Sections: []*Section{all}}
	finish(merged)
	r.Ratios, r.Aims = merged.Ratios, merged.Aims
	return nil
}

// finish computes the ratios against the baselines and judges the aims.
func finish(r *Results) {
	v := r.Value
	ratio := func(key string, a, b float64, what string) {
		if !math.IsNaN(a) && !math.IsNaN(b) && b > 0 {
			r.Ratios = append(r.Ratios, Figure{Key: key, Value: a / b, Unit: "x", What: what})
		}
	}
	ratio("ratio_poll2s_over_push", v("readiness_poll2s_median_ms"), v("readiness_push_median_ms"), "2 s polling median / push median")
	ratio("ratio_poll100ms_over_push", v("readiness_poll100ms_median_ms"), v("readiness_push_median_ms"), "100 ms polling median / push median")
	ratio("ratio_boot_sleep10_over_gated", v("boot_app_sleep10_median_ms"), v("boot_app_gated_median_ms"), "init → app: sleep 10 median / gated median")
	ratio("ratio_boot_gated_over_poll2s", v("boot_app_gated_median_ms"), v("boot_app_poll2s_median_ms"), "init → app: gated median / 2 s test -e loop median (the loop checks only that a path exists)")
	ratio("ratio_pct_over_lxc_status_4", v("pct_status_4_ms"), v("lxc_status_4_ms"), "pct runtime Status / lxc runtime Status, 4 stopped containers")
	ratio("ratio_pct_over_lxc_apply_4", v("pct_apply_4_configs_ms"), v("lxc_apply_4_configs_ms"), "pct runtime Apply / lxc runtime Apply, 4 configs changed")
	ratio("ratio_status_1000_sequential_over_fanout", v("status_1000_sequential_p50_ms"), v("status_1000_p50_ms"), "sequential p50 / fan-out p50, 1000 hosts")
	r.Aims = []Aim{
		{Text: "push readiness vs 2 s polling (median)", Value: v("ratio_poll2s_over_push"), Want: 50, Unit: "x"},
		{Text: "push readiness above bare start (init ran → controller sees ready, median)", Value: v("readiness_push_above_bare_median_ms"), Want: 50, Unit: "ms", AtMost: true},
		{Text: "`status` over 1000 hosts, p50 (TLS session cache warm, the CLI default; cold: `status_1000_cold_p50_ms`)", Value: v("status_1000_p50_ms"), Want: 300, Unit: "ms", AtMost: true},
		{Text: "host agent RSS with 200 guests", Value: v("host_agent_rss_200_guests_mib"), Want: 40, Unit: "MiB", AtMost: true},
		{Text: "guest agent RSS", Value: v("guest_rss_mib"), Want: 10, Unit: "MiB", AtMost: true},
	}
}

func print(out io.Writer, r *Results) {
	fmt.Fprintf(out, "\n%-44s %12s  %s\n", "figure", "value", "unit")
	for _, s := range r.Sections {
		for _, f := range s.Figures {
			fmt.Fprintf(out, "%-44s %12s  %s\n", f.Key, num(f.Value), f.Unit)
		}
	}
	for _, f := range r.Ratios {
		fmt.Fprintf(out, "%-44s %12s  %s\n", f.Key, num(f.Value), f.Unit)
	}
	fmt.Fprintln(out)
	for _, a := range r.Aims {
		mark := "met"
		if !a.Met() {
			mark = "MISSED"
		}
		fmt.Fprintf(out, "aim %-6s %s: %s %s (target %s)\n", mark, a.Text, num(a.Value), a.Unit, num(a.Want))
	}
	for _, e := range r.Errors {
		fmt.Fprintf(out, "FAILED %s\n", e)
	}
	fmt.Fprintln(out)
}

// loadavg is the 1-minute load average: other work on the machine shows in it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(b))[0]
}

func isCgroup2(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == 0x63677270 // CGROUP2_SUPER_MAGIC
}

// raiseNoFile lifts the soft open-file limit to the hard one: 1000 hosts hold a listener,
// a connection each way and two guest sockets each.
func raiseNoFile() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

func machine(bin string) Machine {
	m := Machine{Cores: goruntime.NumCPU(), Go: goruntime.Version(), Build: buildinfo.Version, Date: time.Now().UTC().Format("2006-01-02 15:04 UTC")}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) >= 2 {
			var kb float64
			fmt.Sscan(f[1], &kb)
			m.Memory = fmt.Sprintf("%.1f GiB", kb/1024/1024)
		}
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		m.Kernel = cstr(u.Release[:])
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if out, err := exec.Command("lxc-start", "--version").Output(); err == nil {
		m.LXC = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command(filepath.Join(bin, "gpupass"), "version").Output(); err == nil {
		m.Build = strings.TrimSpace(string(out))
	}
	return m
}

func cstr(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}
