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

// activeSet is the runtime's set of running containers when it can tell without running a
// command per container (runtime.RunChecker: pct reads /proc/net/unix), else nil.
func (a *Agent) activeSet(ctx context.Context) map[string]bool {
	rc, ok := a.rt.(runtime.RunChecker)
	if !ok {
		return nil
	}
	active, err := rc.Active(ctx)
	if err != nil {
		return nil
	}
	return active
}

// runStateOf is whether id runs: from active when known (no command), else the runtime.
func (a *Agent) runStateOf(ctx context.Context, id string, active map[string]bool) (runtime.State, error) {
	if rc, ok := a.rt.(runtime.RunChecker); ok && active != nil {
		running, err := rc.Running(ctx, id, active)
		return runtime.State{Running: running}, err
	}
	return a.rt.State(ctx, id)
}

// statusWith is status with the running set of this request (nil: ask the runtime).
func (a *Agent) statusWith(ctx context.Context, spec *pb.ContainerSpec, active map[string]bool) *pb.ContainerStatus {
	id := spec.GetId()
	cs := &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), Reasons: []string{}}
	st, err := a.runStateOf(ctx, id, active)
	if err != nil {
		cs.State = StateError
		cs.Reasons = append(cs.Reasons, err.Error())
		return cs
	}
	cs.RunState = runState(st)
	if !st.Running {
		cs.State = StateStopped
		cs.Reasons = append(cs.Reasons, "container is stopped")
		a.metrics.setReady(id, false)
		return cs
	}
	// As plan says it: whether what the container runs with differs from the desired
	// state (the same evidence and rule, with the state just read).
	if p, err := a.planKnown(ctx, spec, &st); err == nil {
		cs.RestartRequired = p.pb.GetRestart().GetRequired()
	}
	snap, _ := a.guests.Latest(id)
	a.judge(cs, spec, snap)
	if !snap.Connected && st.InitPID > 0 {
		// Say why from what the container sees: its socket hidden or never mounted (where
		// the runtime state gave the init's pid without a command: plain LXC; pct's status
		// path reads only /proc/net/unix).
		if ok, why := a.guestMountLive(st.InitPID, id); !ok {
			cs.Reasons = dedupe(sortedAppend(cs.Reasons, why))
			cs.State = StateNotReady
		}
	}
	a.metrics.setReady(id, cs.State == StateReady)
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
