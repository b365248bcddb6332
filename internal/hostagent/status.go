package hostagent

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// States of a container (DESIGN.md, JSON contract).
const (
	StateReady    = pb.StateReady
	StatePending  = pb.StatePending
	StateNotReady = pb.StateNotReady
	StateStopped  = pb.StateStopped
	StateError    = pb.StateError
)

// status judges one container from what the agent already knows: the runtime state, the
// guest's latest report and the host's driver. It never execs into the container.
func (a *Agent) status(ctx context.Context, spec *pb.ContainerSpec) *pb.ContainerStatus {
	return a.statusWith(ctx, spec, a.activeSet(ctx))
}

// runSet is one request's look at the running containers, for runtimes that can tell
// without a command per container (runtime.RunChecker: pct reads /proc/net/unix, and asks
// for the inits' pids once, with one command, the first time a running one needs it).
type runSet struct {
	rc     runtime.RunChecker
	active map[string]bool
	pids   map[string]int
	pidErr error
	asked  bool
}

// activeSet is this request's runSet; nil when the runtime cannot tell without a command
// per container (then each container asks the runtime).
func (a *Agent) activeSet(ctx context.Context) *runSet {
	rc, ok := a.rt.(runtime.RunChecker)
	if !ok {
		return nil
	}
	active, err := rc.Active(ctx)
	if err != nil {
		return nil
	}
	return &runSet{rc: rc, active: active}
}

// runStateOf is whether id runs, with its init's pid: from the request's runSet when there
// is one (one command for all containers), else the runtime.
func (a *Agent) runStateOf(ctx context.Context, id string, rs *runSet) (runtime.State, error) {
	if rs == nil {
		return a.rt.State(ctx, id)
	}
	running, err := rs.rc.Running(ctx, id, rs.active)
	if err != nil || !running {
		return runtime.State{}, err
	}
	if !rs.asked {
		rs.asked = true
		rs.pids, rs.pidErr = rs.rc.InitPIDs(ctx)
	}
	if pid := rs.pids[id]; pid > 0 {
		return runtime.State{Running: true, InitPID: pid}, nil
	}
	if rs.pidErr != nil {
		return runtime.State{}, rs.pidErr
	}
	return a.rt.State(ctx, id) // started since the look: ask it alone
}

// statusWith is status with the running set of this request (nil: ask the runtime).
func (a *Agent) statusWith(ctx context.Context, spec *pb.ContainerSpec, active *runSet) *pb.ContainerStatus {
	id := spec.GetId()
	cs := &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), Reasons: []string{}}
	st, err := a.runStateOf(ctx, id, active)
	if err != nil {
		cs.State = StateError
		cs.Reasons = append(cs.Reasons, err.Error())
		a.metrics.setStatus(id, cs.State, cs.Reasons)
		return cs
	}
	cs.RunState = runState(st)
	cs.Reasons = append(cs.Reasons, a.journalReasons(id)...)
	if !st.Running {
		cs.State = StateStopped
		cs.Reasons = append(cs.Reasons, "container is stopped")
		a.metrics.setReady(id, false)
		a.metrics.setStatus(id, cs.State, cs.Reasons)
		return cs
	}
	// As plan says it: whether what the container runs with differs from the desired
	// state (the same evidence and rule, with the state just read).
	var driverReasons []string
	if p, err := a.planKnown(ctx, spec, &st); err == nil {
		cs.RestartRequired = p.pb.GetRestart().GetRequired()
		for _, r := range p.pb.GetRestart().GetReasons() {
			if strings.HasPrefix(r, "host driver changed ") {
				driverReasons = append(driverReasons, "restart required: "+r)
			}
		}
	}
	snap, _ := a.guests.Latest(id)
	// The host's own evidence first: the report's generation, and its own look at /dev.
	cs.Reasons = append(cs.Reasons, a.hostEvidence(id, st, snap)...)
	a.judge(cs, spec, snap)
	if spec.GetDriver() != "host" && a.driverChange() != "" {
		// An own container after a host driver change: name its mismatch and the fix.
		if u, k := cs.GetDriver().GetUserspace(), a.loadedDriver(); u != "" && k != "" && u != k {
			driverReasons = append(driverReasons, fmt.Sprintf("host driver changed to %s but the container's own userspace is %s: install the %s userspace in it, or set driver: host in fleet.yaml (docs/driver.md)", k, u, k))
		}
	}
	for _, r := range driverReasons {
		// A host driver upgrade: gpupass apply restarts the container into the new
		// userspace (driver: host).
		cs.Reasons = dedupe(sortedAppend(cs.Reasons, r))
		cs.State = StateNotReady
	}
	if !snap.Connected && st.InitPID > 0 {
		// Say why from what the container sees: its socket hidden or never mounted (the
		// init's pid as the request's runtime state gave it; none: nothing to look at).
		if ok, why := a.guestMountLive(st.InitPID, id); !ok {
			cs.Reasons = dedupe(sortedAppend(cs.Reasons, why))
			cs.State = StateNotReady
		}
	}
	a.metrics.setReady(id, cs.State == StateReady)
	a.metrics.setStatus(id, cs.State, cs.Reasons)
	return cs
}

// judge fills state and reasons of a running container from its guest snapshot.
func (a *Agent) judge(cs *pb.ContainerStatus, spec *pb.ContainerSpec, snap guestchan.Snapshot) {
	cs.GuestConnected = snap.Connected
	a.mu.Lock()
	prepErr := a.prepErr
	a.mu.Unlock()
	if prepErr != nil && len(spec.GetGpus()) > 0 {
		cs.Reasons = append(cs.Reasons, "host: "+prepErr.Error())
	}
	rep := snap.Report
	if !snap.Connected {
		cs.GuestRefused = snap.Refused
	}
	switch {
	case !snap.Connected && snap.Refused != "":
		cs.Reasons = append(cs.Reasons, fmt.Sprintf("guest agent connected but was refused at %s: %s", snap.RefusedAt.UTC().Format(time.RFC3339), snap.Refused))
	case rep == nil && !snap.Connected:
		cs.Reasons = append(cs.Reasons, "guest agent has not connected (is gpupass-guest-agent installed and running in the container?)")
	case rep == nil:
		cs.Reasons = append(cs.Reasons, "guest agent connected but has not reported yet")
	case snap.Stale:
		cs.Reasons = append(cs.Reasons, fmt.Sprintf("guest agent silent for %v (last report %s)", a.now().Sub(snap.At).Round(time.Second), snap.At.UTC().Format(time.RFC3339)))
	}
	if rep != nil {
		cs.Report = rep
		cs.Devices = rep.GetDevices()
		cs.Driver = rep.GetDriver()
		cs.Warnings = rep.GetWarnings()
		cs.NetworkOk = rep.GetNetwork().GetOk()
		cs.ReportAgeMs = a.now().Sub(snap.At).Milliseconds()
		cs.Reasons = append(cs.Reasons, rep.GetReasons()...)
		if spec.GetRequireNetwork() && !rep.GetNetwork().GetOk() && !containsPrefix(rep.GetReasons(), "network") {
			cs.Reasons = append(cs.Reasons, "network: "+orDefault(rep.GetNetwork().GetReason(), "no usable network"))
		}
		cs.Reasons = append(cs.Reasons, a.expectationDrift(spec.GetId(), rep)...)
	}
	sort.Strings(cs.Reasons)
	cs.Reasons = dedupe(cs.Reasons)
	if len(cs.Reasons) == 0 && rep != nil && rep.GetReady() {
		cs.State = StateReady
	} else {
		cs.State = StateNotReady
	}
}

// expectationDrift names expected devices the guest's report does not cover yet (its
// report predates the current expectation).
func (a *Agent) expectationDrift(id string, rep *pb.GuestReport) []string {
	exp, ok := a.expectationOf(id)
	if !ok {
		return nil
	}
	have := map[string]bool{}
	for _, d := range rep.GetDevices() {
		have[fmt.Sprintf("%s %d:%d", d.GetPath(), d.GetMajor(), d.GetMinor())] = true
		have[d.GetPath()] = true
	}
	var out []string
	for _, d := range exp.GetDevices() {
		if !have[d.GetPath()] {
			out = append(out, fmt.Sprintf("guest has not reported on %s yet", d.GetPath()))
		}
	}
	return out
}

// Status answers host.Status.
func (a *Agent) Status(ctx context.Context, req *pb.StatusRequest) *pb.StatusResponse {
	resp := &pb.StatusResponse{Host: a.inventory(ctx, false)}
	specs := req.GetContainers()
	if len(specs) == 0 {
		for _, id := range a.knownIDs() {
			spec, ok := a.desiredSpec(id)
			if !ok {
				spec = &pb.ContainerSpec{Id: id}
			}
			specs = append(specs, spec)
		}
	}
	// One look at the running containers for the whole request: no pct per container.
	active := a.activeSet(ctx)
	for _, spec := range specs {
		resp.Containers = append(resp.Containers, a.statusWith(ctx, spec, active))
	}
	return resp
}

// Watch streams readiness changes until ctx ends: first the current status of every
// watched container, then one event per change.
func (a *Agent) Watch(ctx context.Context, req *pb.WatchRequest, send func(*pb.WatchEvent) error) error {
	events, cancel := a.guests.Subscribe(256)
	defer cancel()
	want := map[string]bool{}
	for _, id := range req.GetContainerIds() {
		want[id] = true
	}
	specFor := func(id string) *pb.ContainerSpec {
		if s, ok := a.desiredSpec(id); ok {
			return s
		}
		return &pb.ContainerSpec{Id: id}
	}
	last := map[string]string{}
	emit := func(id string) error {
		cs := a.status(ctx, specFor(id))
		key := fmt.Sprint(cs.GetState(), cs.GetReasons())
		if last[id] == key {
			return nil
		}
		last[id] = key
		return send(&pb.WatchEvent{Host: a.name, Status: cs, TimeUnixNano: a.now().UnixNano()})
	}
	for _, id := range a.knownIDs() {
		if len(want) == 0 || want[id] {
			if err := emit(id); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if len(want) > 0 && !want[ev.ID] {
				continue
			}
			if err := emit(ev.ID); err != nil {
				return err
			}
		}
	}
}

func containsPrefix(list []string, prefix string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			return true
		}
	}
	return false
}

func sortedAppend(list []string, s string) []string {
	list = append(list, s)
	sort.Strings(list)
	return list
}

func dedupe(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
