package controller

import (
	"fmt"
	"slices"

	pb "gpupass/proto/gpupass/v1"
)

// evidenceKinds are the host agent's reasons with their own finding (internal/hostagent:
// txn.go, evidence.go).
var evidenceKinds = []pb.ReasonKind{
	pb.ReasonKind_REASON_KIND_JOURNAL_CONFLICT,
	pb.ReasonKind_REASON_KIND_JOURNAL_QUARANTINED,
	pb.ReasonKind_REASON_KIND_HOST_OBSERVATION,
	pb.ReasonKind_REASON_KIND_PREVIOUS_GENERATION,
}

// evidenceFindings explains the reasons that come from the host's own records and
// observation rather than from the guest: an apply left in conflict with an edit, a
// journal the agent could not read, a ready report the host's look at /dev contradicts,
// a report from the container's previous start. They are named whether the container runs
// or not.
func evidenceFindings(d *Diagnosis, st *pb.ContainerStatus, apply string) []Finding {
	var out []Finding
	for _, reason := range statusReasons(st) {
		r := pb.ReasonText(reason)
		switch reason.GetKind() {
		case pb.ReasonKind_REASON_KIND_JOURNAL_CONFLICT:
			out = append(out, Finding{Problem: r,
				Cause: "the container's config was changed by someone else while an apply was unfinished (the agent was down, or the apply failed); gpupass never writes its backup over such an edit",
				Fix:   fmt.Sprintf("on %s: compare %s with the backup the host agent's journal names (state_dir/journal/done), keep what is right, then %s", d.Host.Name, d.runtimeCmd("config"), apply)})
		case pb.ReasonKind_REASON_KIND_JOURNAL_QUARANTINED:
			out = append(out, Finding{Problem: r,
				Cause: "a journal file of an interrupted apply could not be read (damaged disk, an edit); the agent set it aside and reconciled the others",
				Fix:   fmt.Sprintf("on %s: read the file (its .why says why), check the container, then remove the file and %s", d.Host.Name, apply)})
		case pb.ReasonKind_REASON_KIND_HOST_OBSERVATION:
			out = append(out, Finding{Problem: r,
				Cause: "the guest's report says ready but the host's own look at the container's /dev (through its init's root) disagrees: the report is not from a working gpupass-guest-agent, or the nodes went away since",
				Fix:   fmt.Sprintf("on %s: journalctl -u gpupass-host-agent; check which process in container %s talks on /dev/gpupass/agent.sock, then %s", d.Host.Name, d.Entry.ID, apply)})
		case pb.ReasonKind_REASON_KIND_PREVIOUS_GENERATION:
			out = append(out, Finding{Problem: r,
				Cause: "the container was restarted and its guest agent has not reported since: the last report is from before the restart",
				Fix:   fmt.Sprintf("wait for the guest agent to start in container %s (gpupass-guest-agent in its init)", d.Entry.ID)})
		}
	}
	return out
}

// evidenceExplained reports whether reason is one of those evidenceFindings explains.
func evidenceExplained(reason *pb.Reason) bool {
	return slices.Contains(evidenceKinds, reason.GetKind())
}

// statusReasons are a status's reasons as data (an agent older than details sends text
// only: each is then of kind OTHER, which no finding claims).
func statusReasons(st *pb.ContainerStatus) []*pb.Reason {
	return pb.DetailsOf(st.GetReasons(), st.GetDetails())
}
