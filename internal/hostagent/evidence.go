package hostagent

import (
	"fmt"

	"gpupass/internal/guestchan"
	"gpupass/internal/observe"
	"gpupass/internal/runtime"
)

// Reasons the host's own evidence gives against a guest's report (their text starts with
// the name).
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
func (a *Agent) hostEvidence(id string, st runtime.State, snap guestchan.Snapshot) []string {
	rep := snap.Report
	if rep == nil {
		return nil
	}
	gen, known := a.liveGeneration(st, snap)
	if known && !snap.Generation.IsZero() && snap.Generation != gen {
		return []string{fmt.Sprintf("%s: the latest guest report is from the container's previous start (%v; now %v): waiting for the guest of the running container", ReasonPreviousGeneration, snap.Generation, gen)}
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
		return []string{fmt.Sprintf("%s: the guest reports ready, but the host cannot look at the container's /dev (%v)", ReasonHostObservation, err)}
	}
	var out []string
	for _, p := range paths {
		n, w := seen[p], want[p]
		switch {
		case !n.Exists:
			out = append(out, fmt.Sprintf("%s: the guest reports ready, but the host sees no %s in the container", ReasonHostObservation, p))
		case !n.Char:
			out = append(out, fmt.Sprintf("%s: the guest reports ready, but the host sees %s in the container as no character device", ReasonHostObservation, p))
		case n.Major != w[0] || n.Minor != w[1]:
			out = append(out, fmt.Sprintf("%s: the guest reports ready, but the host sees %s in the container as %d:%d, want %d:%d", ReasonHostObservation, p, n.Major, n.Minor, w[0], w[1]))
		}
	}
	return out
}
