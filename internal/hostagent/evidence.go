package hostagent

import (
	"fmt"

	"gpupass/internal/guestchan"
	"gpupass/internal/observe"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// Reasons the host's own evidence gives against a guest's report (their text starts with
// the name; their kinds are REASON_KIND_PREVIOUS_GENERATION and _HOST_OBSERVATION).
const (
	// ReasonPreviousGeneration: the report was sent from the container's previous start.
	ReasonPreviousGeneration = "previous generation"
	// ReasonHostObservation: the guest says ready, the host's look at the container's
	// real /dev says otherwise.
	ReasonHostObservation = "host observation"
)

// generationOf is the generation of the container whose init is pid now.
func (a *Agent) generationOf(pid int) (guestchan.Generation, bool) {
	if pid <= 0 {
		return guestchan.Generation{}, false
	}
	t, err := runtime.StartTicks(a.procRoot(), pid)
	if err != nil {
		return guestchan.Generation{}, false
	}
	return guestchan.Generation{InitPID: pid, StartTicks: t}, true
}

// liveGeneration is the running container's generation: from its init pid when the
// runtime gave it, else from the report's session when that init still runs (a status
// that learned only whether the container runs).
func (a *Agent) liveGeneration(st runtime.State, snap guestchan.Snapshot) (guestchan.Generation, bool) {
	if st.InitPID > 0 {
		return a.generationOf(st.InitPID)
	}
	if snap.Generation.IsZero() {
		return guestchan.Generation{}, false
	}
	g, ok := a.generationOf(snap.Generation.InitPID)
	if !ok || g != snap.Generation {
		return guestchan.Generation{}, false
	}
	return g, true
}

// hostEvidence checks a running container's guest report against what the host itself
// sees: the report must come from the running container's generation, and a ready report
// must agree with the host's observation of the container's real /dev
// (/proc/<init>/root/dev): a root process inside the container can send any report, but
// cannot make the host see a device node that is not there.
func (a *Agent) hostEvidence(id string, st runtime.State, snap guestchan.Snapshot) []*pb.Reason {
	rep := snap.Report
	if rep == nil {
		return nil
	}
	gen, known := a.liveGeneration(st, snap)
	if known && !snap.Generation.IsZero() && snap.Generation != gen {
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_PREVIOUS_GENERATION, Got: fmt.Sprint(snap.Generation), Want: fmt.Sprint(gen)})}
	}
	if !rep.GetReady() || !known {
		return nil
	}
	want := map[string][2]uint32{}
	var paths []string
	if exp, ok := a.expectationOf(id); ok {
		for _, d := range exp.GetDevices() {
			want[d.GetPath()] = [2]uint32{d.GetMajor(), d.GetMinor()}
			paths = append(paths, d.GetPath())
		}
	} else {
		for _, d := range rep.GetDevices() {
			want[d.GetPath()] = [2]uint32{d.GetMajor(), d.GetMinor()}
			paths = append(paths, d.GetPath())
		}
	}
	if len(paths) == 0 {
		return nil
	}
	seen, err := observe.Devices(a.procRoot(), gen.InitPID, paths)
	if err != nil {
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_OBSERVATION, Detail: err.Error()})}
	}
	var out []*pb.Reason
	for _, p := range paths {
		n, w := seen[p], want[p]
		switch {
		case !n.Exists:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_OBSERVATION, Device: p, Want: fmt.Sprintf("%d:%d", w[0], w[1])}))
		case !n.Char:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_OBSERVATION, Device: p, Want: fmt.Sprintf("%d:%d", w[0], w[1]), Got: pb.NotChar}))
		case n.Major != w[0] || n.Minor != w[1]:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_OBSERVATION, Device: p, Want: fmt.Sprintf("%d:%d", w[0], w[1]), Got: fmt.Sprintf("%d:%d", n.Major, n.Minor)}))
		}
	}
	return out
}
