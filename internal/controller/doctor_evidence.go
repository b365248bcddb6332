package controller

import (
	"fmt"
	"strings"

	pb "gpupass/proto/gpupass/v1"
)

// Host agent reasons with their own finding, by the name they start with
// (internal/hostagent: txn.go, evidence.go).
const (
	reasonJournalConflict    = "journal conflict: "
	reasonJournalQuarantined = "journal quarantined: "
	reasonHostObservation    = "host observation: "
	reasonPreviousGeneration = "previous generation: "
)

// evidenceFindings explains the reasons that come from the host's own records and
// observation rather than from the guest: an apply left in conflict with an edit, a
// journal the agent could not read, a ready report the host's look at /dev contradicts,
// a report from the container's previous start. They are named whether the container runs
// or not.
func evidenceFindings(d *Diagnosis, st *pb.ContainerStatus, apply string) []Finding {
	var out []Finding
	for _, r := range st.GetReasons() {
		switch {
		case strings.HasPrefix(r, reasonJournalConflict):
			out = append(out, Finding{Problem: r,
				Cause: "the container's config was changed by someone else while an apply was unfinished (the agent was down, or the apply failed); gpupass never writes its backup over such an edit",
				Fix:   fmt.Sprintf("on %s: compare %s with the backup the host agent's journal names (state_dir/journal/done), keep what is right, then %s", d.Host.Name, d.runtimeCmd("config"), apply)})
		case strings.HasPrefix(r, reasonJournalQuarantined):
			out = append(out, Finding{Problem: r,
				Cause: "a journal file of an interrupted apply could not be read (damaged disk, an edit); the agent set it aside and reconciled the others",
				Fix:   fmt.Sprintf("on %s: read the file (its .why says why), check the container, then remove the file and %s", d.Host.Name, apply)})
		case strings.HasPrefix(r, reasonHostObservation):
			out = append(out, Finding{Problem: r,
				Cause: "the guest's report says ready but the host's own look at the container's /dev (through its init's root) disagrees: the report is not from a working gpupass-guest-agent, or the nodes went away since",
				Fix:   fmt.Sprintf("on %s: journalctl -u gpupass-host-agent; check which process in container %s talks on /run/gpupass/agent.sock, then %s", d.Host.Name, d.Entry.ID, apply)})
		case strings.HasPrefix(r, reasonPreviousGeneration):
			out = append(out, Finding{Problem: r,
				Cause: "the container was restarted and its guest agent has not reported since: the last report is from before the restart",
				Fix:   fmt.Sprintf("wait for the guest agent to start in container %s (gpupass-guest-agent in its init)", d.Entry.ID)})
		}
	}
	return out
}

// evidenceExplained reports whether reason is one of those evidenceFindings explains.
func evidenceExplained(reason string) bool {
	for _, p := range []string{reasonJournalConflict, reasonJournalQuarantined, reasonHostObservation, reasonPreviousGeneration} {
		if strings.HasPrefix(reason, p) {
			return true
		}
	}
	return false
}
