package agenttest

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	"gpupass/internal/readiness"
	"gpupass/internal/restartrule"
	pb "gpupass/proto/gpupass/v1"
)

// Container is the model of one container on a fake host.
type Container struct {
	ID       string
	RunState string   // running | stopped
	GPUs     []string // GPU selectors its config passes now; nil: gpupass never managed it
	// Running is the GPU minors the running container was started with (the evidence
	// the restart rule uses); set from GPUs when Start is called or when nil.
	Running []uint32
	Style   pb.Style
	Guest   bool   // a guest agent reports
	Lib     string // libnvidia-ml version inside ("" not installed)
	Denied  bool   // the device cgroup it runs with denies the nodes (e.g. a stale major); a restart clears it
	Network bool   // the guest has a working network
}

// resolve maps selectors to GPUs.
func (a *Agent) resolve(sel []string) ([]*pb.GPU, error) {
	var out []*pb.GPU
	for _, s := range sel {
		var found *pb.GPU
		for _, g := range a.GPUs {
			if s == fmt.Sprint(g.GetIndex()) || strings.EqualFold(s, g.GetUuid()) || strings.EqualFold(s, g.GetBusId()) ||
				strings.EqualFold("0000:"+s, g.GetBusId()) {
				found = g
			}
		}
		if found == nil {
			return nil, fmt.Errorf("GPU %q not found on %s (it has %d GPUs: indexes 0-%d)", s, a.Name, len(a.GPUs), len(a.GPUs)-1)
		}
		out = append(out, found)
	}
	return out, nil
}

func minors(gs []*pb.GPU) []uint32 {
	var m []uint32
	for _, g := range gs {
		m = append(m, g.GetMinor())
	}
	slices.Sort(m)
	return slices.Compact(m)
}

// gpuMajor is the major of /dev/nvidia<N> and /dev/nvidiactl, as gpu.Inventory.GPUMajor
// picks it ("nvidia", or "nvidia-frontend" on drivers that register that name).
func (a *Agent) gpuMajor() uint32 {
	if m, ok := a.Driver.GetMajors()["nvidia"]; ok {
		return m
	}
	return a.Driver.GetMajors()["nvidia-frontend"]
}

func (a *Agent) uvmMajor() uint32 { return a.Driver.GetMajors()["nvidia-uvm"] }

// node is a device node a container with GPUs needs.
type node struct {
	path         string
	major, minor uint32
}

// nodes are the nodes a container with the GPUs of minors ms needs, in the order the
// real renderer writes them (internal/passthrough render: GPUs by minor, then nvidiactl,
// nvidia-uvm, nvidia-uvm-tools).
func (a *Agent) nodes(ms []uint32) []node {
	var out []node
	for _, m := range ms {
		out = append(out, node{fmt.Sprintf("/dev/nvidia%d", m), a.gpuMajor(), m})
	}
	return append(out,
		node{"/dev/nvidiactl", a.gpuMajor(), a.CtlMinor},
		node{"/dev/nvidia-uvm", a.uvmMajor(), a.UVMMinor},
		node{"/dev/nvidia-uvm-tools", a.uvmMajor(), a.UVMToolsMinor})
}

// lines renders the managed config entries for a GPU set as the real renderer does
// (internal/passthrough render; TestModelPlansAsTheAgent holds the two together): raw
// style, one cgroup rule per node then one bind mount per node; dev style, devN entries.
// The guest socket's mount comes last.
func (a *Agent) lines(id string, style pb.Style, gpus []*pb.GPU) []string {
	var nodes []node
	if ms := minors(gpus); len(ms) > 0 {
		nodes = a.nodes(ms)
	}
	var out []string
	if style == pb.Style_STYLE_DEV {
		for i, n := range nodes {
			out = append(out, fmt.Sprintf("dev%d: %s,mode=0666", i, n.path))
		}
	} else {
		for _, n := range nodes {
			out = append(out, fmt.Sprintf("lxc.cgroup2.devices.allow: c %d:%d rwm", n.major, n.minor))
		}
		for _, n := range nodes {
			out = append(out, fmt.Sprintf("lxc.mount.entry: %s %s none bind,create=file 0 0", n.path, strings.TrimPrefix(n.path, "/")))
		}
	}
	out = append(out, fmt.Sprintf("lxc.mount.entry: /run/gpupass/guests/%s dev/gpupass none bind,create=dir 0 0", id))
	return out
}

// unmanaged is the main section of a container's config that gpupass does not manage:
// as PVE writes it, keys sorted (11 lines: the managed ones start at line 12).
const unmanaged = `arch: amd64
cores: 4
features: nesting=1
hostname: ct%[1]s
memory: 8192
net0: name=eth0,bridge=vmbr0,ip=dhcp,type=veth
onboot: 1
ostype: debian
rootfs: local-lvm:vm-%[1]s-disk-0,size=32G
swap: 512
unprivileged: 1
`

// config is the whole config of container id when the agent has rendered gpus in style
// into it; managed is false for a container gpupass never managed (no managed lines).
func (a *Agent) config(id string, style pb.Style, gpus []*pb.GPU, managed bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, unmanaged, id)
	if managed {
		for _, l := range a.lines(id, style, gpus) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Config is the config file container id has now: the unmanaged keys, then the agent's
// rendering of its GPUs (none when GPUs is nil: gpupass never managed it).
func (a *Agent) Config(id string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.containers[id]
	if !ok {
		return ""
	}
	have, _ := a.resolve(c.GPUs)
	return a.config(id, c.Style, have, c.GPUs != nil)
}

// plan plans spec as the agent's planKnown does: the config edit (the real line diff of
// the config before and after), then the run state and start or restart.
func (a *Agent) plan(spec *pb.ContainerSpec) *pb.ContainerPlan {
	p := &pb.ContainerPlan{Id: spec.GetId(), Gpus: spec.GetGpus(), Restart: &pb.RestartDecision{}}
	c, ok := a.containers[spec.GetId()]
	if !ok {
		p.Error = fmt.Sprintf("container %s does not exist on %s", spec.GetId(), a.Name)
		return p
	}
	p.ConfigPath = "/etc/pve/lxc/" + c.ID + ".conf"
	have, _ := a.resolve(c.GPUs)
	old := a.config(c.ID, c.Style, have, c.GPUs != nil)
	p.Digest = pveconf.Digest([]byte(old))
	want, err := a.resolve(spec.GetGpus())
	if err != nil {
		p.Error = err.Error()
		return p
	}
	// The agent renders the guest socket's mount even for no GPUs: a spec makes the
	// container managed.
	edits := pveconf.Edits([]byte(old), []byte(a.config(c.ID, spec.GetStyle(), want, true)))
	for _, e := range edits {
		switch e.Op {
		case pveconf.Delete:
			p.Changes = append(p.Changes, &pb.ConfigChange{Op: pb.ConfigChange_OP_REMOVE, Line: e.Text, LineNumber: uint32(e.OldLine)})
		case pveconf.Insert:
			p.Changes = append(p.Changes, &pb.ConfigChange{Op: pb.ConfigChange_OP_ADD, Line: e.Text, LineNumber: uint32(e.NewLine)})
		}
	}
	if len(p.Changes) > 0 {
		p.Diff = pveconf.UnifiedEdits("config", "config (planned)", edits)
	}
	p.RunState = c.RunState
	if c.RunState == "running" {
		p.Restart = a.restart(c, spec.GetStyle(), want)
	}
	p.Start = c.RunState != "running" && spec.GetWantState() == "running"
	return p
}

// restart decides whether running container c must restart to run with the GPUs want in
// style, by the agent's own rule (internal/restartrule) on the evidence the model's state
// stands for: c was started with the GPUs of Running (their nodes, and nvidiactl and the
// uvm nodes when any, are in it; the start-time config, as PVE keeps it, carries their
// cgroup rules), it sees the guest socket, and its guest, when one reports, checks the
// desired nodes it has (denied when Denied). The host driver hook is not modelled.
func (a *Agent) restart(c *Container, style pb.Style, want []*pb.GPU) *pb.RestartDecision {
	rd := restartrule.Desired{Style: style, Inventory: &gpu.Inventory{Majors: a.Driver.GetMajors()}}
	var desired []node
	if ms := minors(want); len(ms) > 0 {
		desired = a.nodes(ms)
	}
	for _, n := range desired {
		rd.Devices = append(rd.Devices, passthrough.ExpectedDevice{Path: n.path, Major: n.major, Minor: n.minor})
	}
	var entries []pveconf.Entry
	for _, l := range a.lines(c.ID, style, want) {
		k, v, _ := strings.Cut(l, ": ")
		entries = append(entries, pveconf.Entry{Key: k, Value: v})
	}
	rd.Rules = passthrough.EntrySet(entries)
	ev := restartrule.Evidence{
		Nodes:  map[string]observe.Node{},
		Socket: restartrule.Socket{HostDir: "/run/gpupass/guests/" + c.ID, View: observe.SocketView{Visible: guestchan.GuestDir}},
	}
	var started strings.Builder
	if len(c.Running) > 0 {
		for _, n := range a.nodes(c.Running) {
			ev.Nodes[n.path] = observe.Node{Exists: true, Char: true, Major: n.major, Minor: n.minor, Perm: 0o666}
			if n.isGPU(a) {
				ev.GPUNodes = append(ev.GPUNodes, n.path)
			}
			fmt.Fprintf(&started, "lxc.cgroup2.devices.allow = c %d:%d rwm\n", n.major, n.minor)
		}
	}
	ev.Started.Config = []byte(started.String())
	if c.Guest {
		ev.Guest = &pb.GuestReport{Devices: a.deviceChecks(c, desired)}
	}
	return restartrule.Decide(ev, rd)
}

// isGPU reports whether n is a whole GPU's node (/dev/nvidia<N>).
func (n node) isGPU(a *Agent) bool { return n.major == a.gpuMajor() && n.minor != a.CtlMinor }

// deviceChecks are the guest's checks of nodes in running container c: missing unless c
// was started with them, denied when Denied, no-driver when the driver is not loaded.
func (a *Agent) deviceChecks(c *Container, nodes []node) []*pb.DeviceCheck {
	present := func(n node) bool {
		if n.isGPU(a) {
			return slices.Contains(c.Running, n.minor)
		}
		return len(c.Running) > 0
	}
	var out []*pb.DeviceCheck
	for _, n := range nodes {
		d := &pb.DeviceCheck{Path: n.path}
		switch {
		case !present(n):
			d.Status, d.Detail = pb.DeviceStatus_DEVICE_STATUS_MISSING, "no such file"
		case !a.Driver.GetLoaded():
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, n.major, n.minor
			d.Detail = fmt.Sprintf("open: no such device or address: no driver behind major %d", n.major)
		case c.Denied:
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_DENIED, n.major, n.minor
			d.Detail = "open: operation not permitted: the device cgroup denies it (add the allow rule for this major and restart the container)"
		default:
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_OK, n.major, n.minor
		}
		out = append(out, d)
	}
	return out
}

func (a *Agent) status(id string, spec *pb.ContainerSpec) *pb.ContainerStatus {
	c, ok := a.containers[id]
	if !ok {
		st := &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), State: "error"}
		addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STATE_UNKNOWN, Detail: "container " + id + " does not exist on " + a.Name}))
		return st
	}
	// As the agent's statusWith: the GPUs are the spec's; the restart is judged against
	// the spec.
	st := &pb.ContainerStatus{Id: id, Gpus: spec.GetGpus(), RunState: c.RunState, GuestConnected: c.Guest && c.RunState == "running"}
	want, err := a.resolve(c.GPUs)
	if err != nil {
		st.State, st.Reasons = "error", []string{err.Error()}
		return st
	}
	st.Configured = &pb.GPUSet{Gpus: want}
	fleet, ferr := a.resolve(spec.GetGpus())
	if ferr == nil {
		st.Resolved = &pb.GPUSet{Gpus: fleet}
	}
	if c.RunState != "running" {
		st.State = "stopped"
		addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_CONTAINER_STOPPED}))
		return st
	}
	if ferr == nil {
		st.RestartRequired = a.restart(c, spec.GetStyle(), fleet).GetRequired()
	}
	if !st.GuestConnected {
		// With GPUs or without: no report, not ready.
		st.State = pb.StateNotReady
		addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED}))
		return st
	}
	// What the guest's report carries (the driver versions it reads, its network check,
	// its device checks), and the reasons it and the agent give, in their words (the
	// one renderer, pb.RenderReason).
	st.ReportAgeMs = 1200
	st.NetworkOk = c.Network
	st.Driver = &pb.DriverVersions{Kernel: a.Driver.GetKernelVersion(), Userspace: c.Lib}
	if c.Lib != "" {
		st.Driver.UserspacePath = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so." + c.Lib
	}
	var wantNodes []node
	if ms := minors(want); len(ms) > 0 {
		wantNodes = a.nodes(ms)
	}
	for _, d := range a.deviceChecks(c, wantNodes) {
		if d.GetStatus() != pb.DeviceStatus_DEVICE_STATUS_OK {
			addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DEVICE_CHECK, Device: d.GetPath(), Got: pb.DeviceStatusName(d.GetStatus()), Detail: d.GetDetail()}))
		}
		st.Devices = append(st.Devices, d)
	}
	switch {
	case len(wantNodes) == 0:
	case c.Lib == "":
		// The guest agent's words (internal/guest/report.go).
		st.Warnings = append(st.Warnings, "userspace driver not installed: no libnvidia-ml.so.1 in ld.so.cache or the standard library directories (passthrough works; CUDA programs need the driver libraries of version "+a.Driver.GetKernelVersion()+")")
	case c.Lib != a.Driver.GetKernelVersion():
		addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DRIVER_MISMATCH, Want: a.Driver.GetKernelVersion(), Got: c.Lib}))
	}
	if spec.GetRequireNetwork() && !c.Network {
		addReason(st, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NETWORK, Detail: NoNetwork}))
	}
	sortReasons(st)
	// Every reason here is one the guest's own checks give: its report is ready iff
	// there is none.
	st.State = readiness.State(st.Details, &pb.GuestReport{Ready: readiness.Guest(st.Details)})
	return st
}

// sortReasons orders reasons by their text, as the agent's status does (hostagent's
// sortReasons).
func sortReasons(st *pb.ContainerStatus) {
	sort.SliceStable(st.Details, func(i, j int) bool { return st.Details[i].GetText() < st.Details[j].GetText() })
	st.Reasons = pb.ReasonTexts(st.Details)
}

// NoNetwork is what a guest says of a container without a network link (lxc's `empty`
// network, internal/guest/network_linux.go).
const NoNetwork = "no network link up"

// addReason adds a reason as data and as text (the agent's status.go addReasons).
func addReason(st *pb.ContainerStatus, r *pb.Reason) {
	st.Details = append(st.Details, r)
	st.Reasons = append(st.Reasons, r.GetText())
}

func (a *Agent) inventory() *pb.HostInventory {
	inv := &pb.HostInventory{Name: a.Name, AgentBuild: "agenttest", Simulated: a.Simulated, Driver: a.Driver, Gpus: a.GPUs, Runtime: "pct"}
	ids := make([]string, 0, len(a.containers))
	for id := range a.containers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		c := a.containers[id]
		inv.Containers = append(inv.Containers, &pb.ContainerSummary{Id: id, RunState: c.RunState, Gpus: c.GPUs, GuestConnected: c.Guest && c.RunState == "running"})
	}
	return inv
}
