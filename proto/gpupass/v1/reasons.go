package gpupassv1

import (
	"fmt"
	"strings"
)

// ReasonKindName is a reason kind's stable CamelCase identifier, the JSON `kind`:
// REASON_KIND_NODE_MISSING is NodeMissing. An unknown kind (from a newer peer) is
// "Unknown".
func ReasonKindName(k ReasonKind) string {
	n, ok := ReasonKind_name[int32(k)]
	if !ok || k == ReasonKind_REASON_KIND_UNSPECIFIED {
		return "Unknown"
	}
	var b strings.Builder
	for _, w := range strings.Split(strings.TrimPrefix(n, "REASON_KIND_"), "_") {
		b.WriteString(w[:1] + strings.ToLower(w[1:]))
	}
	return b.String()
}

// ReasonText renders a reason for people. The text is the reason's, filled where it was
// decided; one without text (a peer that sent only the data) is rendered from its kind.
func ReasonText(r *Reason) string {
	if t := r.GetText(); t != "" {
		return t
	}
	return RenderReason(r)
}

// RenderReason is the text of a reason from its kind and fields (the words of
// docs/host-agent.md's restart rule).
func RenderReason(r *Reason) string {
	dev, want, got, detail := r.GetDevice(), r.GetWant(), r.GetGot(), r.GetDetail()
	switch r.GetKind() {
	case ReasonKind_REASON_KIND_NODES_UNREADABLE:
		return fmt.Sprintf("cannot inspect the running container's /dev (%s); restarting to be sure", detail)
	case ReasonKind_REASON_KIND_NODE_MISSING:
		return fmt.Sprintf("running container has no %s (want %s)", dev, want)
	case ReasonKind_REASON_KIND_NODE_NOT_CHAR:
		return fmt.Sprintf("running container's %s is not a character device (an optional bind left an empty file); want %s", dev, want)
	case ReasonKind_REASON_KIND_NODE_WRONG:
		return fmt.Sprintf("running container's %s is %s, want %s", dev, got, want)
	case ReasonKind_REASON_KIND_NODE_UNASSIGNED:
		return fmt.Sprintf("running container still has %s, which is not assigned", dev)
	case ReasonKind_REASON_KIND_GUEST_SOCKET_DIR_MISSING:
		return fmt.Sprintf("guest socket directory %s is missing on the host", detail)
	case ReasonKind_REASON_KIND_GUEST_SOCKET_UNREADABLE:
		return fmt.Sprintf("cannot see the guest socket from inside the container (%s)", detail)
	case ReasonKind_REASON_KIND_GUEST_SOCKET_HIDDEN:
		return fmt.Sprintf("guest socket hidden inside the container by a mount on %s", detail)
	case ReasonKind_REASON_KIND_GUEST_SOCKET_FOREIGN:
		return fmt.Sprintf("guest socket at %s inside the container is not the host's %s", dev, detail)
	case ReasonKind_REASON_KIND_GUEST_SOCKET_UNMOUNTED:
		return "running container was started without the guest socket mount at " + dev
	case ReasonKind_REASON_KIND_STARTED_CONFIG_UNREADABLE:
		return fmt.Sprintf("cannot read the config the container was started with (%s); restarting to be sure", detail)
	case ReasonKind_REASON_KIND_STARTED_CONFIG_UNPARSABLE:
		return fmt.Sprintf("cannot parse the config the container was started with (%s); restarting to be sure", detail)
	case ReasonKind_REASON_KIND_STARTED_WITH_RULE:
		return fmt.Sprintf("running container was started with %s, which is not desired", got)
	case ReasonKind_REASON_KIND_STARTED_WITHOUT_RULE:
		return fmt.Sprintf("running container was started without %s", want)
	case ReasonKind_REASON_KIND_GUEST_DENIED:
		return fmt.Sprintf("guest reports %s denied by the device cgroup: the running rules do not allow it", dev)
	case ReasonKind_REASON_KIND_UNSETTLED:
		return "no record of the device rules the running container was started with, and no guest report proves them; restarting to be sure"
	}
	return strings.TrimSpace(fmt.Sprintf("reason %s %s %s %s %s", ReasonKindName(r.GetKind()), dev, want, got, detail))
}
