package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pvelab"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// The pct section's containers: the top of the lab's id range, which internal/pvelab leaves
// to other users of the lab (9950-9999); each id is taken with the lab's own id lock.
const (
	pctFirstID = 9990
	pctLastID  = 9999
)

// RuntimeRuns is one runtime's status and apply figures over the same number of stopped
// containers.
type RuntimeRuns struct {
	Status, Changed, Unchanged Sample
	StatusCmds, ApplyCmds      map[string]int // commands of one status, of one changing apply
}

// PctRuns is the pct section: the real pct on the PVE lab beside the lxc runtime.
type PctRuns struct {
	Containers int
	Create     Sample // pct create of one container
	PCT, LXC   RuntimeRuns
	// One container started, rebooted and stopped through the pct runtime (what an apply
	// runs once per state change), and status with that container running.
	Start, Reboot, Stop time.Duration
	StatusRunning       Sample
	StatusRunningCmds   map[string]int
	LifecycleCmds       map[string]int
}

// errNoLab means the PVE lab is not set up here; the section is skipped.
var errNoLab = errors.New("PVE lab not set up")

// MeasurePct runs the host agent (in this process) with runtime pct over n containers made
// by the real `pct create` on the PVE lab, and with runtime lxc over n plain LXC configs:
// status and apply (GPU 0 <-> 1, stopped containers, written and left stopped) runs times
// each, counting the commands. Then one lab container is started, rebooted and stopped
// through the pct runtime, and status is measured with it running.
func (e *Env) MeasurePct(ctx context.Context, n, runs int) (*PctRuns, error) {
	if err := pvelab.Probe(); err != nil {
		return nil, fmt.Errorf("%w: %v; %s", errNoLab, err, pvelab.SetupHint)
	}
	if _, err := os.Stat(filepath.Join(pvelab.TemplateDir, pvelab.BaseTemplate)); err != nil {
		return nil, fmt.Errorf("%w: %v; %s", errNoLab, err, pvelab.SetupHint)
	}
	dir := filepath.Join(e.Work, "pct")
	out := &PctRuns{Containers: n}

	// The agent's host root: the simulated driver (proc/, dev/ of the bench's GPU host) and
	// the real PVE paths, as internal/pvelab's SimulateGPUHost lays it out for the lab
	// tests. The containers stay stopped with GPU lines, so no stand-in node goes to /dev.
	root := filepath.Join(dir, "root")
	for p, target := range map[string]string{
		"proc": filepath.Join(e.HostRoot(), "proc"), "dev": filepath.Join(e.HostRoot(), "dev"),
		"etc/pve": pvelab.EtcPVE, "var/lib/lxc": pvelab.LXCPath, "run": "/run",
	} {
		link := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			return nil, err
		}
		if err := os.Symlink(target, link); err != nil {
			return nil, err
		}
	}

	ids, err := e.pctContainers(n, out)
	if err != nil {
		return nil, err
	}
	cfg := hostconfig.Default()
	cfg.Runtime = hostconfig.RuntimePct
	cfg.StateDir = filepath.Join(dir, "state-pct")
	cfg.GuestSocketDir = filepath.Join(dir, "guests-pct")
	cfg.HostRoot = root
	cfg.Simulated = true
	pctAgent, pctRT, pctCR, stop, err := benchAgent(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer stop()
	if out.PCT, err = measureRuntime(ctx, pctAgent, pctCR, ids, runs); err != nil {
		return nil, fmt.Errorf("pct runtime: %w", err)
	}

	lcfg := hostconfig.Default()
	lcfg.Runtime = hostconfig.RuntimeLXC
	lcfg.StateDir = filepath.Join(dir, "state-lxc")
	lcfg.GuestSocketDir = filepath.Join(dir, "guests-lxc")
	lcfg.LXCPath = filepath.Join(dir, "lxc")
	lcfg.HostRoot = e.HostRoot()
	lcfg.Simulated = true
	lids := make([]string, n)
	for i := range lids {
		lids[i] = fmt.Sprintf("gpb-p%03d", i)
		if err := writeStoppedConfig(lcfg.LXCPath, lids[i]); err != nil {
			return nil, err
		}
	}
	lxcAgent, _, lxcCR, lstop, err := benchAgent(ctx, lcfg)
	if err != nil {
		return nil, err
	}
	defer lstop()
	if out.LXC, err = measureRuntime(ctx, lxcAgent, lxcCR, lids, runs); err != nil {
		return nil, fmt.Errorf("lxc runtime: %w", err)
	}

	// One container through its state changes with the pct runtime. Its config now has the
	// GPU lines of the last apply: take them out first (no stand-in nodes in /dev here).
	id := ids[0]
	if r := pctAgent.Apply(ctx, &pb.ApplyRequest{TimeoutMs: 1000, Containers: []*pb.ContainerSpec{{Id: id, Style: pb.Style_STYLE_RAW}}}, nil); r.GetContainers()[0].GetError() != "" {
		return nil, fmt.Errorf("remove the GPU lines of %s: %s", id, r.GetContainers()[0].GetError())
	}
	pctCR.reset()
	step := func(what string, f func(context.Context, string) error) (time.Duration, error) {
		t := time.Now()
		if err := f(ctx, id); err != nil {
			return 0, fmt.Errorf("%s CT %s: %w", what, id, err)
		}
		return time.Since(t), nil
	}
	if out.Start, err = step("start", pctRT.Start); err != nil {
		return nil, err
	}
	// pct start returns once lxc-start did; wait until the runtime sees the init (the lab
	// may be busy with other users) before the reboot.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		st, err := pctRT.State(ctx, id)
		if err == nil && st.Running {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("CT %s is not running 20 s after pct start: %v", id, err)
		}
	}
	if out.Reboot, err = step("reboot", pctRT.Restart); err != nil {
		return nil, err
	}
	pctCR.mu.Lock()
	out.LifecycleCmds = pctCR.count
	pctCR.mu.Unlock()
	specs := gpuSpecs(ids, "0")
	for i := range runs {
		pctCR.reset()
		t := time.Now()
		resp := pctAgent.Status(ctx, &pb.StatusRequest{Containers: specs})
		out.StatusRunning = append(out.StatusRunning, time.Since(t))
		if st := resp.GetContainers()[0].GetState(); st == hostagent.StateStopped {
			return nil, fmt.Errorf("status with CT %s running says %s", id, st)
		}
		if i == 0 {
			pctCR.mu.Lock()
			out.StatusRunningCmds = pctCR.count
			pctCR.mu.Unlock()
		}
	}
	if out.Stop, err = step("stop", pctRT.Stop); err != nil {
		return nil, err
	}
	return out, nil
}

// pctContainers takes n ids of the lab (its id locks, a leftover destroyed first) and
// creates a container on each with the real `pct create`; they are destroyed at the end.
func (e *Env) pctContainers(n int, out *PctRuns) ([]string, error) {
	lockDir := filepath.Join(pvelab.RunDir, "ids")
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	var ids []string
	for id := pctFirstID; id <= pctLastID && len(ids) < n; id++ {
		f, err := os.OpenFile(filepath.Join(lockDir, strconv.Itoa(id)+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, err
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
			f.Close()
			continue
		}
		if err := pvelab.DestroyCT(id); err != nil {
			e.Logf("lab id %d has a leftover container that cannot be removed, skipping it: %v", id, err)
			f.Close()
			continue
		}
		e.Defer(func() {
			if err := pvelab.DestroyCT(id); err != nil {
				e.Logf("%v", err)
			}
			f.Close()
		})
		sid := strconv.Itoa(id)
		t := time.Now()
		r, err := pvelab.RunPct("create", sid, "local:vztmpl/"+pvelab.BaseTemplate, "--ostype", "debian",
			"--rootfs", "local:0", "--hostname", "gpb-pct-"+sid, "--unprivileged", "1",
			"--arch", "amd64", "--memory", "128", "--swap", "0")
		if err != nil {
			return nil, err
		}
		if r.Code != 0 {
			return nil, fmt.Errorf("create lab container: %s", r)
		}
		out.Create = append(out.Create, time.Since(t))
		ids = append(ids, sid)
	}
	if len(ids) < n {
		return nil, fmt.Errorf("only %d of the lab ids %d-%d are free, want %d", len(ids), pctFirstID, pctLastID, n)
	}
	return ids, nil
}

// benchAgent builds a host agent in this process on cfg with a counting runner.
func benchAgent(ctx context.Context, cfg *hostconfig.Config) (*hostagent.Agent, runtime.Runtime, *countingRunner, func(), error) {
	cr := &countingRunner{}
	cr.reset()
	rt, err := hostagent.NewRuntime(cfg, cr)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	reg := guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Log: log.Discard()})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	stop := func() { cancel(); <-done }
	a, err := hostagent.New(cfg, hostagent.Options{Runtime: rt, Guests: reg, Log: log.Discard(), Name: "bench"})
	if err != nil {
		stop()
		return nil, nil, nil, nil, err
	}
	return a, rt, cr, stop, nil
}

func gpuSpecs(ids []string, gpu string) []*pb.ContainerSpec {
	var specs []*pb.ContainerSpec
	for _, id := range ids {
		specs = append(specs, &pb.ContainerSpec{Id: id, Gpus: []string{gpu}, Style: pb.Style_STYLE_RAW})
	}
	return specs
}

// measureRuntime runs status and apply over the stopped containers ids.
func measureRuntime(ctx context.Context, a *hostagent.Agent, cr *countingRunner, ids []string, runs int) (RuntimeRuns, error) {
	var rr RuntimeRuns
	apply := func(gpu string) (time.Duration, error) {
		t := time.Now()
		resp := a.Apply(ctx, &pb.ApplyRequest{TimeoutMs: 1000, Containers: gpuSpecs(ids, gpu)}, nil)
		d := time.Since(t)
		for _, c := range resp.GetContainers() {
			if c.GetError() != "" || c.GetStatus().GetState() != hostagent.StateStopped || c.GetRestarted() {
				return 0, fmt.Errorf("apply GPU %s: %s: error %q, state %s %q, restarted %v", gpu, c.GetStatus().GetId(), c.GetError(), c.GetStatus().GetState(), c.GetStatus().GetReasons(), c.GetRestarted())
			}
		}
		return d, nil
	}
	if _, err := apply("1"); err != nil { // first write: the managed entries appear
		return rr, err
	}
	for i := range runs {
		gpu := strconv.Itoa(i % 2)
		cr.reset()
		d, err := apply(gpu)
		if err != nil {
			return rr, err
		}
		cr.mu.Lock()
		rr.ApplyCmds = cr.count
		cr.mu.Unlock()
		rr.Changed = append(rr.Changed, d)
		if d, err = apply(gpu); err != nil {
			return rr, err
		}
		rr.Unchanged = append(rr.Unchanged, d)
		cr.reset()
		t := time.Now()
		resp := a.Status(ctx, &pb.StatusRequest{Containers: gpuSpecs(ids, gpu)})
		rr.Status = append(rr.Status, time.Since(t))
		cr.mu.Lock()
		rr.StatusCmds = cr.count
		cr.mu.Unlock()
		if len(resp.GetContainers()) != len(ids) {
			return rr, fmt.Errorf("status answered %d containers, want %d", len(resp.GetContainers()), len(ids))
		}
	}
	return rr, nil
}
