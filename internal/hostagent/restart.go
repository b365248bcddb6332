package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostdriver"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

var gpuNodeName = regexp.MustCompile(`^nvidia[0-9]+$`)

// decideRestart applies the restart rule to a running container: restart iff what it runs
// with differs from what is desired. The evidence is observed state: the nodes its init
// really has (/proc/<pid>/root/dev), its guest socket mount, the device rules of the
// config it was started with, and its guest's report. Whether this apply writes anything
// never enters into it. Where the evidence cannot settle it, restart and say why.
func (a *Agent) decideRestart(ctx context.Context, id string, st runtime.State, res *passthrough.Result, inv *gpu.Inventory, style pb.Style) *pb.RestartDecision {
	var reasons []string
	want := map[string]passthrough.ExpectedDevice{}
	paths := make([]string, 0, len(res.Devices))
	for _, d := range res.Devices {
		want[d.Path] = d
		paths = append(paths, d.Path)
	}

	// 1. The nodes the running container really has.
	seen, err := observe.Devices(a.procRoot(), st.InitPID, paths)
	if err != nil {
		reasons = append(reasons, fmt.Sprintf("cannot inspect the running container's /dev (%v); restarting to be sure", err))
	}
	for _, p := range paths {
		d, n := want[p], seen[p]
		switch {
		case err != nil:
		case !n.Exists:
			reasons = append(reasons, fmt.Sprintf("running container has no %s (want %d:%d)", p, d.Major, d.Minor))
		case !n.Char:
			reasons = append(reasons, fmt.Sprintf("running container's %s is not a character device (an optional bind left an empty file); want %d:%d", p, d.Major, d.Minor))
		case n.Major != d.Major || n.Minor != d.Minor:
			reasons = append(reasons, fmt.Sprintf("running container's %s is %d:%d, want %d:%d", p, n.Major, n.Minor, d.Major, d.Minor))
		}
	}
	for _, extra := range a.extraGPUNodes(st.InitPID, want) {
		reasons = append(reasons, fmt.Sprintf("running container still has %s, which is not assigned", extra))
	}

	// 2. The guest socket directory must be the bind mount of this container's directory.
	if ok, why := a.guestMountLive(st.InitPID, id); !ok {
		reasons = append(reasons, why)
	}

	// 3. The device rules of the config it was started with (raw style: the lxc.* keys
	// are copied verbatim into the start-time config; dev style entries are rendered by
	// PVE itself and checked through the nodes and the guest).
	noRecord := false
	if style != pb.Style_STYLE_DEV {
		started, err := a.rt.StartedConfig(ctx, id, st)
		switch {
		case errors.Is(err, runtime.ErrNoStartedConfig):
			noRecord = true
		case err != nil:
			reasons = append(reasons, fmt.Sprintf("cannot read the config the container was started with (%v); restarting to be sure", err))
		default:
			reasons = append(reasons, compareStarted(started, res, inv)...)
		}
	}

	// 4. The guest's own report from inside this running container.
	guestProved := false
	if snap, ok := a.guests.Latest(id); ok && snap.Connected && snap.Report != nil {
		checked := 0
		for _, dc := range snap.Report.GetDevices() {
			d, ok := want[dc.GetPath()]
			if !ok || dc.GetMajor() != d.Major || dc.GetMinor() != d.Minor {
				continue
			}
			checked++
			if dc.GetStatus() == pb.DeviceStatus_DEVICE_STATUS_DENIED {
				reasons = append(reasons, fmt.Sprintf("guest reports %s denied by the device cgroup: the running rules do not allow it", dc.GetPath()))
			}
		}
		guestProved = checked == len(want) && len(want) > 0
	}
	// 5. The host's driver a driver: host container got at its start (the hook's marker)
	// against the loaded module: a host driver upgrade needs a restart.
	if run, err := hostdriver.ReadRunning(a.procRoot(), st.InitPID); err != nil {
		reasons = append(reasons, err.Error()+"; restarting to be sure")
	} else if _, why := hostdriver.RestartReason(res.DriverHost, run, inv.DriverVersion); why != "" {
		reasons = append(reasons, why)
	}
	if noRecord && len(reasons) == 0 && len(want) > 0 && !guestProved {
		reasons = append(reasons, "no record of the device rules the running container was started with, and no guest report proves them; restarting to be sure")
	}
	sort.Strings(reasons)
	return &pb.RestartDecision{Required: len(reasons) > 0, Reasons: reasons}
}

// extraGPUNodes lists /dev/nvidia<N> and /dev/nvidia-caps/* nodes inside the running
// container that are not desired (a shrunk assignment, GPUs a clone inherited, MIG
// capabilities a whole GPU no longer gets).
func (a *Agent) extraGPUNodes(pid int, want map[string]passthrough.ExpectedDevice) []string {
	dev := filepath.Join(a.procRoot(), fmt.Sprint(pid), "root", "dev")
	ents, err := os.ReadDir(dev)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		p := "/dev/" + e.Name()
		if gpuNodeName.MatchString(e.Name()) {
			if _, ok := want[p]; !ok {
				out = append(out, p)
			}
		}
	}
	caps, _ := os.ReadDir(filepath.Join(dev, "nvidia-caps"))
	for _, e := range caps {
		p := gpu.DirCaps + "/" + e.Name()
		if _, ok := want[p]; !ok && e.Type()&os.ModeCharDevice != 0 {
			out = append(out, p)
		}
	}
	return out
}

// guestMountLive reports whether the running container sees this container's guest
// socket: <dir>/agent.sock, resolved through its init's root at /dev/gpupass (or the
// legacy /run/gpupass of a container started before the move), is the host socket's
// inode. A bind that mountinfo lists but a later mount hides (systemd's tmpfs on /run)
// is named as such.
func (a *Agent) guestMountLive(pid int, id string) (bool, string) {
	if _, err := os.Stat(a.guestDir(id)); err != nil {
		return false, fmt.Sprintf("guest socket directory %s is missing on the host", a.guestDir(id))
	}
	return guestSocketSeen(a.procRoot(), pid, a.guestDir(id))
}

// guestSocketDirs are where the container may see the socket directory, preferred first.
var guestSocketDirs = []string{guestchan.GuestDir, guestchan.LegacyGuestDir}

// guestSocketSeen judges the container's view of the socket in hostDir (of the directory
// itself before the agent has made the socket); the reason names why not.
func guestSocketSeen(procRoot string, pid int, hostDir string) (bool, string) {
	hostSocket := filepath.Join(hostDir, guestchan.SocketName)
	ev, err := observe.GuestSocketEvidence(procRoot, pid, hostDir, guestchan.SocketName, guestSocketDirs)
	if err != nil {
		return false, fmt.Sprintf("cannot see the guest socket from inside the container (%v)", err)
	}
	v := observe.JudgeSocket(ev)
	switch {
	case v.Visible != "":
		return true, ""
	case v.Hidden != "":
		return false, fmt.Sprintf("guest socket hidden inside the container by a mount on %s", v.Cover)
	case v.Mounted != "":
		return false, fmt.Sprintf("guest socket at %s inside the container is not the host's %s", v.Mounted, hostSocket)
	}
	return false, "running container was started without the guest socket mount at " + guestchan.GuestDir
}

// compareStarted compares the managed device rules of the start-time config with the
// desired ones.
func compareStarted(started []byte, res *passthrough.Result, inv *gpu.Inventory) []string {
	cfg, err := pveconf.Parse(started, pveconf.FormatLXC)
	if err != nil {
		return []string{fmt.Sprintf("cannot parse the config the container was started with (%v); restarting to be sure", err)}
	}
	// Judge the start-time config with the host's inventory: without it, allow rules are
	// recognised only for 195 and the dynamic ranges.
	have := ruleSet(passthrough.NewMatcher(inv).ManagedSet(cfg))
	want := ruleSet(res.Set)
	var reasons []string
	for r := range have {
		if !want[r] {
			reasons = append(reasons, fmt.Sprintf("running container was started with %s, which is not desired", r))
		}
	}
	for r := range want {
		if !have[r] {
			reasons = append(reasons, fmt.Sprintf("running container was started without %s", r))
		}
	}
	return reasons
}

// ruleSet keeps the device cgroup rules of a managed set: mount entries are judged by
// the nodes the container really has, since their text differs between the PVE config
// and the start-time config.
func ruleSet(managed []string) map[string]bool {
	out := map[string]bool{}
	for _, m := range managed {
		if strings.Contains(m, "devices.allow") || strings.Contains(m, "devices.deny") {
			out[m] = true
		}
	}
	return out
}
