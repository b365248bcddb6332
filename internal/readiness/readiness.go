// Package readiness is the one definition of "ready" that the guest agent, the host agent
// and the controller share (docs/host-agent.md, "Readiness"):
//
//   - a guest report is ready iff the guest's checks leave no reason against it (Guest);
//   - the host calls a running container ready iff nothing, neither the guest's report nor
//     the host's own evidence, gives a reason against it and the guest's latest report of
//     the running container says ready (State);
//   - the controller counts a container as fine iff the host calls it ready, or it is
//     stopped while the fleet does not ask for it to run (Counts).
//
// Each is a pure function of what its caller decided or received; the deciding (the
// checks, the evidence) stays with the caller.
package readiness

import pb "gpupass/proto/gpupass/v1"

// Guest is the guest's verdict on its own report: ready iff no reason against it.
func Guest(reasons []*pb.Reason) bool { return len(reasons) == 0 }

// State is the host's state of a running container: pb.StateReady iff there is no reason
// against it (the guest's reasons and the host's together) and rep, its guest's latest
// report of the running container, is ready; else pb.StateNotReady.
func State(reasons []*pb.Reason, rep *pb.GuestReport) string {
	if len(reasons) == 0 && rep != nil && rep.GetReady() {
		return pb.StateReady
	}
	return pb.StateNotReady
}

// Reported is what the guest channel alone says: a connected guest, not silent, whose
// latest report is ready (the host's ready metric between statuses).
func Reported(connected, stale bool, rep *pb.GuestReport) bool {
	return connected && !stale && rep.GetReady()
}

// Counts is whether the controller counts a container as fine (exit code, doctor): ready,
// or stopped while the fleet does not ask for it to run (wantRunning: `state: running`).
func Counts(state string, wantRunning bool) bool {
	return state == pb.StateReady || (state == pb.StateStopped && !wantRunning)
}
