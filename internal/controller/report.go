// Package controller is the fleet side of gpupass: it talks to every host agent of a
// fleet at once (one mTLS + yamux session per host, bounded concurrency, per-host
// deadlines) for plan, apply, status, watch and doctor, and turns the answers into a
// Report whose JSON form is the contract in DESIGN.md ("Formats"). It takes the GPUs as
// the hosts resolved them and the reasons as data (reasons.go), and never re-judges
// either.
package controller

import (
	"fmt"
	"slices"
	"strings"

	"gpupass/internal/fleet"
	"gpupass/internal/readiness"
	pb "gpupass/proto/gpupass/v1"
)

// Container states (DESIGN.md).
const (
	StateReady       = pb.StateReady
	StatePending     = pb.StatePending
	StateNotReady    = pb.StateNotReady
	StateStopped     = pb.StateStopped
	StateUnreachable = pb.StateUnreachable
	StateError       = pb.StateError
)

// Kinds of report.
const (
	KindPlan   = "plan"
	KindApply  = "apply"
	KindStatus = "status"
)

// Exit codes (DESIGN.md): 0 ok / nothing to change, 2 changes pending or not ready, 1 error.
const (
	ExitOK      = 0
	ExitError   = 1
	ExitPending = 2
)

// Report is the answer of plan, apply or status. Its JSON encoding is the contract;
// fields may be added, never renamed or removed.
type Report struct {
	Kind       string      `json:"kind"`
	Hosts      []Host      `json:"hosts"`
	Containers []Container `json:"containers"`
}

// Host is one host agent as the controller saw it.
type Host struct {
	Name       string     `json:"name"`
	Reachable  bool       `json:"reachable"`
	GPUs       []GPU      `json:"gpus"`
	Address    string     `json:"address"`
	Simulated  bool       `json:"simulated"`
	Runtime    string     `json:"runtime,omitempty"`
	AgentBuild string     `json:"agent_build,omitempty"`
	Driver     HostDriver `json:"driver"`
	Error      string     `json:"error,omitempty"` // why it is unreachable or failed
	ElapsedMS  int64      `json:"elapsed_ms"`      // time to its answer (or failure)
}

// GPU is one GPU of a host.
type GPU struct {
	Index uint32 `json:"index"`
	UUID  string `json:"uuid"`
	Minor uint32 `json:"minor"`
	Bus   string `json:"bus"`
	Model string `json:"model"`
}

// HostDriver is the host's NVIDIA kernel driver.
type HostDriver struct {
	Loaded bool              `json:"loaded"`
	Kernel string            `json:"kernel"`
	Error  string            `json:"error,omitempty"`
	Majors map[string]uint32 `json:"majors,omitempty"`
	// Change is the host driver change the agent noticed since it started ("host driver
	// changed A -> B ..."; docs/driver.md).
	Change string `json:"change,omitempty"`
}

// Container is one fleet container entry with what its host said about it.
type Container struct {
	Host            string   `json:"host"`
	ID              string   `json:"id"`
	GPUs            []string `json:"gpus"`
	State           string   `json:"state"`
	RestartRequired bool     `json:"restart_required"`
	Restarted       bool     `json:"restarted"` // apply stopped a running container and started it again
	Started         bool     `json:"started"`   // apply started a stopped container (not a restart)
	Reasons         []string `json:"reasons"`
	Devices         []Device `json:"devices"`
	Driver          Driver   `json:"driver"`
	Warnings        []string `json:"warnings"`
	Error           string   `json:"error,omitempty"`
	RunState        string   `json:"run_state,omitempty"`
	GuestConnected  bool     `json:"guest_connected"`
	NetworkOK       bool     `json:"network_ok"`
	RequireNetwork  bool     `json:"require_network"`
	WantState       string   `json:"want_state,omitempty"`
	ReportAgeMS     int64    `json:"report_age_ms,omitempty"`
	Simulated       bool     `json:"simulated"` // on a simulated GPU host
	// ConfiguredGPUs are the GPUs the container's config passes now (GPUs is the fleet's
	// assignment); nil when the host was not asked.
	ConfiguredGPUs []string `json:"configured_gpus,omitempty"`
	// GPUsDiffer: the configured GPUs are not the fleet's (as the host resolved both, so an
	// index and a UUID of the same GPU are equal).
	GPUsDiffer bool `json:"-"`
	// ResolvedGPUs are the fleet's selectors as the host resolved them; nil when the host
	// did not say (an agent older than this field) or could not resolve them.
	ResolvedGPUs []GPU `json:"resolved_gpus,omitempty"`
	// resolved and configured are the host's GPU sets (the fleet's, the config's now).
	resolved, configured *pb.GPUSet

	// plan and apply
	Changes        []Change `json:"changes,omitempty"`
	Diff           string   `json:"diff,omitempty"`
	ConfigPath     string   `json:"config_path,omitempty"`
	Digest         string   `json:"digest,omitempty"` // SHA-1 of the config the plan was made from
	RestartReasons []string `json:"restart_reasons,omitempty"`
	Start          bool     `json:"start,omitempty"`       // stopped and the fleet wants it running
	Written        bool     `json:"written,omitempty"`     // apply wrote the config
	RolledBack     bool     `json:"rolled_back,omitempty"` // apply failed and restored the config
	// Proxmox (additive): the config's `lock:` (never written or restarted while set), the
	// [pve:pending] changes a restart would apply (apply needs --apply-pending), whether a
	// pending lxc.* line would replace all raw lxc.* lines, and the HA resource with the
	// command that restarts it through HA.
	Locked             string   `json:"locked,omitempty"`
	Pending            []string `json:"pending,omitempty"`
	PendingReplacesLXC bool     `json:"pending_replaces_lxc,omitempty"`
	HA                 string   `json:"ha,omitempty"`
	HACommand          string   `json:"ha_command,omitempty"`
	// DriverUpgrade is plan --driver-version's answer for this container.
	DriverUpgrade *DriverUpgrade `json:"driver_upgrade,omitempty"`

	// details are the reasons as data, by text (see ReasonsDetail).
	details map[string]ReasonDetail
}

// DriverUpgrade is what a host driver change to To would do to a container: a driver:
// host container realigns by itself (restarted by apply), an own one keeps matching only
// when its userspace is To.
type DriverUpgrade struct {
	To       string `json:"to"`
	Mode     string `json:"mode"` // own | host (fleet.yaml driver)
	Realigns bool   `json:"realigns"`
	Breaks   bool   `json:"breaks"`
	Message  string `json:"message"`
}

// Key is "host/id".
func (c Container) Key() string { return c.Host + "/" + c.ID }

// Device is one expected device node as the guest found it.
type Device struct {
	Path   string `json:"path"`
	Status string `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// Driver holds the versions seen for a container.
type Driver struct {
	Kernel    string `json:"kernel"`
	Userspace string `json:"userspace"`
	// Source is where the userspace the guest sees came from: "host" (driver: host, bound
	// in at start) or "own" (the template's); "" when the guest saw none.
	Source string `json:"source,omitempty"`
}

// Change is one managed config line added or removed.
type Change struct {
	Op         string `json:"op"` // add | remove
	Line       string `json:"line"`
	LineNumber uint32 `json:"line_number"`
}

// DeviceStatusString maps a device status to its contract name.
func DeviceStatusString(s pb.DeviceStatus) string { return pb.DeviceStatusName(s) }

func validState(s string) bool {
	switch s {
	case StateReady, StatePending, StateNotReady, StateStopped, StateUnreachable, StateError:
		return true
	}
	return false
}

// newContainer starts a report entry from the fleet entry; every list is non-nil so that
// JSON shows [] rather than null.
func newContainer(c fleet.Container) Container {
	gpus := append([]string{}, c.GPUs...)
	return Container{
		Host: c.Host, ID: c.ID, GPUs: gpus, State: StateError,
		Reasons: []string{}, Devices: []Device{}, Warnings: []string{},
		RequireNetwork: c.RequireNetwork, WantState: c.State,
	}
}

func newHost(h fleet.Host) Host {
	return Host{Name: h.Name, Address: h.Address, GPUs: []GPU{}}
}

// fillHost copies a host's inventory into h.
func fillHost(h *Host, inv *pb.HostInventory) {
	if inv == nil {
		return
	}
	h.Simulated = inv.GetSimulated()
	h.Runtime = inv.GetRuntime()
	h.AgentBuild = inv.GetAgentBuild()
	d := inv.GetDriver()
	h.Driver = HostDriver{Loaded: d.GetLoaded(), Kernel: d.GetKernelVersion(), Error: d.GetError(), Change: d.GetChange()}
	if len(d.GetMajors()) > 0 {
		h.Driver.Majors = map[string]uint32{}
		for k, v := range d.GetMajors() {
			h.Driver.Majors[k] = v
		}
	}
	h.GPUs = []GPU{}
	for _, g := range inv.GetGpus() {
		h.GPUs = append(h.GPUs, GPU{Index: g.GetIndex(), UUID: g.GetUuid(), Minor: g.GetMinor(), Bus: g.GetBusId(), Model: g.GetModel()})
	}
}

// applyStatus copies a host's status of the container into c.
func applyStatus(c *Container, st *pb.ContainerStatus) {
	c.State = st.GetState()
	if !validState(c.State) {
		c.Reasons = append(c.Reasons, c.note(ReasonDetail{Kind: KindUnknownState, Got: st.GetState(), Text: fmt.Sprintf("the host agent reported an unknown state %q", st.GetState())}))
		c.State = StateError
	}
	c.ConfiguredGPUs = append([]string{}, st.GetGpus()...)
	hostGPUs(c, st.GetResolved(), st.GetConfigured())
	for _, r := range pb.DetailsOf(st.GetReasons(), st.GetDetails()) {
		c.Reasons = append(c.Reasons, c.note(detailOf(r)))
	}
	c.Warnings = append(c.Warnings, st.GetWarnings()...)
	c.Devices = c.Devices[:0]
	for _, d := range st.GetDevices() {
		c.Devices = append(c.Devices, Device{Path: d.GetPath(), Status: DeviceStatusString(d.GetStatus()), Detail: d.GetDetail()})
	}
	c.Driver = Driver{Kernel: st.GetDriver().GetKernel(), Userspace: st.GetDriver().GetUserspace(), Source: st.GetDriver().GetUserspaceSource()}
	c.RestartRequired = st.GetRestartRequired()
	c.RunState = st.GetRunState()
	c.GuestConnected = st.GetGuestConnected()
	c.NetworkOK = st.GetNetworkOk()
	c.ReportAgeMS = st.GetReportAgeMs()
}

// applyPlan copies a host's plan for the container into c. A plan with something to do
// makes the container pending; otherwise the state stays what status said.
func applyPlan(c *Container, p *pb.ContainerPlan) {
	c.ConfigPath = p.GetConfigPath()
	c.Digest = p.GetDigest()
	c.Diff = p.GetDiff()
	c.Changes = []Change{}
	for _, ch := range p.GetChanges() {
		op := "add"
		if ch.GetOp() == pb.ConfigChange_OP_REMOVE {
			op = "remove"
		}
		c.Changes = append(c.Changes, Change{Op: op, Line: ch.GetLine(), LineNumber: ch.GetLineNumber()})
	}
	hostGPUs(c, p.GetResolved(), p.GetConfigured())
	c.RestartRequired = p.GetRestart().GetRequired()
	c.RestartReasons = append([]string{}, p.GetRestart().GetReasons()...)
	c.Start = p.GetStart()
	c.Locked, c.Pending, c.PendingReplacesLXC = p.GetLocked(), p.GetPending(), p.GetPendingReplacesLxc()
	c.HA, c.HACommand = p.GetHa(), p.GetHaCommand()
	if p.GetRunState() != "" {
		c.RunState = p.GetRunState()
	}
	if p.GetError() != "" {
		c.State = StateError
		c.Error = p.GetError()
		c.Reasons = append(c.Reasons, c.note(ReasonDetail{Kind: KindPlanFailed, Detail: p.GetError(), Text: "plan failed: " + p.GetError()}))
		return
	}
	if len(c.Changes) > 0 || c.RestartRequired || c.Start {
		c.State = StatePending
		var why []string
		if n := len(c.Changes); n > 0 {
			why = append(why, c.note(ReasonDetail{Kind: KindConfigDiffers, Want: fmt.Sprint(n), Text: fmt.Sprintf("config differs from the fleet (%d managed line(s) to change)", n)}))
		}
		if c.RestartRequired {
			for _, r := range pb.DetailsOf(c.RestartReasons, p.GetRestart().GetDetails()) {
				d := detailOf(r)
				d.Text = "restart: " + d.Text
				why = append(why, c.note(d))
			}
			if len(c.RestartReasons) == 0 {
				why = append(why, c.note(ReasonDetail{Kind: KindRestartRequired, Text: "restart required"}))
			}
		}
		if c.Start {
			why = append(why, c.note(ReasonDetail{Kind: KindStartWanted, Text: "stopped; fleet.yaml asks for it to run"}))
		}
		why = append(why, pveNotes(c)...)
		c.Reasons = append(why, c.Reasons...)
	}
}

// applyResult copies an apply result into c.
func applyResult(c *Container, r *pb.ContainerResult) {
	if r.GetStatus() != nil {
		applyStatus(c, r.GetStatus())
	}
	if r.GetPlan() != nil {
		state, reasons := c.State, c.Reasons
		applyPlan(c, r.GetPlan())
		// After apply the state is the observed one, not "pending".
		if r.GetStatus() != nil && c.State == StatePending {
			c.State, c.Reasons = state, reasons
		}
		c.RestartRequired = r.GetPlan().GetRestart().GetRequired()
	}
	c.Written = r.GetWritten()
	c.Restarted, c.Started = r.GetRestarted(), r.GetStarted()
	if c.Restarted && !c.Started && r.GetPlan().GetStart() && !r.GetPlan().GetRestart().GetRequired() {
		// An agent older than the started field calls the start of a stopped container
		// a restart; its plan says it was a start.
		c.Restarted, c.Started = false, true
	}
	c.RolledBack = r.GetRolledBack()
	if r.GetError() != "" {
		c.State = StateError
		c.Error = r.GetError()
		msg := "apply failed: " + r.GetError()
		if c.RolledBack {
			msg += " (rolled back: the config and the container are as they were)"
		}
		c.Reasons = append([]string{c.note(ReasonDetail{Kind: KindApplyFailed, Detail: r.GetError(), Text: msg})}, c.Reasons...)
	}
	if r.GetStatus() == nil && r.GetError() == "" {
		c.State = StatePending
	}
}

// pveNotes are the plan's Proxmox facts, as reasons: what apply will refuse, and why.
func pveNotes(c *Container) []string {
	var out []string
	if c.Locked != "" {
		out = append(out, c.note(ReasonDetail{Kind: KindLocked, Detail: c.Locked, Text: "locked: " + c.Locked + " (apply neither writes nor restarts it until the lock is gone)"}))
	}
	if len(c.Pending) > 0 && (c.RestartRequired || c.Start) {
		out = append(out, c.note(ReasonDetail{Kind: KindPendingChanges, Detail: strings.Join(c.Pending, "; "), Text: fmt.Sprintf("the restart would apply %d pending change(s): %s (apply needs --apply-pending)", len(c.Pending), strings.Join(c.Pending, "; "))}))
	}
	if c.PendingReplacesLXC {
		out = append(out, c.note(ReasonDetail{Kind: KindPendingReplacesLXC, Text: "a pending lxc.* line replaces ALL raw lxc.* lines at the next start, the GPU lines included"}))
	}
	if c.HA != "" && (c.RestartRequired || c.Start) {
		out = append(out, c.note(ReasonDetail{Kind: KindHAManaged, Detail: c.HA, Text: "managed by HA (" + c.HA + "): apply writes the config and leaves the restart to you: " + c.HACommand}))
	}
	return out
}

// markHost sets every container of a host that failed as a whole.
func markHost(cs []*Container, state, reason string) {
	for _, c := range cs {
		c.State = state
		c.Reasons = []string{c.note(ReasonDetail{Kind: KindHostFailed, Text: reason})}
		c.Error = reason
	}
}

// Ready reports whether the container counts as fine for the exit code: ready, or stopped
// while the fleet does not ask for it to run.
func (c Container) Ready() bool {
	return readiness.Counts(c.State, c.WantState == fleet.StateRunning)
}

// ExitCode is the CLI exit status for the report (DESIGN.md): 1 if any host could not be
// asked or any container is in error, else 2 if a plan has changes pending or a container
// is not ready, else 0.
func (r *Report) ExitCode() int {
	for _, h := range r.Hosts {
		if !h.Reachable || h.Error != "" {
			return ExitError
		}
	}
	pending := false
	for _, c := range r.Containers {
		switch {
		case c.State == StateError || c.State == StateUnreachable:
			return ExitError
		case r.Kind == KindPlan:
			if c.State == StatePending {
				pending = true
			}
		case !c.Ready():
			pending = true
		}
	}
	if pending {
		return ExitPending
	}
	return ExitOK
}

// Summary counts containers per state.
func (r *Report) Summary() map[string]int {
	m := map[string]int{}
	for _, c := range r.Containers {
		m[c.State]++
	}
	return m
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// hostGPUs takes the GPU sets the host resolved (each nil when the host did not say): the
// fleet's selectors and what the config passes now, shown by index (a minor no GPU of the
// host has as "minor N").
func hostGPUs(c *Container, resolved, configured *pb.GPUSet) {
	if resolved != nil {
		c.resolved = resolved
		c.ResolvedGPUs = []GPU{}
		for _, g := range resolved.GetGpus() {
			c.ResolvedGPUs = append(c.ResolvedGPUs, GPU{Index: g.GetIndex(), UUID: g.GetUuid(), Minor: g.GetMinor(), Bus: g.GetBusId(), Model: g.GetModel()})
		}
	}
	if configured != nil {
		c.configured = configured
		c.ConfiguredGPUs = []string{}
		for _, g := range configured.GetGpus() {
			if g.GetUuid() == "" && g.GetBusId() == "" {
				c.ConfiguredGPUs = append(c.ConfiguredGPUs, fmt.Sprintf("minor %d", g.GetMinor()))
				continue
			}
			c.ConfiguredGPUs = append(c.ConfiguredGPUs, fmt.Sprint(g.GetIndex()))
		}
	}
}

// minorSet is a GPU set's minors (one per GPU on a host), sorted.
func minorSet(set *pb.GPUSet) []uint32 {
	var out []uint32
	for _, g := range set.GetGpus() {
		out = append(out, g.GetMinor())
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// markGPUsDiffer compares the configured GPUs with the fleet's, both as the host resolved
// them, and, when they differ, says so in a warning (readiness is the host's call). A host
// that did not say (an older agent) differs in nothing.
func markGPUsDiffer(c *Container, warn bool) {
	c.GPUsDiffer = c.resolved != nil && c.configured != nil && !slices.Equal(minorSet(c.resolved), minorSet(c.configured))
	if c.GPUsDiffer && warn {
		now := "none"
		if len(c.ConfiguredGPUs) > 0 {
			now = strings.Join(c.ConfiguredGPUs, ",")
		}
		want := "none"
		if len(c.GPUs) > 0 {
			want = strings.Join(c.GPUs, ",")
		}
		c.Warnings = append(c.Warnings, fmt.Sprintf("the config passes GPUs %s, the fleet asks for %s (gpupass plan shows the change)", now, want))
	}
}
