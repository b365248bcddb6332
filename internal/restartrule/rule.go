// Package restartrule decides whether a running container must restart: iff what it runs
// with differs from what is desired (docs/host-agent.md, "The restart rule"). It is a pure
// function of evidence the host observed (Evidence) and the desired state (Desired); the
// host agent (internal/hostagent, evidence.go) gathers the evidence. Like nomad's
// feasibility checkers, each check takes the evidence and the ask and returns its
// reasons against the running container (none: it passes); Decide runs them all.
// Whether this apply writes anything never enters into it.
package restartrule

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	pb "gpupass/proto/gpupass/v1"
)

// Desired is what the container should run with.
type Desired struct {
	// Devices are the nodes it must have.
	Devices []passthrough.ExpectedDevice
	// Rules is the managed set of the desired config (passthrough.Result.Set).
	Rules []string
	// Inventory is the host's, to recognise managed rules in the start-time config.
	Inventory *gpu.Inventory
	// Style: dev style entries are rendered by PVE itself, so the start-time config's rules
	// are not compared (the nodes and the guest judge them).
	Style pb.Style
	// DriverHost: the container is desired `driver: host` (the hook provides the host's
	// userspace at its start); Driver is the host driver it should have, the loaded kernel
	// module's version ("" unknown).
	DriverHost bool
	Driver     string
}

// Evidence is what the host observed of the running container, without exec.
type Evidence struct {
	// Nodes are the desired paths as its init sees them (/proc/<init>/root/dev), or
	// NodesErr why they could not be looked at.
	Nodes    map[string]observe.Node
	NodesErr error
	// GPUNodes are the /dev/nvidia<N> and /dev/nvidia-caps/* character devices it has.
	GPUNodes []string
	// Socket is its view of the guest socket.
	Socket Socket
	// Started is the config it was started with (raw style only).
	Started Started
	// Guest is the latest report of its connected guest; nil when none.
	Guest *pb.GuestReport
	// Driver is the host driver the running container got from the driver hook at its
	// start (internal/hostdriver's marker).
	Driver Driver
}

// Driver is the evidence of the host driver the running container started with.
type Driver struct {
	// Present: it has the hook's marker; Version is the driver version it names.
	Present bool
	Version string
	// Err: the marker could not be read.
	Err error
}

// Socket is the evidence on the guest socket as the running container sees it.
type Socket struct {
	// HostDir is the host's socket directory; HostDirMissing says it does not exist.
	HostDir        string
	HostDirMissing bool
	// Err is why the container's view could not be gathered.
	Err error
	// View is observe.JudgeSocket's verdict on the gathered evidence.
	View observe.SocketView
}

// Started is the evidence of the config the running container was started with.
type Started struct {
	Config []byte
	// None: the runtime keeps no record of it (runtime.ErrNoStartedConfig).
	None bool
	// Err: the record could not be read.
	Err error
}

// Check is one part of the rule: its reasons against the running container, none if it
// passes.
type Check struct {
	Name  string
	Judge func(Evidence, Desired) []*pb.Reason
}

// Checks are the rule's checks, in the order of docs/host-agent.md.
var Checks = []Check{
	{"nodes", CheckNodes},
	{"unassigned nodes", CheckUnassigned},
	{"guest socket", CheckSocket},
	{"started config", CheckStarted},
	{"guest report", CheckGuest},
	{"host driver", CheckHostDriver},
}

// Decide applies the rule: restart iff a check gives a reason, or the evidence cannot
// settle it (no start-time record and no guest report proving the nodes open). The
// reasons are sorted by text.
func Decide(ev Evidence, want Desired) *pb.RestartDecision {
	var reasons []*pb.Reason
	for _, c := range Checks {
		reasons = append(reasons, c.Judge(ev, want)...)
	}
	if len(reasons) == 0 && !Settled(ev, want) {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_UNSETTLED}))
	}
	sort.SliceStable(reasons, func(i, j int) bool { return reasons[i].GetText() < reasons[j].GetText() })
	d := &pb.RestartDecision{Required: len(reasons) > 0, Details: reasons}
	for _, r := range reasons {
		d.Reasons = append(d.Reasons, r.GetText())
	}
	return d
}

// Settled says whether the evidence proves the device rules the container runs with: a
// start-time record (or dev style, judged by the nodes alone), or a guest report that
// checked every desired node.
func Settled(ev Evidence, want Desired) bool {
	if want.Style == pb.Style_STYLE_DEV || !ev.Started.None || len(want.Devices) == 0 {
		return true
	}
	return guestChecked(ev.Guest, want) == len(want.Devices)
}

// CheckNodes: each desired node is in the running container, a character device with the
// desired major:minor.
func CheckNodes(ev Evidence, want Desired) []*pb.Reason {
	if ev.NodesErr != nil {
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NODES_UNREADABLE, Detail: ev.NodesErr.Error()})}
	}
	var out []*pb.Reason
	for _, d := range want.Devices {
		n, w := ev.Nodes[d.Path], majmin(d.Major, d.Minor)
		switch {
		case !n.Exists:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NODE_MISSING, Device: d.Path, Want: w}))
		case !n.Char:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NODE_NOT_CHAR, Device: d.Path, Want: w}))
		case n.Major != d.Major || n.Minor != d.Minor:
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NODE_WRONG, Device: d.Path, Want: w, Got: majmin(n.Major, n.Minor)}))
		}
	}
	return out
}

// gpuNodeName is a whole GPU's node.
var gpuNodeName = regexp.MustCompile(`^/dev/nvidia[0-9]+$`)

// CheckUnassigned: the running container has no GPU node (/dev/nvidia<N>, a MIG
// capability) that is not desired: a shrunk assignment, GPUs a clone inherited, MIG
// capabilities a whole GPU no longer gets.
func CheckUnassigned(ev Evidence, want Desired) []*pb.Reason {
	desired := map[string]bool{}
	for _, d := range want.Devices {
		desired[d.Path] = true
	}
	var out []*pb.Reason
	for _, p := range ev.GPUNodes {
		if !desired[p] && (gpuNodeName.MatchString(p) || strings.HasPrefix(p, gpu.DirCaps+"/")) {
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NODE_UNASSIGNED, Device: p}))
		}
	}
	return out
}

// CheckSocket: the running container sees the host's guest socket (the same inode, not a
// mountinfo line). A bind that a later mount hides, or a socket of the same name that is
// not the host's, is named as such.
func CheckSocket(ev Evidence, _ Desired) []*pb.Reason {
	if r := SocketReason(ev.Socket); r != nil {
		return []*pb.Reason{r}
	}
	return nil
}

// SocketReason is why the container does not see the host's guest socket, nil if it does
// (status gives it for a running container whose guest has not connected).
func SocketReason(s Socket) *pb.Reason {
	v := s.View
	switch {
	case s.HostDirMissing:
		return pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_DIR_MISSING, Detail: s.HostDir})
	case s.Err != nil:
		return pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_UNREADABLE, Detail: s.Err.Error()})
	case v.Visible != "":
		return nil
	case v.Hidden != "":
		return pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_HIDDEN, Device: v.Hidden, Detail: v.Cover})
	case v.Mounted != "":
		return pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_FOREIGN, Device: v.Mounted, Detail: s.HostDir + "/" + guestchan.SocketName})
	}
	return pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_UNMOUNTED, Device: guestchan.GuestDir})
}

// CheckStarted (raw style): the device cgroup rules of the config the container was
// started with are the desired ones. Mount entries are judged by the nodes the container
// really has, since their text differs between the PVE config and the start-time config.
func CheckStarted(ev Evidence, want Desired) []*pb.Reason {
	if want.Style == pb.Style_STYLE_DEV || ev.Started.None {
		return nil
	}
	if ev.Started.Err != nil {
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STARTED_CONFIG_UNREADABLE, Detail: ev.Started.Err.Error()})}
	}
	cfg, err := pveconf.Parse(ev.Started.Config, pveconf.FormatLXC)
	if err != nil {
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STARTED_CONFIG_UNPARSABLE, Detail: err.Error()})}
	}
	// Judge the start-time config with the host's inventory: without it, allow rules are
	// recognised only for 195 and the dynamic ranges.
	have := ruleSet(passthrough.NewMatcher(want.Inventory).ManagedSet(cfg))
	desired := ruleSet(want.Rules)
	var out []*pb.Reason
	for r := range have {
		if !desired[r] {
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STARTED_WITH_RULE, Got: r}))
		}
	}
	for r := range desired {
		if !have[r] {
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STARTED_WITHOUT_RULE, Want: r}))
		}
	}
	return out
}

// CheckGuest: the guest's own report from inside the running container denies none of
// the desired nodes (a denied node means the running rules do not allow it).
func CheckGuest(ev Evidence, want Desired) []*pb.Reason {
	var out []*pb.Reason
	for _, dc := range guestChecks(ev.Guest, want) {
		if dc.GetStatus() == pb.DeviceStatus_DEVICE_STATUS_DENIED {
			out = append(out, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_DENIED, Device: dc.GetPath()}))
		}
	}
	return out
}

// CheckHostDriver: a `driver: host` container runs with the host driver that is loaded
// now (a host driver upgrade shows as HostDriverChanged, old -> new), and a container no
// longer desired `driver: host` does not have it.
func CheckHostDriver(ev Evidence, want Desired) []*pb.Reason {
	run := ev.Driver
	switch {
	case run.Err != nil:
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_DRIVER_UNREADABLE, Detail: run.Err.Error()})}
	case want.DriverHost && !run.Present:
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_DRIVER_MISSING})}
	case want.DriverHost && want.Driver != "" && run.Version != want.Driver:
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED, Got: run.Version, Want: want.Driver})}
	case !want.DriverHost && run.Present:
		return []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_DRIVER_UNWANTED})}
	}
	return nil
}

// guestChecks are the report's checks of desired nodes (same path and major:minor).
func guestChecks(rep *pb.GuestReport, want Desired) []*pb.DeviceCheck {
	if rep == nil {
		return nil
	}
	byPath := map[string]passthrough.ExpectedDevice{}
	for _, d := range want.Devices {
		byPath[d.Path] = d
	}
	var out []*pb.DeviceCheck
	for _, dc := range rep.GetDevices() {
		if d, ok := byPath[dc.GetPath()]; ok && dc.GetMajor() == d.Major && dc.GetMinor() == d.Minor {
			out = append(out, dc)
		}
	}
	return out
}

// guestChecked counts the report's checks of desired nodes.
func guestChecked(rep *pb.GuestReport, want Desired) int { return len(guestChecks(rep, want)) }

// ruleSet keeps the device cgroup rules of a managed set.
func ruleSet(managed []string) map[string]bool {
	out := map[string]bool{}
	for _, m := range managed {
		if strings.Contains(m, "devices.allow") || strings.Contains(m, "devices.deny") {
			out[m] = true
		}
	}
	return out
}

func majmin(major, minor uint32) string { return fmt.Sprintf("%d:%d", major, minor) }
