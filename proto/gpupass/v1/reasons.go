package gpupassv1

import (
	"fmt"
	"slices"
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
	case ReasonKind_REASON_KIND_CONTAINER_STOPPED:
		return "container is stopped"
	case ReasonKind_REASON_KIND_STATE_UNKNOWN, ReasonKind_REASON_KIND_OTHER:
		return detail
	case ReasonKind_REASON_KIND_JOURNAL_CONFLICT:
		return fmt.Sprintf("journal conflict: apply %s could not be undone because the config was changed by someone else meanwhile; gpupass left it as it is (%s); check the config, then apply again", want, detail)
	case ReasonKind_REASON_KIND_JOURNAL_QUARANTINED:
		return fmt.Sprintf("journal quarantined: %s could not be read (%s); it was not reconciled: check the container, then remove the file", dev, detail)
	case ReasonKind_REASON_KIND_PREVIOUS_GENERATION:
		return fmt.Sprintf("previous generation: the latest guest report is from the container's previous start (%s; now %s): waiting for the guest of the running container", got, want)
	case ReasonKind_REASON_KIND_HOST_OBSERVATION:
		const head = "host observation: the guest reports ready, but the host"
		switch {
		case detail != "":
			return fmt.Sprintf("%s cannot look at the container's /dev (%s)", head, detail)
		case got == "":
			return fmt.Sprintf("%s sees no %s in the container", head, dev)
		case got == NotChar:
			return fmt.Sprintf("%s sees %s in the container as no character device", head, dev)
		}
		return fmt.Sprintf("%s sees %s in the container as %s, want %s", head, dev, got, want)
	case ReasonKind_REASON_KIND_HOST_NOT_PREPARED:
		return "host: " + detail
	case ReasonKind_REASON_KIND_GUEST_REFUSED:
		return fmt.Sprintf("guest agent connected but was refused at %s: %s", got, detail)
	case ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED:
		return "guest agent has not connected (is gpupass-guest-agent installed and running in the container?)"
	case ReasonKind_REASON_KIND_GUEST_NOT_REPORTED:
		return "guest agent connected but has not reported yet"
	case ReasonKind_REASON_KIND_GUEST_SILENT:
		return fmt.Sprintf("guest agent silent for %s (last report %s)", detail, got)
	case ReasonKind_REASON_KIND_NETWORK:
		return "network: " + detail
	case ReasonKind_REASON_KIND_DEVICE_UNREPORTED:
		return fmt.Sprintf("guest has not reported on %s yet", dev)
	case ReasonKind_REASON_KIND_NO_DEVICES:
		return "no NVIDIA device nodes found under /dev"
	case ReasonKind_REASON_KIND_EXPECTATION_TRUNCATED:
		return fmt.Sprintf("the expectation lists %s devices, more than %s: checked the first %s", want, got, got)
	case ReasonKind_REASON_KIND_DEVICE_CHECK:
		return fmt.Sprintf("%s: %s: %s", dev, got, detail)
	case ReasonKind_REASON_KIND_HOST_DRIVER_NOT_LOADED:
		return "host kernel driver not loaded"
	case ReasonKind_REASON_KIND_DRIVER_MISMATCH:
		return fmt.Sprintf("driver/library version mismatch: kernel %s, libnvidia-ml %s", want, got)
	case ReasonKind_REASON_KIND_SMI_FAILED:
		return "nvidia-smi: " + detail
	case ReasonKind_REASON_KIND_SMI_RUNNING:
		return "nvidia-smi check running"
	case ReasonKind_REASON_KIND_SMI_UNASSIGNED_GPU:
		return "nvidia-smi sees GPU " + dev + " that is not assigned to this container"
	case ReasonKind_REASON_KIND_SMI_MISSING_GPU:
		return "nvidia-smi does not see assigned GPU " + dev
	case ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED:
		return fmt.Sprintf("host driver changed %s -> %s: the running container has the userspace of %s", got, want, got)
	case ReasonKind_REASON_KIND_HOST_DRIVER_MISSING:
		return "running container was started without the host's driver (driver: host provides it at start)"
	case ReasonKind_REASON_KIND_HOST_DRIVER_UNWANTED:
		return "running container still has the host's driver (driver: own now)"
	case ReasonKind_REASON_KIND_HOST_DRIVER_UNREADABLE:
		return detail + "; restarting to be sure"
	case ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER:
		return fmt.Sprintf("restart required: host driver changed %s -> %s: the running container has the userspace of %s", got, want, got)
	case ReasonKind_REASON_KIND_OWN_USERSPACE_MISMATCH:
		return fmt.Sprintf("host driver changed to %s but the container's own userspace is %s: install the %s userspace in it, or set driver: host in fleet.yaml (docs/driver.md)", want, got, want)
	}
	return strings.TrimSpace(fmt.Sprintf("reason %s %s %s %s %s", ReasonKindName(r.GetKind()), dev, want, got, detail))
}

// ReasonJSON is a reason in the JSON outputs (`reasons_detail` of gpupass and of
// gpupass-guest-agent --once -o json): the kind's CamelCase name, the text, and the
// fields the reason has.
type ReasonJSON struct {
	Kind   string `json:"kind"`
	Text   string `json:"text"`
	Device string `json:"device,omitempty"`
	Want   string `json:"want,omitempty"`
	Got    string `json:"got,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// ReasonToJSON is r's JSON form.
func ReasonToJSON(r *Reason) ReasonJSON {
	return ReasonJSON{Kind: ReasonKindName(r.GetKind()), Text: ReasonText(r), Device: r.GetDevice(), Want: r.GetWant(), Got: r.GetGot(), Detail: r.GetDetail()}
}

// NotChar is a HOST_OBSERVATION's got for a node that is no character device.
const NotChar = "not-char"

// NewReason fills r's text (RenderReason) and returns it: the one way a deciding side
// makes a reason.
func NewReason(r *Reason) *Reason {
	r.Text = RenderReason(r)
	return r
}

// OtherReason is a reason known only by its text (a peer older than details, a
// controller's own note).
func OtherReason(text string) *Reason {
	return &Reason{Kind: ReasonKind_REASON_KIND_OTHER, Text: text, Detail: text}
}

// ReasonTexts are the reasons' texts, in order (the `reasons` list of old readers); nil
// for none.
func ReasonTexts(rs []*Reason) []string {
	if len(rs) == 0 {
		return nil
	}
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, ReasonText(r))
	}
	return out
}

// DetailsOf pairs texts with their details: details when the peer sent one per text,
// else each text as an OtherReason.
func DetailsOf(texts []string, details []*Reason) []*Reason {
	if len(details) == len(texts) {
		return details
	}
	out := make([]*Reason, 0, len(texts))
	for _, t := range texts {
		out = append(out, OtherReason(t))
	}
	return out
}

// Brief is the reasons as one short line (GroupByDevice, joined by "; "): for progress
// lines; data keeps every reason.
func Brief(rs []*Reason) string {
	return strings.Join(ReasonTexts(GroupByDevice(rs, nil)), "; ")
}

// GroupByDevice makes one of the reasons that differ only in their device (the same kind,
// want, got and detail: four nodes a device cgroup denies), naming the devices ("guest
// reports /dev/nvidia1, /dev/nvidiactl denied by ..."), at the first one's place; the
// others stay as they are. The devices are in the reasons' order, or by order when given.
// For short human output: the data keeps every reason.
func GroupByDevice(rs []*Reason, order func(a, b string) int) []*Reason {
	type group struct {
		at      int
		devices []string
	}
	out := make([]*Reason, 0, len(rs))
	groups := map[string]*group{}
	for _, r := range rs {
		k := r.GetKind()
		if r.GetDevice() == "" || k == ReasonKind_REASON_KIND_OTHER || k == ReasonKind_REASON_KIND_UNSPECIFIED {
			out = append(out, r)
			continue
		}
		key := fmt.Sprint(int32(k), "\x00", r.GetWant(), "\x00", r.GetGot(), "\x00", r.GetDetail())
		g, ok := groups[key]
		if !ok {
			g = &group{at: len(out)}
			groups[key] = g
			out = append(out, r)
		}
		g.devices = append(g.devices, r.GetDevice())
	}
	for _, g := range groups {
		if len(g.devices) < 2 {
			continue
		}
		if order != nil {
			slices.SortStableFunc(g.devices, order)
		}
		first := out[g.at]
		out[g.at] = NewReason(&Reason{Kind: first.GetKind(), Device: strings.Join(g.devices, ", "), Want: first.GetWant(), Got: first.GetGot(), Detail: first.GetDetail()})
	}
	return out
}

// ReasonKindOf is the kind whose ReasonKindName is name; ok is false for any other name
// (the controller's own kinds, "Other", "Unknown").
func ReasonKindOf(name string) (k ReasonKind, ok bool) {
	for v := range ReasonKind_name {
		if k := ReasonKind(v); k != ReasonKind_REASON_KIND_UNSPECIFIED && ReasonKindName(k) == name {
			return k, true
		}
	}
	return ReasonKind_REASON_KIND_UNSPECIFIED, false
}
