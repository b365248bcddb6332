package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostdriver"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/restartrule"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

var gpuNodeName = regexp.MustCompile(`^nvidia[0-9]+$`)

// decideRestart applies the restart rule (internal/restartrule) to a running container:
// it gathers the evidence, all observed state, and lets the rule decide.
func (a *Agent) decideRestart(ctx context.Context, id string, st runtime.State, res *passthrough.Result, inv *gpu.Inventory, style pb.Style) *pb.RestartDecision {
	want := restartrule.Desired{Devices: res.Devices, Rules: res.Set, Inventory: inv, Style: style, DriverHost: res.DriverHost}
	if inv != nil {
		want.Driver = inv.DriverVersion
	}
	return restartrule.Decide(a.restartEvidence(ctx, id, st, want), want)
}

// restartEvidence gathers what the rule judges, without exec: the nodes the container's
// init really has (/proc/<pid>/root/dev), its view of the guest socket, the config it was
// started with (raw style: the lxc.* keys are copied verbatim into the start-time config;
// dev style entries are rendered by PVE itself and checked through the nodes and the
// guest), and its connected guest's latest report.
func (a *Agent) restartEvidence(ctx context.Context, id string, st runtime.State, want restartrule.Desired) restartrule.Evidence {
	var ev restartrule.Evidence
	paths := make([]string, 0, len(want.Devices))
	for _, d := range want.Devices {
		paths = append(paths, d.Path)
	}
	ev.Nodes, ev.NodesErr = observe.Devices(a.procRoot(), st.InitPID, paths)
	ev.GPUNodes = a.gpuNodes(st.InitPID)
	ev.Socket = a.guestSocket(st.InitPID, id)
	if want.Style != pb.Style_STYLE_DEV {
		started, err := a.rt.StartedConfig(ctx, id, st)
		switch {
		case errors.Is(err, runtime.ErrNoStartedConfig):
			ev.Started.None = true
		case err != nil:
			ev.Started.Err = err
		default:
			ev.Started.Config = started
		}
	}
	if snap, ok := a.guests.Latest(id); ok && snap.Connected && snap.Report != nil {
		ev.Guest = snap.Report
	}
	// The host's driver a driver: host container got at its start (the hook's marker).
	run, err := hostdriver.ReadRunning(a.procRoot(), st.InitPID)
	ev.Driver = restartrule.Driver{Present: run.Present, Version: run.Version, Err: err}
	return ev
}

// gpuNodes lists the /dev/nvidia<N> nodes and the /dev/nvidia-caps/* character devices
// inside the running container.
func (a *Agent) gpuNodes(pid int) []string {
	dev := filepath.Join(a.procRoot(), fmt.Sprint(pid), "root", "dev")
	ents, err := os.ReadDir(dev)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if gpuNodeName.MatchString(e.Name()) {
			out = append(out, "/dev/"+e.Name())
		}
	}
	caps, _ := os.ReadDir(filepath.Join(dev, "nvidia-caps"))
	for _, e := range caps {
		if e.Type()&os.ModeCharDevice != 0 {
			out = append(out, gpu.DirCaps+"/"+e.Name())
		}
	}
	return out
}

// guestSocketDirs are where the container may see the socket directory, preferred first.
var guestSocketDirs = []string{guestchan.GuestDir, guestchan.LegacyGuestDir}

// guestSocket gathers the running container's view of this container's guest socket:
// <dir>/agent.sock, resolved through its init's root at /dev/gpupass (or the legacy
// /run/gpupass of a container started before the move), judged against the host socket's
// inode (observe.JudgeSocket).
func (a *Agent) guestSocket(pid int, id string) restartrule.Socket {
	s := restartrule.Socket{HostDir: a.guestDir(id)}
	if _, err := os.Stat(s.HostDir); err != nil {
		s.HostDirMissing = true
		return s
	}
	ev, err := observe.GuestSocketEvidence(a.procRoot(), pid, s.HostDir, guestchan.SocketName, guestSocketDirs)
	if err != nil {
		s.Err = err
		return s
	}
	s.View = observe.JudgeSocket(ev)
	return s
}
