package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gpupass/internal/fleet"
	pb "gpupass/proto/gpupass/v1"
)

// ErrUnknownHost is returned by Doctor for a host the fleet does not name.
var ErrUnknownHost = errors.New("unknown host")

// Diagnosis is everything doctor learned about one container.
type Diagnosis struct {
	FleetFile string
	Host      Host
	Entry     fleet.Container // the fleet entry (InFleet) or a bare one
	InFleet   bool
	Inventory *pb.HostInventory
	Status    *pb.ContainerStatus
	Plan      *pb.ContainerPlan
	Container Container // the report form: state and reasons as plan would show them
	Findings  []Finding
}

// Finding is one problem, its likely cause and the command that fixes it.
type Finding struct {
	Problem string `json:"problem"`
	Cause   string `json:"cause"`
	Fix     string `json:"fix"`
	// Warning: worth knowing, but the container counts as fine (as status counts it): a
	// missing userspace driver, a stopped container the fleet does not ask to run.
	Warning bool `json:"warning,omitempty"`
	// explains are the host's reason kinds this finding explains, devices the paths whose
	// device checks it does (so the reasons are not repeated as findings of their own).
	explains []pb.ReasonKind
	devices  []string
}

// ExitCode is 1 when the host could not be asked, 0 when the container counts as fine for
// status (ready, or stopped while the fleet does not ask for it to run) with nothing to
// change and no finding but warnings, 2 otherwise (docs/controller.md, "Exit codes").
func (d *Diagnosis) ExitCode() int {
	switch {
	case !d.Host.Reachable || d.Host.Error != "" || d.Container.State == StateError:
		return ExitError
	case d.Container.Ready() && len(d.Problems()) == 0:
		return ExitOK
	}
	return ExitPending
}

// Problems are the findings that are not warnings.
func (d *Diagnosis) Problems() []Finding {
	var out []Finding
	for _, f := range d.Findings {
		if !f.Warning {
			out = append(out, f)
		}
	}
	return out
}

// Doctor asks the container's host for its inventory, the container's status and what
// apply would change, and explains what it finds.
func (c *Controller) Doctor(ctx context.Context, hostName, id string) (*Diagnosis, error) {
	f := c.opts.Fleet
	h, ok := f.Host(hostName)
	if !ok {
		names := []string{}
		for _, h := range f.Hosts {
			names = append(names, h.Name)
		}
		return nil, fmt.Errorf("doctor: %w %q: %s names %s", ErrUnknownHost, hostName, f.File, strings.Join(names, ", "))
	}
	entry, inFleet := f.Container(hostName, id)
	if !inFleet {
		entry = fleet.Container{Host: hostName, ID: id, GPUs: []string{}, Style: fleet.StyleRaw}
	}
	d := &Diagnosis{FleetFile: f.File, Entry: entry, InFleet: inFleet, Host: newHost(h), Container: newContainer(entry)}
	w := &hostWork{host: h, entries: []fleet.Container{entry}, report: &d.Host, out: []*Container{&d.Container}}
	start := time.Now()
	hctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	s, err := c.connect(hctx, h)
	if err != nil {
		w.fail(err, c.opts.Timeout)
		d.Findings = explain(d)
		return d, nil
	}
	defer s.close()
	d.Host.Reachable = true
	if err := c.doctorCalls(hctx, s, d); err != nil {
		if hctx.Err() != nil && !errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
		}
		w.fail(&stageError{"waiting for the answer of", h.Address, err}, c.opts.Timeout)
	}
	d.Host.ElapsedMS = time.Since(start).Milliseconds()
	d.Findings = explain(d)
	return d, nil
}

func (c *Controller) doctorCalls(ctx context.Context, s *conn, d *Diagnosis) error {
	var inv pb.HostInventory
	if err := s.Call(ctx, MethodInventory, &pb.InventoryRequest{}, &inv); err != nil {
		return err
	}
	d.Inventory = &inv
	fillHost(&d.Host, &inv)
	d.Container.Simulated = inv.GetSimulated()
	var req pb.StatusRequest
	if d.InFleet {
		req.Containers = []*pb.ContainerSpec{d.Entry.Spec()}
	}
	var st pb.StatusResponse
	if err := s.Call(ctx, MethodStatus, &req, &st); err != nil {
		return err
	}
	for _, cs := range st.GetContainers() {
		if cs.GetId() == d.Entry.ID {
			d.Status = cs
		}
	}
	if d.Status != nil {
		applyStatus(&d.Container, d.Status)
		markGPUsDiffer(&d.Container, false)
	} else {
		d.Container.State = StateError
		d.Container.Reasons = append(d.Container.Reasons, d.Container.note(ReasonDetail{Kind: KindUnknownContainer, Text: fmt.Sprintf("%s does not know container %s", d.Host.Name, d.Entry.ID)}))
	}
	if !d.InFleet {
		return nil
	}
	var plan pb.PlanResponse
	if err := s.Call(ctx, MethodPlan, &pb.PlanRequest{Containers: []*pb.ContainerSpec{d.Entry.Spec()}}, &plan); err != nil {
		return err
	}
	for _, p := range plan.GetContainers() {
		if p.GetId() == d.Entry.ID {
			d.Plan = p
			applyPlan(&d.Container, p)
		}
	}
	return nil
}

// explain turns what the host, the config and the guest say into findings, most
// fundamental first, then what is worth knowing about the host's GPUs.
func explain(d *Diagnosis) []Finding {
	out := explainContainer(d)
	if off := persistenceOff(d.Inventory); len(off) > 0 {
		out = append(out, Finding{
			Problem: "persistence mode is off on " + strings.Join(off, ", "),
			Cause:   "without it the driver tears a GPU down when its last user closes it, and the next open (an app starting, nvidia-smi, the guest agent's check) initialises it again: NVIDIA documents 1-3 s per GPU",
			Fix:     fmt.Sprintf("on %s: systemctl enable --now nvidia-persistenced (it ships with the driver), or nvidia-smi -pm 1 until the next boot", d.Host.Name),
			Warning: true,
		})
	}
	return out
}

func explainContainer(d *Diagnosis) []Finding {
	var out []Finding
	file := d.FleetFile
	if file == "" {
		file = "fleet.yaml"
	}
	apply := "gpupass apply -f " + file
	key := d.Entry.Host + "/" + d.Entry.ID
	if !d.Host.Reachable || d.Host.Error != "" && d.Inventory == nil {
		return append(out, Finding{
			Problem: fmt.Sprintf("host %s could not be asked: %s", d.Host.Name, d.Host.Error),
			Cause:   "the host agent is down, the address is wrong, a firewall drops port " + port(d.Host.Address) + ", or the certificates do not chain to the fleet CA",
			Fix:     fmt.Sprintf("on %s: systemctl status gpupass-host-agent; from here: check that %s is reachable", d.Host.Name, d.Host.Address),
		})
	}
	if d.Host.Error != "" {
		out = append(out, Finding{Problem: "the host agent answered with an error: " + d.Host.Error,
			Cause: "see the host agent's log", Fix: fmt.Sprintf("on %s: journalctl -u gpupass-host-agent", d.Host.Name)})
	}
	if !d.InFleet {
		out = append(out, Finding{
			Problem: fmt.Sprintf("%s is not in %s", key, file),
			Cause:   "gpupass manages only the containers the fleet file lists",
			Fix:     fmt.Sprintf("add {host: %s, id: %q, gpus: [\"0\"]} under containers in %s, then %s", d.Entry.Host, d.Entry.ID, file, apply),
		})
	}
	kernel := d.Host.Driver.Kernel
	if d.Inventory != nil && !d.Host.Driver.Loaded {
		why := d.Host.Driver.Error
		if why == "" {
			why = "no /proc/driver/nvidia/version"
		}
		out = append(out, Finding{
			Problem:  "the NVIDIA kernel driver is not loaded on " + d.Host.Name + ": " + why,
			Cause:    "the module failed to load (kernel update without a rebuilt module, Secure Boot) or was never installed",
			Fix:      fmt.Sprintf("on %s: load the driver until nvidia-smi lists the GPUs, then systemctl restart gpupass-host-agent and %s", d.Host.Name, apply),
			explains: []pb.ReasonKind{pb.ReasonKind_REASON_KIND_HOST_DRIVER_NOT_LOADED, pb.ReasonKind_REASON_KIND_HOST_NOT_PREPARED},
		})
	}
	if p := d.Plan; p != nil && p.GetError() != "" {
		out = append(out, Finding{
			Problem: "the host cannot make a plan: " + p.GetError(),
			Cause:   "the fleet entry names something this host does not have",
			Fix:     fmt.Sprintf("fix the entry for %s in %s (%s has GPUs %s)", key, file, d.Host.Name, gpuList(d.Host.GPUs)),
		})
	}
	st := d.Status
	if p := d.Plan; p != nil && p.GetError() == "" {
		if n := len(p.GetChanges()); n > 0 {
			f := Finding{
				Problem: fmt.Sprintf("the container config %s differs from %s (%d managed line(s))", p.GetConfigPath(), file, n),
				Cause:   "the fleet changed, or another tool edited or left GPU entries",
				Fix:     apply,
			}
			if p.GetRestart().GetRequired() {
				f.Fix += " (it restarts the container: " + strings.Join(p.GetRestart().GetReasons(), "; ") + ")"
			}
			out = append(out, f)
		} else if p.GetRestart().GetRequired() {
			f := Finding{
				Problem: "the running container does not have what its config now says: " + strings.Join(p.GetRestart().GetReasons(), "; "),
				Cause:   "the config was edited after the container started; mount entries and cgroup rules only take effect at start",
				Fix:     apply + " (it restarts the container)",
			}
			for _, r := range p.GetRestart().GetDetails() {
				f.explains = append(f.explains, r.GetKind())
			}
			out = append(out, f)
		}
		if p.GetStart() {
			out = append(out, Finding{Problem: "the container is stopped and " + file + " asks for it to run",
				Cause: "it was stopped, or failed to start", Fix: apply,
				explains: []pb.ReasonKind{pb.ReasonKind_REASON_KIND_CONTAINER_STOPPED}})
		}
		out = append(out, pveFindings(d, p, apply)...)
	}
	if st == nil {
		return out
	}
	out = append(out, evidenceFindings(d, st, apply)...)
	if st.GetRunState() != "running" && st.GetState() == StateStopped && d.Entry.State != fleet.StateRunning {
		out = append(out, Finding{Problem: "the container is stopped",
			Cause:   "nothing in " + file + " asks for it to run",
			Fix:     fmt.Sprintf("%s on %s, or set state: running for it in %s and run %s", d.runtimeCmd("start"), d.Host.Name, file, apply),
			Warning: true})
		return out
	}
	if st.GetRunState() == "running" && !st.GetGuestConnected() && st.GetGuestRefused() != "" {
		out = append(out, Finding{
			Problem:  "guest agent connected but was refused: " + st.GetGuestRefused(),
			Cause:    "the host agent takes a guest's container id from the kernel (its cgroup) and the socket directory; this peer did not match the container whose socket it used, or spoke the wrong role",
			Fix:      fmt.Sprintf("on %s: journalctl -u gpupass-host-agent shows the peer's pid and cgroup; run gpupass-guest-agent inside container %s itself, on the socket the host agent mounts there", d.Host.Name, d.Entry.ID),
			explains: guestAgentKinds,
		})
	} else if hidden := reasonOf(st, pb.ReasonKind_REASON_KIND_GUEST_SOCKET_HIDDEN); st.GetRunState() == "running" && !st.GetGuestConnected() && hidden != nil {
		out = append(out, Finding{
			Problem:  "the guest agent cannot reach its socket: " + pb.ReasonText(hidden),
			Cause:    "the container's init (systemd, OpenRC) mounts a tmpfs on /run at boot, over the /run/gpupass socket mount of earlier gpupass versions; gpupass now mounts it at /dev/gpupass, which no init mounts over",
			Fix:      apply + " (it moves the mount entry to dev/gpupass and restarts the container)",
			explains: append([]pb.ReasonKind{pb.ReasonKind_REASON_KIND_GUEST_SOCKET_HIDDEN}, guestAgentKinds...),
		})
	} else if st.GetRunState() == "running" && !st.GetGuestConnected() && len(d.Container.GPUs) > 0 {
		out = append(out, Finding{
			Problem:  "no report from the guest agent",
			Cause:    "gpupass-guest-agent is not installed in the container's template or not running, or the /dev/gpupass socket mount is missing or hidden",
			Fix:      "install gpupass-guest-agent in the template and enable it; " + apply + " renders the socket mount",
			explains: guestAgentKinds,
		})
	}
	out = append(out, deviceFindings(d, st.GetDevices(), apply)...)
	user := st.GetDriver().GetUserspace()
	if kernel == "" {
		kernel = st.GetDriver().GetKernel()
	}
	switch {
	case st.GetGuestConnected() && user != "" && kernel != "" && user != kernel && st.GetDriver().GetUserspaceSource() == "host":
		out = append(out, Finding{
			Problem:  fmt.Sprintf("the container runs the host's userspace driver %s (driver: host) but the host's kernel module is now %s", user, kernel),
			Cause:    fmt.Sprintf("the host driver changed %s -> %s after the container started; the driver hook provides the loaded module's userspace at every start", user, kernel),
			Fix:      apply + " restarts it with the " + kernel + " userspace (docs/driver.md)",
			explains: []pb.ReasonKind{pb.ReasonKind_REASON_KIND_DRIVER_MISMATCH, pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER, pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED},
		})
	case st.GetGuestConnected() && user != "" && kernel != "" && user != kernel:
		out = append(out, Finding{
			Problem:  fmt.Sprintf("the container's userspace driver (libnvidia-ml %s) does not match the host's kernel module %s", user, kernel),
			Cause:    "the template's NVIDIA libraries come from another driver release; NVML refuses with \"Driver/library version mismatch\" (even a patch level differs)",
			Fix:      fmt.Sprintf("install libnvidia-ml %s in the template (NVIDIA-Linux-x86_64-%s.run --no-kernel-module, or the distribution's packages pinned to %s), then restart the container; or set driver: host for it in fleet.yaml and %s: the host's userspace of the loaded module at every start (docs/driver.md)", kernel, kernel, kernel, apply),
			explains: []pb.ReasonKind{pb.ReasonKind_REASON_KIND_DRIVER_MISMATCH, pb.ReasonKind_REASON_KIND_OWN_USERSPACE_MISMATCH},
		})
	case st.GetGuestConnected() && user == "" && len(st.GetDevices()) > 0:
		out = append(out, Finding{
			Problem: "the container has no userspace driver (libnvidia-ml); passthrough works but CUDA and nvidia-smi will not",
			Cause:   "the template lacks the NVIDIA userspace libraries",
			Fix:     fmt.Sprintf("install libnvidia-ml %s in the template (NVIDIA-Linux-x86_64-%s.run --no-kernel-module), or set driver: host for it in fleet.yaml and %s (docs/driver.md)", kernel, kernel, apply),
			Warning: true,
		})
	}
	if d.Entry.RequireNetwork && st.GetGuestConnected() && !st.GetNetworkOk() {
		out = append(out, Finding{
			Problem:  "the container has no working network (an up link with an address and a default route)",
			Cause:    "its net0 bridge, address or gateway is wrong, or DHCP did not answer",
			Fix:      fmt.Sprintf("%s on %s; check the network entries and the bridge", d.runtimeCmd("config"), d.Host.Name),
			explains: []pb.ReasonKind{pb.ReasonKind_REASON_KIND_NETWORK},
		})
	}
	// Whatever the host says that no finding above explains.
	for _, r := range statusReasons(st) {
		if !explained(r, out) && !evidenceExplained(r) {
			out = append(out, Finding{Problem: pb.ReasonText(r), Cause: "reported by the host agent", Fix: "gpupass status -f " + file + " -o json shows the details"})
		}
	}
	return out
}

// pveFindings are what Proxmox's own state stops apply from doing: a lock, pending changes a
// restart would apply, HA.
func pveFindings(d *Diagnosis, p *pb.ContainerPlan, apply string) []Finding {
	id := d.Entry.ID
	acts := len(p.GetChanges()) > 0 || p.GetRestart().GetRequired() || p.GetStart()
	restarts := p.GetRestart().GetRequired() || p.GetStart()
	var out []Finding
	if l := p.GetLocked(); l != "" && acts {
		out = append(out, Finding{Problem: "locked: " + l + ": the container's config has `lock: " + l + "`",
			Cause: "a " + l + " is running on it (or one failed and left the lock); gpupass neither writes nor restarts a locked container",
			Fix:   fmt.Sprintf("wait for the %s to end and run %s; if none runs on %s, pct unlock %s there first", l, apply, d.Host.Name, id)})
	}
	if n := len(p.GetPending()); n > 0 && restarts {
		f := Finding{Problem: fmt.Sprintf("the restart would also apply %d pending change(s): %s", n, strings.Join(p.GetPending(), "; ")),
			Cause: "Proxmox applies every [pve:pending] change when the container starts",
			Fix:   fmt.Sprintf("review them (pct pending %s on %s), then %s --apply-pending", id, d.Host.Name, apply)}
		if p.GetPendingReplacesLxc() {
			f.Cause += "; a pending lxc.* line replaces all raw lxc.* lines, the GPU lines included"
			f.Fix = fmt.Sprintf("remove the lxc.* lines from [pve:pending] in %s on %s, then %s", p.GetConfigPath(), d.Host.Name, apply)
		}
		out = append(out, f)
	}
	if sid := p.GetHa(); sid != "" && restarts {
		out = append(out, Finding{Problem: "the container is managed by Proxmox HA (" + sid + ") and needs a restart",
			Cause: "gpupass does not restart HA-managed containers behind HA's back",
			Fix:   apply + ", then on " + d.Host.Name + ": " + p.GetHaCommand()})
	}
	return out
}

// persistenceOff names the host's GPUs whose persistence mode is known to be off.
func persistenceOff(inv *pb.HostInventory) []string {
	var off []string
	for _, g := range inv.GetGpus() {
		if g.GetPersistenceMode() == "disabled" {
			off = append(off, fmt.Sprintf("GPU %d (%s)", g.GetIndex(), g.GetBusId()))
		}
	}
	return off
}

// runtimeCmd is the host's own command for verb ("start", "config") on the container: pct
// only on a pct host, the lxc-* tools on a plain LXC host.
func (d *Diagnosis) runtimeCmd(verb string) string {
	id := d.Entry.ID
	if d.Host.Runtime == "pct" {
		return fmt.Sprintf("pct %s %s", verb, id)
	}
	switch verb {
	case "start":
		return "lxc-start -n " + id
	default:
		return "cat /var/lib/lxc/" + id + "/config"
	}
}

// deviceFindings groups the failing devices by status: one finding per kind of failure.
func deviceFindings(d *Diagnosis, devs []*pb.DeviceCheck, apply string) []Finding {
	groups, devPaths := map[pb.DeviceStatus][]string{}, map[pb.DeviceStatus][]string{}
	var order []pb.DeviceStatus
	for _, dev := range devs {
		st := dev.GetStatus()
		if st == pb.DeviceStatus_DEVICE_STATUS_OK {
			continue
		}
		label := dev.GetPath()
		if st != pb.DeviceStatus_DEVICE_STATUS_MISSING && (dev.GetMajor() != 0 || dev.GetMinor() != 0) {
			label += fmt.Sprintf(" (%d:%d)", dev.GetMajor(), dev.GetMinor())
		}
		if _, ok := groups[st]; !ok {
			order = append(order, st)
		}
		groups[st] = append(groups[st], label)
		devPaths[st] = append(devPaths[st], dev.GetPath())
	}
	var out []Finding
	for _, st := range order {
		paths := groups[st]
		subject, be := strings.Join(paths, ", "), "is"
		if len(paths) > 1 {
			be = "are"
		}
		var f Finding
		switch st {
		case pb.DeviceStatus_DEVICE_STATUS_MISSING:
			f = Finding{Problem: fmt.Sprintf("%s %s missing in the container", subject, be),
				Cause: "the config lacks the mount entries, or they were added after the container started",
				Fix:   apply + " (renders the entries and restarts the container if needed)"}
		case pb.DeviceStatus_DEVICE_STATUS_DENIED:
			f = Finding{Problem: fmt.Sprintf("%s %s denied by the container's device cgroup", subject, be),
				Cause: "the allow rules are missing or name stale majors (NVIDIA majors change with driver updates; this host has " + majors(d.Host.Driver.Majors) + ")",
				Fix:   apply + " (renders the rules from the majors read now and restarts)"}
		case pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER:
			f = Finding{Problem: fmt.Sprintf("%s %s present but no driver answers (ENXIO)", subject, be),
				Cause: "the NVIDIA kernel module is not loaded on " + d.Host.Name + ", or the nodes' majors belong to no loaded driver",
				Fix:   "on " + d.Host.Name + ": load the NVIDIA driver (nvidia-smi must work there), then " + apply}
		case pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE:
			f = Finding{Problem: fmt.Sprintf("%s %s not a character device (an empty file stands in its place)", subject, be),
				Cause: "a bind,optional,create=file mount whose source was missing when the container started (e.g. /dev/nvidia-uvm appears only once the driver is initialised)",
				Fix:   apply + " (the host agent creates the nodes first and mounts them without optional), restarting the container"}
		case pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE:
			f = Finding{Problem: fmt.Sprintf("%s %s the wrong device", subject, be),
				Cause: "the GPU index was taken for the device minor, or the node was made for a stale major",
				Fix:   apply}
		default:
			f = Finding{Problem: fmt.Sprintf("%s: the guest reported an unknown device status", subject),
				Cause: "a newer guest agent than this controller", Fix: "upgrade gpupass"}
		}
		f.devices = devPaths[st]
		out = append(out, f)
	}
	return out
}

// guestAgentKinds are the host's reasons about the guest agent's connection.
var guestAgentKinds = []pb.ReasonKind{
	pb.ReasonKind_REASON_KIND_GUEST_REFUSED,
	pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED,
	pb.ReasonKind_REASON_KIND_GUEST_NOT_REPORTED,
	pb.ReasonKind_REASON_KIND_GUEST_SILENT,
}

// explained reports whether a host reason is covered by a finding: by its kind (a finding
// that explains it) or, for a device check, by a finding about the same device; never by
// matching its text.
func explained(reason *pb.Reason, fs []Finding) bool {
	for _, f := range fs {
		if slices.Contains(f.explains, reason.GetKind()) {
			return true
		}
		if reason.GetKind() == pb.ReasonKind_REASON_KIND_DEVICE_CHECK && slices.Contains(f.devices, reason.GetDevice()) {
			return true
		}
	}
	return false
}

func gpuList(gs []GPU) string {
	if len(gs) == 0 {
		return "none"
	}
	var s []string
	for _, g := range gs {
		s = append(s, fmt.Sprintf("%d (%s, %s)", g.Index, g.Bus, g.UUID))
	}
	return strings.Join(s, ", ")
}

func majors(m map[string]uint32) string {
	if len(m) == 0 {
		return "no NVIDIA majors in /proc/devices"
	}
	var s []string
	for _, k := range sortedKeys(m) {
		s = append(s, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(s, ", ")
}

func port(addr string) string {
	if i := strings.LastIndex(addr, ":"); i >= 0 {
		return addr[i+1:]
	}
	return fleet.DefaultPort
}

// reasonOf is the status's first reason of kind k, or nil.
func reasonOf(st *pb.ContainerStatus, k pb.ReasonKind) *pb.Reason {
	for _, r := range statusReasons(st) {
		if r.GetKind() == k {
			return r
		}
	}
	return nil
}
