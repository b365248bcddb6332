package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/hostdriver"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// planned is everything one container's plan found, for apply to act on.
type planned struct {
	spec   *pb.ContainerSpec
	file   *pveconf.File
	old    []byte
	digest string
	res    *passthrough.Result
	inv    *gpu.Inventory
	state  runtime.State
	pb     *pb.ContainerPlan
}

func (a *Agent) configFile(id string) *pveconf.File {
	return &pveconf.File{
		Path:        a.rt.ConfigPath(id),
		LockPath:    a.rt.LockPath(id),
		BackupDir:   a.backupDir(id),
		LockTimeout: 10 * time.Second,
	}
}

func (a *Agent) configFormat() pveconf.Format {
	if a.rt.ConfigFormat() == runtime.FormatLXC {
		return pveconf.FormatLXC
	}
	return pveconf.FormatPVE
}

func (a *Agent) guestDir(id string) string { return filepath.Join(a.cfg.GuestSocketDir, id) }

func styleOf(s pb.Style) passthrough.Style {
	if s == pb.Style_STYLE_DEV {
		return passthrough.StyleDev
	}
	return passthrough.StyleRaw
}

// plan computes the config change and the restart decision for one container. It never
// writes anything.
func (a *Agent) plan(ctx context.Context, spec *pb.ContainerSpec) (*planned, error) {
	return a.planKnown(ctx, spec, nil)
}

// planKnown is plan with the runtime state already known (nil: ask the runtime).
func (a *Agent) planKnown(ctx context.Context, spec *pb.ContainerSpec, known *runtime.State) (*planned, error) {
	id := spec.GetId()
	p := &planned{spec: spec, pb: &pb.ContainerPlan{Id: id, Gpus: spec.GetGpus(), Restart: &pb.RestartDecision{}}}
	p.file = a.configFile(id)
	p.pb.ConfigPath = p.file.Path
	old, digest, err := p.file.Read()
	if errors.Is(err, os.ErrNotExist) {
		return p, fmt.Errorf("container %s has no config at %s: create the container first, or fix the id in fleet.yaml", id, p.file.Path)
	}
	if err != nil {
		return p, fmt.Errorf("read config of container %s: %w", id, err)
	}
	p.old, p.digest = old, digest
	p.pb.Digest = digest
	cfg, err := pveconf.Parse(old, a.configFormat())
	if err != nil {
		return p, fmt.Errorf("parse %s: %w (the file is left untouched)", p.file.Path, err)
	}
	if err := a.setPVEFacts(p, cfg); err != nil {
		return p, fmt.Errorf("plan container %s: %w", id, err)
	}
	inv, derr := a.discover()
	if derr != nil && len(spec.GetGpus()) > 0 {
		return p, fmt.Errorf("container %s wants GPUs %v but this host cannot provide them: %w", id, spec.GetGpus(), derr)
	}
	if inv == nil {
		inv = &gpu.Inventory{Root: a.cfg.HostRoot, Majors: map[string]uint32{}, Nodes: map[string]gpu.Node{}}
	}
	p.inv = inv
	desired := passthrough.Desired{GPUs: spec.GetGpus(), Style: styleOf(spec.GetStyle()), GuestSocketDir: a.guestDir(id), MIGCaps: spec.GetMigCaps()}
	if spec.GetDriver() == "host" {
		// Preflight: the hook refuses the start on the same grounds (docs/driver.md).
		if _, err := hostdriver.Find(a.cfg.HostRoot); err != nil {
			return p, fmt.Errorf("container %s wants driver: host: %w", id, err)
		}
		desired.DriverHook = hostdriver.HookCommand(a.cfg.HostRoot)
	}
	res, err := passthrough.Plan(cfg, inv, desired)
	if err != nil {
		return p, fmt.Errorf("plan container %s: %w", id, err)
	}
	p.res = res
	p.pb.Diff = res.Diff
	p.pb.Resolved, p.pb.Configured = resolvedGPUs(inv, spec.GetGpus()), configuredGPUs(cfg, inv)
	for _, c := range res.Changes {
		op := pb.ConfigChange_OP_ADD
		if c.Op == passthrough.OpRemove {
			op = pb.ConfigChange_OP_REMOVE
		}
		p.pb.Changes = append(p.pb.Changes, &pb.ConfigChange{Op: op, Line: c.Line, LineNumber: uint32(c.LineNumber)})
	}
	var st runtime.State
	if known != nil {
		st = *known
	} else if st, err = a.rt.State(ctx, id); err != nil {
		return p, fmt.Errorf("state of container %s: %w", id, err)
	}
	p.state = st
	p.pb.RunState = runState(st)
	if st.Running {
		p.pb.Restart = a.decideRestart(ctx, id, st, res, inv, spec.GetStyle())
	} else if spec.GetWantState() == "running" {
		p.pb.Start = true
	}
	return p, nil
}

// resolvedGPUs is the spec's selectors as this host resolves them (nil if one does not
// resolve: the plan says why).
func resolvedGPUs(inv *gpu.Inventory, selectors []string) *pb.GPUSet {
	gs, err := inv.ResolveAll(selectors)
	if err != nil {
		return nil
	}
	set := &pb.GPUSet{}
	for _, g := range gs {
		set.Gpus = append(set.Gpus, gpuToPB(g))
	}
	return set
}

// configuredGPUs is the GPUs the config passes now (passthrough.AssignedGPUs); a minor no
// GPU of this host has is listed by its minor alone.
func configuredGPUs(cfg *pveconf.Config, inv *gpu.Inventory) *pb.GPUSet {
	gs, unknown := passthrough.AssignedGPUs(cfg, inv)
	set := &pb.GPUSet{}
	for _, g := range gs {
		set.Gpus = append(set.Gpus, gpuToPB(g))
	}
	for _, m := range unknown {
		set.Gpus = append(set.Gpus, &pb.GPU{Minor: m})
	}
	return set
}

// expectation is what the guest of a planned container must see.
func (a *Agent) expectation(p *planned) *pb.Expectation {
	exp := &pb.Expectation{
		ContainerId:         p.spec.GetId(),
		HeartbeatIntervalMs: a.cfg.Heartbeat.Milliseconds(),
		RequireNetwork:      p.spec.GetRequireNetwork(),
	}
	if p.inv != nil {
		exp.KernelDriverVersion = p.inv.DriverVersion
		exp.DriverLoaded = p.inv.DriverVersion != ""
	}
	if p.res != nil {
		for _, d := range p.res.Devices {
			exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: d.Path, Major: d.Major, Minor: d.Minor})
		}
		for _, g := range p.res.GPUs {
			exp.Gpus = append(exp.Gpus, gpuToPB(g))
		}
	}
	return exp
}

// Plan answers host.Plan.
func (a *Agent) Plan(ctx context.Context, req *pb.PlanRequest) (*pb.PlanResponse, error) {
	resp := &pb.PlanResponse{Host: a.inventory(ctx, false)}
	for _, spec := range req.GetContainers() {
		p, err := a.plan(ctx, spec)
		if err != nil {
			p.pb.Error = err.Error()
		}
		resp.Containers = append(resp.Containers, p.pb)
	}
	return resp, nil
}
