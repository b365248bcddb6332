package agenttest

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	pb "gpupass/proto/gpupass/v1"
)

// Container is the model of one container on a fake host.
type Container struct {
	ID       string
	RunState string   // running | stopped
	GPUs     []string // GPU selectors its config passes now
	// Running is the GPU minors the running container was started with (the evidence
	// the restart rule uses); set from GPUs when Start is called or when nil.
	Running []uint32
	Style   pb.Style
	Guest   bool   // a guest agent reports
	Lib     string // libnvidia-ml version inside ("" not installed)
	Denied  bool   // the device cgroup denies the nodes (e.g. a stale major)
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

func (a *Agent) major(name string) uint32 { return a.Driver.GetMajors()[name] }

// lines renders the managed config entries for a GPU set, as the real passthrough
// renderer would in spirit.
func (a *Agent) lines(id string, style pb.Style, gpus []*pb.GPU) []string {
	ms := minors(gpus)
	if len(ms) == 0 {
		return nil
	}
	nodes := []string{}
	for _, m := range ms {
		nodes = append(nodes, fmt.Sprintf("/dev/nvidia%d", m))
	}
	nodes = append(nodes, "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")
	var out []string
	if style == pb.Style_STYLE_DEV {
		for i, n := range nodes {
			out = append(out, fmt.Sprintf("dev%d: %s", i, n))
		}
	} else {
		for _, m := range ms {
			out = append(out, fmt.Sprintf("lxc.cgroup2.devices.allow: c %d:%d rwm", a.major("nvidia-frontend"), m))
		}
		out = append(out, fmt.Sprintf("lxc.cgroup2.devices.allow: c %d:255 rwm", a.major("nvidia-frontend")))
		out = append(out, fmt.Sprintf("lxc.cgroup2.devices.allow: c %d:* rwm", a.major("nvidia-uvm")))
		for _, n := range nodes {
			out = append(out, fmt.Sprintf("lxc.mount.entry: %s %s none bind,create=file 0 0", n, strings.TrimPrefix(n, "/")))
		}
	}
	out = append(out, fmt.Sprintf("lxc.mount.entry: /run/gpupass/guests/%s dev/gpupass none bind,create=dir 0 0", id))
	return out
}

func (a *Agent) plan(spec *pb.ContainerSpec) *pb.ContainerPlan {
	p := &pb.ContainerPlan{Id: spec.GetId(), Gpus: spec.GetGpus(), Restart: &pb.RestartDecision{}}
	c, ok := a.containers[spec.GetId()]
	if !ok {
		p.Error = fmt.Sprintf("container %s does not exist on %s", spec.GetId(), a.Name)
		return p
	}
	p.ConfigPath = "/etc/pve/lxc/" + c.ID + ".conf"
	p.RunState = c.RunState
	p.Digest = fmt.Sprintf("%040x", len(c.GPUs)*7919+len(c.ID))
	want, err := a.resolve(spec.GetGpus())
	if err != nil {
		p.Error = err.Error()
		return p
	}
	have, _ := a.resolve(c.GPUs)
	oldLines, newLines := a.lines(c.ID, c.Style, have), a.lines(c.ID, spec.GetStyle(), want)
	const base = 12 // managed lines follow the unmanaged ones of the main section
	var diff strings.Builder
	fmt.Fprintf(&diff, "--- %s\n+++ %s\n", p.ConfigPath, p.ConfigPath)
	for i, l := range oldLines {
		if !slices.Contains(newLines, l) {
			p.Changes = append(p.Changes, &pb.ConfigChange{Op: pb.ConfigChange_OP_REMOVE, Line: l, LineNumber: uint32(base + i)})
			fmt.Fprintf(&diff, "-%s\n", l)
		}
	}
	for i, l := range newLines {
		if !slices.Contains(oldLines, l) {
			p.Changes = append(p.Changes, &pb.ConfigChange{Op: pb.ConfigChange_OP_ADD, Line: l, LineNumber: uint32(base + i)})
			fmt.Fprintf(&diff, "+%s\n", l)
		}
	}
	if len(p.Changes) > 0 {
		p.Diff = diff.String()
	}
	if c.RunState == "running" {
		p.Restart.Reasons = restartReasons(c.Running, minors(want))
		p.Restart.Required = len(p.Restart.Reasons) > 0
	}
	p.Start = c.RunState != "running" && spec.GetWantState() == "running"
	return p
}

func restartReasons(running, want []uint32) []string {
	var r []string
	for _, m := range want {
		if !slices.Contains(running, m) {
			r = append(r, fmt.Sprintf("the running container lacks /dev/nvidia%d", m))
		}
	}
	for _, m := range running {
		if !slices.Contains(want, m) {
			r = append(r, fmt.Sprintf("the running container still has /dev/nvidia%d, which is no longer assigned", m))
		}
	}
	return r
}

func (a *Agent) status(id string, spec *pb.ContainerSpec) *pb.ContainerStatus {
	c, ok := a.containers[id]
	if !ok {
		return &pb.ContainerStatus{Id: id, State: "error", Reasons: []string{"container " + id + " does not exist on " + a.Name}}
	}
	st := &pb.ContainerStatus{Id: id, Gpus: c.GPUs, RunState: c.RunState, GuestConnected: c.Guest && c.RunState == "running",
		NetworkOk: c.Network, Driver: &pb.DriverVersions{Kernel: a.Driver.GetKernelVersion()}}
	want, err := a.resolve(c.GPUs)
	if err != nil {
		st.State, st.Reasons = "error", []string{err.Error()}
		return st
	}
	wantMinors := minors(want)
	if c.RunState != "running" {
		st.State = "stopped"
		return st
	}
	st.RestartRequired = len(restartReasons(c.Running, wantMinors)) > 0
	if len(wantMinors) == 0 {
		st.State = "ready"
		return st
	}
	if !st.GuestConnected {
		st.State = "not-ready"
		st.Reasons = []string{"no report from the guest agent: it is not installed in the container or not running"}
		return st
	}
	st.ReportAgeMs = 1200
	st.Driver.Userspace = c.Lib
	if c.Lib != "" {
		st.Driver.UserspacePath = "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so." + c.Lib
	}
	type node struct {
		path         string
		major, minor uint32
		present      bool
	}
	var nodes []node
	anyRunning := len(c.Running) > 0
	for _, m := range wantMinors {
		nodes = append(nodes, node{fmt.Sprintf("/dev/nvidia%d", m), a.major("nvidia-frontend"), m, slices.Contains(c.Running, m)})
	}
	nodes = append(nodes,
		node{"/dev/nvidiactl", a.major("nvidia-frontend"), 255, anyRunning},
		node{"/dev/nvidia-uvm", a.major("nvidia-uvm"), 0, anyRunning},
		node{"/dev/nvidia-uvm-tools", a.major("nvidia-uvm"), 1, anyRunning})
	for _, n := range nodes {
		d := &pb.DeviceCheck{Path: n.path}
		switch {
		case !n.present:
			d.Status = pb.DeviceStatus_DEVICE_STATUS_MISSING
			d.Detail = "no such file"
			st.Reasons = append(st.Reasons, n.path+": missing")
		case !a.Driver.GetLoaded():
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, n.major, n.minor
			d.Detail = "open: no such device or address (ENXIO)"
			st.Reasons = append(st.Reasons, n.path+": no-driver")
		case c.Denied:
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_DENIED, n.major, n.minor
			d.Detail = "open: operation not permitted (EPERM)"
			st.Reasons = append(st.Reasons, fmt.Sprintf("%s: denied (the device cgroup does not allow %d:%d)", n.path, n.major, n.minor))
		default:
			d.Status, d.Major, d.Minor = pb.DeviceStatus_DEVICE_STATUS_OK, n.major, n.minor
		}
		st.Devices = append(st.Devices, d)
	}
	switch {
	case c.Lib == "":
		// The guest agent's words (internal/guest/report.go).
		st.Warnings = append(st.Warnings, "userspace driver not installed: no libnvidia-ml.so.1 in ld.so.cache or the standard library directories (passthrough works; CUDA programs need the driver libraries of version "+a.Driver.GetKernelVersion()+")")
	case c.Lib != a.Driver.GetKernelVersion():
		st.Reasons = append(st.Reasons, fmt.Sprintf("userspace driver %s does not match the kernel module %s (NVML: Driver/library version mismatch)", c.Lib, a.Driver.GetKernelVersion()))
	}
	if spec.GetRequireNetwork() && !c.Network {
		st.Reasons = append(st.Reasons, "no network: no up link with an address and a default route")
	}
	st.State = "ready"
	if len(st.Reasons) > 0 {
		st.State = "not-ready"
	}
	return st
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
