package hostagent

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/readiness"
	"gpupass/internal/restartrule"
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
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STATE_UNKNOWN, Detail: err.Error()}))
		a.metrics.setStatus(id, cs.State, cs.Details)
		return cs
	}
	cs.RunState = runState(st)
	addReasons(cs, a.journalReasons(id)...)
	if !st.Running {
		cs.State = StateStopped
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_CONTAINER_STOPPED}))
		if p, err := a.planKnown(ctx, spec, &st); err == nil {
			cs.Resolved, cs.Configured = p.pb.GetResolved(), p.pb.GetConfigured()
		}
		a.metrics.setReady(id, false)
		a.metrics.setStatus(id, cs.State, cs.Details)
		return cs
	}
	// As plan says it: whether what the container runs with differs from the desired
	// state (the same evidence and rule, with the state just read).
	var driverReasons []*pb.Reason
	if p, err := a.planKnown(ctx, spec, &st); err == nil {
		cs.RestartRequired = p.pb.GetRestart().GetRequired()
		cs.Resolved, cs.Configured = p.pb.GetResolved(), p.pb.GetConfigured()
		for _, r := range p.pb.GetRestart().GetDetails() {
			if r.GetKind() == pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED {
				driverReasons = append(driverReasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER, Got: r.GetGot(), Want: r.GetWant()}))
			}
		}
	}
	snap, _ := a.guests.Latest(id)
	// The host's own evidence first: the report's generation, and its own look at /dev.
	addReasons(cs, a.hostEvidence(id, st, snap)...)
	a.judge(cs, spec, snap)
	if spec.GetDriver() != "host" && a.driverChange() != "" {
		// An own container after a host driver change: name its mismatch and the fix.
		if u, k := cs.GetDriver().GetUserspace(), a.loadedDriver(); u != "" && k != "" && u != k {
			driverReasons = append(driverReasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_OWN_USERSPACE_MISMATCH, Want: k, Got: u}))
		}
	}
	if len(driverReasons) > 0 {
		// A host driver upgrade: gpupass apply restarts the container into the new
		// userspace (driver: host).
		addReasons(cs, driverReasons...)
		sortReasons(cs)
		cs.State = readiness.State(cs.Details, snap.Report)
	}
	if !snap.Connected && st.InitPID > 0 {
		// Say why from what the container sees: its socket hidden or never mounted (the
		// init's pid as the request's runtime state gave it; none: nothing to look at).
		if r := restartrule.SocketReason(a.guestSocket(st.InitPID, id)); r != nil {
			addReasons(cs, r)
			sortReasons(cs)
			cs.State = readiness.State(cs.Details, snap.Report)
		}
	}
	a.metrics.setReady(id, cs.State == StateReady)
	a.metrics.setStatus(id, cs.State, cs.Details)
	return cs
}

// judge fills state and reasons of a running container from its guest snapshot.
func (a *Agent) judge(cs *pb.ContainerStatus, spec *pb.ContainerSpec, snap guestchan.Snapshot) {
	cs.GuestConnected = snap.Connected
	a.mu.Lock()
	prepErr := a.prepErr
	a.mu.Unlock()
	if prepErr != nil && len(spec.GetGpus()) > 0 {
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_NOT_PREPARED, Detail: prepErr.Error()}))
	}
	rep := snap.Report
	if !snap.Connected {
		cs.GuestRefused = snap.Refused
	}
	switch {
	case !snap.Connected && snap.Refused != "":
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_REFUSED, Got: snap.RefusedAt.UTC().Format(time.RFC3339), Detail: snap.Refused}))
	case rep == nil && !snap.Connected:
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED}))
	case rep == nil:
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_NOT_REPORTED}))
	case snap.Stale:
		addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SILENT, Detail: a.now().Sub(snap.At).Round(time.Second).String(), Got: snap.At.UTC().Format(time.RFC3339)}))
	}
	if rep != nil {
		cs.Report = rep
		cs.Devices = rep.GetDevices()
		cs.Driver = rep.GetDriver()
		cs.Warnings = rep.GetWarnings()
		cs.NetworkOk = rep.GetNetwork().GetOk()
		cs.ReportAgeMs = a.now().Sub(snap.At).Milliseconds()
		addReasons(cs, pb.DetailsOf(rep.GetReasons(), rep.GetDetails())...)
		if spec.GetRequireNetwork() && !rep.GetNetwork().GetOk() && !containsPrefix(rep.GetReasons(), "network") {
			addReasons(cs, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NETWORK, Detail: orDefault(rep.GetNetwork().GetReason(), "no usable network")}))
		}
		addReasons(cs, a.expectationDrift(spec.GetId(), rep)...)
	}
	sortReasons(cs)
	cs.State = readiness.State(cs.Details, rep)
}

// expectationDrift names expected devices the guest's report does not cover yet (its
// report predates the current expectation).
func (a *Agent) expectationDrift(id string, rep *pb.GuestReport) []*pb.Reason {
	exp, ok := a.expectationOf(id)
	if !ok {
		return nil
	}
	have := map[string]bool{}
	for _, d := range rep.GetDevices() {
		have[fmt.Sprintf("%s %d:%d", d.GetPath(), d.GetMajor(), d.GetMinor())] = true
		have[d.GetPath()] = true
	}
	var out []*pb.Reason
	for _, d := range exp.GetDevices() {
		if !have[d.GetPath()] {
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DEVICE_UNREPORTED, Device: d.GetPath()}))
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
// watched container, then one event per change. With specs (the controller sends the
// fleet's) each event is judged against its spec, as Status judges the same specs, and
// they name the watched containers; without, container_ids are (empty: every known
// container), judged against the last applied spec.
func (a *Agent) Watch(ctx context.Context, req *pb.WatchRequest, send func(*pb.WatchEvent) error) error {
	events, cancel := a.guests.Subscribe(256)
	defer cancel()
	given := map[string]*pb.ContainerSpec{}
	var ids []string // the containers of the first events; nil: every known one
	for _, s := range req.GetContainers() {
		if _, dup := given[s.GetId()]; !dup {
			ids = append(ids, s.GetId())
		}
		given[s.GetId()] = s
	}
	want := map[string]bool{} // empty: every container
	for id := range given {
		want[id] = true
	}
	if len(given) == 0 {
		for _, id := range req.GetContainerIds() {
			want[id] = true
		}
	}
	specFor := func(id string) *pb.ContainerSpec {
		if s, ok := given[id]; ok {
			return s
		}
		if s, ok := a.desiredSpec(id); ok {
			return s
		}
		return &pb.ContainerSpec{Id: id}
	}
	last := map[string]string{}
	emit := func(id string) error {
		cs := a.status(ctx, specFor(id))
		key := fmt.Sprint(cs.GetState(), cs.GetReasons(), cs.GetRestartRequired())
		if last[id] == key {
			return nil
		}
		last[id] = key
		return send(&pb.WatchEvent{Host: a.name, Status: cs, TimeUnixNano: a.now().UnixNano()})
	}
	if ids == nil {
		for _, id := range a.knownIDs() {
			if len(want) == 0 || want[id] {
				ids = append(ids, id)
			}
		}
	}
	for _, id := range ids {
		if err := emit(id); err != nil {
			return err
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

// addReasons appends reasons to a status, as data (details) and as text (reasons).
func addReasons(cs *pb.ContainerStatus, rs ...*pb.Reason) {
	cs.Details = append(cs.Details, rs...)
	cs.Reasons = append(cs.Reasons, pb.ReasonTexts(rs)...)
}

// sortReasons orders a status's reasons by text and drops repeats, details and text alike.
func sortReasons(cs *pb.ContainerStatus) {
	sort.SliceStable(cs.Details, func(i, j int) bool { return pb.ReasonText(cs.Details[i]) < pb.ReasonText(cs.Details[j]) })
	out := cs.Details[:0]
	for i, r := range cs.Details {
		if i == 0 || pb.ReasonText(r) != pb.ReasonText(cs.Details[i-1]) {
			out = append(out, r)
		}
	}
	cs.Details = out
	cs.Reasons = append(cs.Reasons[:0], pb.ReasonTexts(out)...)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
