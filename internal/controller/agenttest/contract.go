package agenttest

import (
	pb "gpupass/proto/gpupass/v1"
)

// The contract between this model and the real host agent: the same containers go
// through the model's status and the real agent's, and the fields the controller's output
// shows must agree. Plans, stopped and unknown containers, and applies to stopped
// containers where no start is asked (TestModelAppliesAsTheAgent: the results, the status
// after, the progress steps in order, the config written) are held here without root
// (contract_test.go); running containers, whose status comes from a real guest's report
// and the host's evidence of a real container, in the e2e suite
// (test/e2e Contract_ModelStatusOfRunningContainers), which drives real LXC containers.
// The apply of a running container (restart, start, wait-ready) is not held: its steps
// follow the agent's applyLocked by reading.

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
