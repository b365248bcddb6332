package agenttest

import (
	"context"
	"strings"

	pb "gpupass/proto/gpupass/v1"
)

// The contract between this model and the real host agent: the same containers go
// through the model's status and the real agent's, and the fields the controller's output
// shows must agree. Plans, stopped and unknown containers, and applies to stopped
// containers where no start is asked (TestModelAppliesAsTheAgent: the results, the status
// after, the progress steps in order, the config written) are held here without root
// (contract_test.go); running containers, whose status comes from a real guest's report
// and the host's evidence of a real container, and applies that start, restart or wait
// for a running container, in the e2e suite (test/e2e Contract_ModelStatusOfRunningContainers
// and Contract_ModelAppliesToRunningContainers), which drives real LXC containers.

// StatusView is what the controller's status output shows of a container's status.
type StatusView struct {
	Gpus                []string
	State, RunState     string
	Reasons             []string
	Kinds               []pb.ReasonKind
	Warnings            []string
	RestartRequired     bool
	GuestConnected      bool
	NetworkOK           bool
	Kernel, Userspace   string            // driver versions
	Devices             map[string]string // path -> check status, as the guest reported it
	Configured, Resolve []uint32          // the GPUs' indexes
}

// StatusViewOf is s's StatusView.
func StatusViewOf(s *pb.ContainerStatus) StatusView {
	v := StatusView{Gpus: s.GetGpus(), State: s.GetState(), RunState: s.GetRunState(), Reasons: s.GetReasons(),
		Warnings: s.GetWarnings(), RestartRequired: s.GetRestartRequired(), GuestConnected: s.GetGuestConnected(),
		NetworkOK: s.GetNetworkOk(), Kernel: s.GetDriver().GetKernel(), Userspace: s.GetDriver().GetUserspace()}
	for _, r := range s.GetDetails() {
		v.Kinds = append(v.Kinds, r.GetKind())
	}
	for _, d := range s.GetDevices() {
		if v.Devices == nil {
			v.Devices = map[string]string{}
		}
		v.Devices[d.GetPath()] = d.GetStatus().String()
	}
	for _, g := range s.GetConfigured().GetGpus() {
		v.Configured = append(v.Configured, g.GetIndex())
	}
	for _, g := range s.GetResolved().GetGpus() {
		v.Resolve = append(v.Resolve, g.GetIndex())
	}
	return v
}

// StatusOf is the model's status of container id judged against spec, as its Status
// handler answers it.
func (a *Agent) StatusOf(id string, spec *pb.ContainerSpec) *pb.ContainerStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status(id, spec)
}

// PlanView is what the controller's plan output shows of a container's plan: the config
// lines added and removed, whether it starts or restarts (and why), and the error.
type PlanView struct {
	Changes  []string
	Start    bool
	Restart  []string
	RunState string
	Error    string
	Diff     string
}

// PlanViewOf is p's PlanView with a real host's paths put back: hostRoot (the agent's
// host_root; "" for none) in front of the device nodes is dropped and guestDir (its
// guest_socket_dir) reads /run/gpupass/guests. Lines in LXC's own format ("key = value",
// the plain-LXC runtime) read in Proxmox's ("key: value"), the model's.
func PlanViewOf(p *pb.ContainerPlan, hostRoot, guestDir string) PlanView {
	real := func(s string) string {
		s = strings.ReplaceAll(s, guestDir, "/run/gpupass/guests")
		if hostRoot != "" {
			s = strings.ReplaceAll(s, " "+hostRoot+"/dev/", " /dev/")
		}
		return s
	}
	v := PlanView{Start: p.GetStart(), Restart: p.GetRestart().GetReasons(), RunState: p.GetRunState(), Error: p.GetError(),
		Diff: real(p.GetDiff())}
	for _, c := range p.GetChanges() {
		op := "+"
		if c.GetOp() == pb.ConfigChange_OP_REMOVE {
			op = "-"
		}
		line := real(c.GetLine())
		if k, val, ok := strings.Cut(line, " = "); ok && strings.HasPrefix(k, "lxc.") && !strings.Contains(k, ":") {
			line = k + ": " + val
		}
		v.Changes = append(v.Changes, op+" "+line)
	}
	return v
}

// ApplyView is what the controller shows of one container's apply: written, restarted,
// started, whether it failed (the wording names the host's paths and digests), the status
// after, the plan, and the steps its progress lines name, in order.
type ApplyView struct {
	Written, Restarted, Started, Failed bool
	Status                              StatusView
	Plan                                PlanView
	Steps                               []string
}

// ApplyViewOf is r's ApplyView, given the steps its progress named and the host's paths
// (as PlanViewOf).
func ApplyViewOf(r *pb.ContainerResult, steps []string, hostRoot, guestDir string) ApplyView {
	return ApplyView{Written: r.GetWritten(), Restarted: r.GetRestarted(), Started: r.GetStarted(), Failed: r.GetError() != "",
		Status: StatusViewOf(r.GetStatus()), Plan: PlanViewOf(r.GetPlan(), hostRoot, guestDir), Steps: steps}
}

// Apply is the model's host.Apply as its handler answers it, each progress update sent to
// progress.
func (a *Agent) Apply(ctx context.Context, req *pb.ApplyRequest, progress func(*pb.ApplyProgress)) (*pb.ApplyResponse, error) {
	return a.applyWith(ctx, req, func(p *pb.ApplyProgress) error {
		progress(p)
		return nil
	})
}
