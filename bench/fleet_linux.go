package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"gpupass/internal/controller"
	"gpupass/internal/fleet"
	"gpupass/internal/log"
	"gpupass/internal/pki"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"
)

// StatusRuns is the status benchmark at one fleet size.
type StatusRuns struct {
	Hosts int
	// Fanout and SerialCold start every TLS handshake afresh; Resumed and Serial use the
	// CLI's session cache, as `gpupass status` does by default after its first run.
	Fanout, Resumed, Serial, SerialCold Sample
	PeakRSS                             float64 // MiB, the largest of the fan-out runs
	CPU, CPUResumed                     Sample  // CPU time of the fan-out gpupass processes
	Failed                              int     // runs that did not exit 0 (a host unreachable)
	LastFailure                         string
}

// statusRun is one `gpupass status` process.
type statusRun struct {
	Wall    time.Duration
	CPU     time.Duration // user + system of the gpupass process
	PeakRSS float64       // MiB
	Failed  string        // why it did not exit 0 ("" when it did)
}

// statusCLI runs `gpupass status -f fleet -o json` once. cache is the TLS session cache
// file, "off" for a cold start.
func (e *Env) statusCLI(ctx context.Context, fleetPath string, parallel int, cache string) (statusRun, error) {
	args := []string{"status", "-f", fleetPath, "-o", "json"}
	if parallel > 0 {
		args = append(args, "--parallel", fmt.Sprint(parallel))
	}
	// GNU time reports the peak RSS and CPU of gpupass itself: getrusage of a child this
	// large process starts would count the parent's pages the child shares until its exec.
	statFile := filepath.Join(e.Work, "fleet", "time")
	gnuTime := true
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		gnuTime = false // no peak RSS then; CPU from the process state
	}
	cmd := exec.CommandContext(ctx, filepath.Join(e.Bin, "gpupass"), args...)
	if gnuTime {
		args = append([]string{"-f", "%M %U %S", "-o", statFile, filepath.Join(e.Bin, "gpupass")}, args...)
		cmd = exec.CommandContext(ctx, "/usr/bin/time", args...)
	}
	cmd.Env = append(os.Environ(), "GPUPASS_TLS_SESSION_CACHE="+cache)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	start := time.Now()
	err := cmd.Run()
	r := statusRun{Wall: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Failed = fmt.Sprintf("exit %d: %s", ee.ExitCode(), failures(out.Bytes()))
	case err != nil:
		return r, fmt.Errorf("gpupass %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	if !gnuTime {
		r.PeakRSS = math.NaN()
		r.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		return r, nil
	}
	b, err := os.ReadFile(statFile)
	if err != nil {
		return r, fmt.Errorf("resources of gpupass: %w", err)
	}
	// GNU time writes "Command exited with non-zero status N" first when it fails.
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return r, fmt.Errorf("resources of gpupass: %q", b)
	}
	f = f[len(f)-3:]
	var kb, user, sys float64
	if _, err := fmt.Sscan(strings.Join(f, " "), &kb, &user, &sys); err != nil {
		return r, fmt.Errorf("resources of gpupass: %q: %w", b, err)
	}
	r.PeakRSS = kb / 1024
	r.CPU = time.Duration((user + sys) * float64(time.Second))
	return r, nil
}

// MeasureStatus starts the largest fleet once and measures `gpupass status` over the
// first n hosts of it for each size.
func (e *Env) MeasureStatus(ctx context.Context, sizes []int, runs, serialRuns map[int]int) ([]StatusRuns, error) {
	maxN := 0
	for _, n := range sizes {
		maxN = max(maxN, n)
	}
	// Each real host agent is its own process with a small heap; 1000 of them in one
	// process make one large heap whose collection would slow every host at once.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	t := time.Now()
	f, err := e.StartSimFleet(ctx, maxN)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	e.Logf("%d in-process host agents with %d ready containers each, started in %.1f s", maxN, len(simContainers), time.Since(t).Seconds())
	var out []StatusRuns
	for _, n := range sizes {
		var hosts [][2]string
		for _, h := range f.Hosts[:n] {
			hosts = append(hosts, [2]string{h.Name, h.Addr})
		}
		path := filepath.Join(e.Work, "fleet", fmt.Sprintf("fleet-%d.yaml", n))
		if err := writeSimFleet(e, path, hosts); err != nil {
			return nil, err
		}
		sr := StatusRuns{Hosts: n}
		if e.ProfileDir != "" && n == maxN {
			for _, resumed := range []bool{false, true} {
				if err := e.profileStatus(ctx, path, resumed); err != nil {
					return nil, err
				}
			}
		}
		one := func(parallel int, cache string, into *Sample) error {
			r, err := e.statusCLI(ctx, path, parallel, cache)
			if err != nil {
				return err
			}
			if into == nil {
				return nil
			}
			*into = append(*into, r.Wall)
			if r.Failed != "" {
				sr.Failed++
				sr.LastFailure = r.Failed
			}
			if parallel == 0 {
				if !math.IsNaN(r.PeakRSS) {
					sr.PeakRSS = max(sr.PeakRSS, r.PeakRSS)
				}
				if cache == "off" {
					sr.CPU = append(sr.CPU, r.CPU)
				} else {
					sr.CPUResumed = append(sr.CPUResumed, r.CPU)
				}
			}
			return nil
		}
		cache := filepath.Join(e.Work, "fleet", fmt.Sprintf("sessions-%d.json", n))
		// Warm the page cache, and fill the TLS session cache.
		if err := one(0, cache, nil); err != nil {
			return nil, err
		}
		for range runs[n] {
			if err := one(0, cache, &sr.Resumed); err != nil {
				return nil, err
			}
			if err := one(0, "off", &sr.Fanout); err != nil {
				return nil, err
			}
		}
		for range serialRuns[n] {
			if err := one(1, cache, &sr.Serial); err != nil {
				return nil, err
			}
			if err := one(1, "off", &sr.SerialCold); err != nil {
				return nil, err
			}
		}
		if sr.Failed > 0 {
			e.Logf("%d of the runs over %d hosts did not exit 0; the last: %s", sr.Failed, n, sr.LastFailure)
		}
		e.Logf("%4d hosts: p50 %s ms, p99 %s ms (cold %s / %s), sequential p50 %s ms (cold %s), CLI CPU %s ms, peak RSS %s MiB",
			n, num(sr.Resumed.Median()), num(sr.Resumed.Percentile(99)), num(sr.Fanout.Median()), num(sr.Fanout.Percentile(99)),
			num(sr.Serial.Median()), num(sr.SerialCold.Median()), num(sr.CPU.Median()), num(sr.PeakRSS))
		out = append(out, sr)
	}
	return out, nil
}

// failures summarises what a status report says went wrong.
func failures(b []byte) string {
	var r struct {
		Hosts []struct {
			Name, Error string
			ElapsedMS   int64 `json:"elapsed_ms"`
		}
		Containers []struct{ Host, ID, State string }
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "unreadable output: " + err.Error()
	}
	errs := map[string]int{}
	var slowest int64
	for _, h := range r.Hosts {
		if h.Error != "" {
			errs[h.Error]++
		}
		slowest = max(slowest, h.ElapsedMS)
	}
	states := map[string]int{}
	for _, c := range r.Containers {
		states[c.State]++
	}
	return fmt.Sprintf("%d hosts, slowest answer %d ms, container states %v, host errors %v", len(r.Hosts), slowest, states, errs)
}

func writeSimFleet(e *Env, path string, hosts [][2]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ntls: {ca: %s, cert: %s, key: %s}\nhosts:\n", e.pkiFile("ca.crt"), e.pkiFile("controller.crt"), e.pkiFile("controller.key"))
	for _, h := range hosts {
		fmt.Fprintf(&b, "  - {name: %s, address: %q}\n", h[0], h[1])
	}
	b.WriteString("containers:\n")
	for _, h := range hosts {
		for _, id := range simContainers {
			fmt.Fprintf(&b, "  - {host: %s, id: %q, gpus: [\"0\"], style: raw}\n", h[0], id)
		}
	}
	if len(hosts) == 0 {
		return errors.New("no hosts")
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

// profileStatus runs the controller's status in this process, next to the host agents,
// under the CPU profiler, and writes the profile to ProfileDir/status-{cold,resumed}.pprof.
func (e *Env) profileStatus(ctx context.Context, fleetPath string, resumed bool) error {
	fl, err := fleet.Load(fleetPath)
	if err != nil {
		return err
	}
	tlsCfg, err := pki.ClientTLS(e.pkiFile("ca.crt"), e.pkiFile("controller.crt"), e.pkiFile("controller.key"), "")
	if err != nil {
		return err
	}
	name := "status-resumed.pprof"
	if !resumed {
		tlsCfg.ClientSessionCache = nil
		name = "status-cold.pprof"
	}
	c := controller.New(controller.Options{Fleet: fl, TLS: tlsCfg, Log: log.Discard()})
	if resumed {
		c.Status(ctx) // fill the session cache
	}
	if err := os.MkdirAll(e.ProfileDir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(e.ProfileDir, name))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	var lat Sample
	for range 5 {
		t := time.Now()
		r := c.Status(ctx)
		lat = append(lat, time.Since(t))
		if code := r.ExitCode(); code != controller.ExitOK {
			e.Logf("in-process status: exit %d", code)
		}
	}
	pprof.StopCPUProfile()
	e.Logf("in-process status over %d hosts (profiled): p50 %s ms; profile in %s", len(fl.Hosts), num(lat.Median()), f.Name())
	return nil
}
