package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/runner"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// ApplyRuns is the config work of one apply over many stopped containers.
type ApplyRuns struct {
	Containers int
	Changed    Sample // every config changes (GPU 0 <-> 1), written, left stopped
	Unchanged  Sample // the same apply again: nothing to write
	// Commands per run and the wall time spent in them (summed over the parallel
	// containers), by command, from the last changing run.
	Commands map[string]int
	CmdTime  map[string]time.Duration
	// SelfCPU is the agent's own CPU in the last changing apply, ChildCPU that of the
	// commands it ran.
	SelfCPU, ChildCPU time.Duration
	// Failed counts applies in which a container ended in error; LastFailure says why.
	Failed      int
	LastFailure string
}

type applyError struct{ msg string }

func (e *applyError) Error() string { return e.msg }

// countingRunner is the real runner, counting what it runs.
type countingRunner struct {
	runner.Exec
	mu    sync.Mutex
	count map[string]int
	time  map[string]time.Duration
}

func (c *countingRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	t := time.Now()
	out, err := c.Exec.Run(ctx, argv...)
	c.mu.Lock()
	c.count[argv[0]]++
	c.time[argv[0]] += time.Since(t)
	c.mu.Unlock()
	return out, err
}

func (c *countingRunner) reset() {
	c.mu.Lock()
	c.count, c.time = map[string]int{}, map[string]time.Duration{}
	c.mu.Unlock()
}

// MeasureApply runs the host agent (in this process, with the real lxc runtime and
// config editor) over n stopped containers' configs: one Apply per run over all of
// them. Stopped containers are written and left stopped, so no restart is involved.
func (e *Env) MeasureApply(ctx context.Context, n, runs int) (*ApplyRuns, error) {
	dir := filepath.Join(e.Work, "apply")
	cfg := hostconfig.Default()
	cfg.Runtime = hostconfig.RuntimeLXC
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.GuestSocketDir = filepath.Join(dir, "guests")
	cfg.LXCPath = filepath.Join(dir, "lxc")
	cfg.HostRoot = e.HostRoot()
	cfg.Simulated = true
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("gpb-c%03d", i)
		if err := writeStoppedConfig(cfg.LXCPath, ids[i]); err != nil {
			return nil, err
		}
	}
	cr := &countingRunner{}
	cr.reset()
	rt, err := hostagent.NewRuntime(cfg, cr)
	if err != nil {
		return nil, err
	}
	reg := guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Log: log.Discard()})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	defer func() { cancel(); <-done }()
	a, err := hostagent.New(cfg, hostagent.Options{Runtime: rt, Guests: reg, Log: log.Discard(), Name: "bench"})
	if err != nil {
		return nil, err
	}
	var cpuMu sync.Mutex
	var lastSelf, lastKids time.Duration
	apply := func(gpu string) (time.Duration, error) {
		req := &pb.ApplyRequest{TimeoutMs: 1000}
		for _, id := range ids {
			req.Containers = append(req.Containers, &pb.ContainerSpec{Id: id, Gpus: []string{gpu}, Style: pb.Style_STYLE_RAW})
		}
		self0, kids0 := rusage()
		t := time.Now()
		resp := a.Apply(ctx, req, nil)
		d := time.Since(t)
		self1, kids1 := rusage()
		cpuMu.Lock()
		lastSelf, lastKids = self1-self0, kids1-kids0
		cpuMu.Unlock()
		for _, c := range resp.GetContainers() {
			if c.GetError() != "" || c.GetStatus().GetState() != hostagent.StateStopped || c.GetRestarted() {
				return 0, &applyError{fmt.Sprintf("apply GPU %s: %s: error %q, state %s %q, restarted %v", gpu, c.GetStatus().GetId(), c.GetError(), c.GetStatus().GetState(), c.GetStatus().GetReasons(), c.GetRestarted())}
			}
		}
		return d, nil
	}
	out := &ApplyRuns{Containers: n}
	if _, err := apply("1"); err != nil { // first write: the managed entries appear
		return nil, err
	}
	var prof *os.File
	if e.ProfileDir != "" {
		_ = os.MkdirAll(e.ProfileDir, 0o755)
		if prof, err = os.Create(filepath.Join(e.ProfileDir, "apply.pprof")); err == nil {
			_ = pprof.StartCPUProfile(prof)
		}
	}
	// A run in which a container ends in error (an lxc-info that failed under load) is
	// counted and left out; the section fails only when most runs do.
	keep := func(into *Sample, d time.Duration, err error) error {
		var ae *applyError
		switch {
		case errors.As(err, &ae):
			out.Failed++
			out.LastFailure = ae.msg
			if out.Failed > runs {
				return err
			}
			return nil
		case err != nil:
			return err
		}
		*into = append(*into, d)
		return nil
	}
	for i := range runs {
		gpu := "0"
		if i%2 == 1 {
			gpu = "1"
		}
		d, err := apply(gpu)
		if err := keep(&out.Changed, d, err); err != nil {
			return nil, err
		}
		d, err = apply(gpu)
		if err := keep(&out.Unchanged, d, err); err != nil {
			return nil, err
		}
	}
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
	cr.reset()
	if _, err := apply("1"); err != nil {
		var ae *applyError
		if !errors.As(err, &ae) {
			return nil, err
		}
	}
	cr.mu.Lock()
	out.Commands, out.CmdTime = cr.count, cr.time
	cr.mu.Unlock()
	out.SelfCPU, out.ChildCPU = lastSelf, lastKids
	if _, err := os.Stat(filepath.Join(cfg.LXCPath, ids[0], "config")); err != nil {
		return nil, err
	}
	return out, nil
}

// describeCommands says which commands an apply ran, for the report.
func describeCommands(count map[string]int, t map[string]time.Duration) string {
	var names []string
	for k := range count {
		names = append(names, k)
	}
	sort.Strings(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%d × %s (%s ms summed)", count[k], k, num(ms(t[k]))))
	}
	if len(parts) == 0 {
		return "no external commands"
	}
	return strings.Join(parts, ", ")
}

var _ runtime.Runtime = (*runtime.LXC)(nil)

// rusage returns the CPU this process and its waited-for children have used.
func rusage() (self, children time.Duration) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) == nil {
		children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return self, children
}
