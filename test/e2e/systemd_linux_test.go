package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/pvelab"
)

// Scenarios on containers that boot systemd as PID 1 from the Debian 12 rootfs (the shape
// of Proxmox's Debian and Ubuntu templates), with the guest agent baked in as the shipped
// unit. Systemd mounts a tmpfs on /run at boot: the guest socket lives at /dev/gpupass.

// Row 1 on systemd: the seed scenario. The lines are present, the container runs without
// them; apply restarts it and the guest agent, started by systemd, reports ready.
func testSeedSystemd(t *testing.T, f *fabric) {
	seedScenario(t, f, ctOpts{Systemd: true})
}

// The restart rule judges the guest socket by what the container sees: a systemd
// container started before its guest socket mount was in the config runs without it
// (the config text says otherwise). Plan changes nothing and wants a restart for that
// named reason; status says why the guest never connected; apply restarts it and the
// guest reports ready.
func testSystemdStartedWithoutGuestMount(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "nomount", ctOpts{Systemd: true})
	all := ct.rendered(t, 0)
	guestLine := all[len(all)-1]
	if !strings.Contains(guestLine, " dev/gpupass ") {
		t.Fatalf("last rendered line %q is not the guest socket mount", guestLine)
	}
	ct.appendConfig(t, all[:len(all)-1]...)
	ct.Start(t)
	ct.appendConfig(t, guestLine) // after the start: in the file, not in the container
	ct.ensureGuestDir(t)
	fl := f.writeFleet(t, "nomount", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})

	const why = "running container was started without the guest socket mount at /dev/gpupass"
	st := f.waitStatus(t, fl, ct.name, 20*time.Second, func(c reportCt) bool { return anyContains(c.Reasons, why) })
	if st.State != "not-ready" {
		t.Errorf("status: state %s, want not-ready", st.State)
	}
	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, ct.name)
	if len(c.Changes) != 0 {
		t.Errorf("plan: the config already has every line, want no change, got %+v", c.Changes)
	}
	if !c.RestartRequired || !anyContains(c.RestartReasons, why) {
		t.Errorf("plan: restart_required=%v reasons=%q, want a restart because %q", c.RestartRequired, c.RestartReasons, why)
	}
	pid := ct.InitPID(t)
	ap := f.mustApplyReady(t, fl, ct.name)
	if c := ap.Report.ct(t, ct.name); !c.Restarted || c.Written {
		t.Errorf("apply: restarted=%v written=%v, want a restart and no write", c.Restarted, c.Written)
	}
	if ct.InitPID(t) == pid {
		t.Errorf("apply reported a restart but init pid %d is unchanged", pid)
	}
	ct.assertSystemdAgent(t)
	assertIdempotent(t, f, fl, ct)
}

// Readiness in a systemd container: the config is written while it is stopped, a person
// starts it, and the guest agent (a systemd unit) pushes ready without anyone polling or
// exec'ing; the time from lxc-start to `gpupass status` saying ready is logged.
func testSystemdReadiness(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "ready", ctOpts{Systemd: true})
	fl := f.writeFleet(t, "sdready", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	ap := f.ctl(t, "apply", fl, "--timeout", "30s")
	if c := ap.Report.ct(t, ct.name); !c.Written || c.Restarted || c.State != "stopped" {
		t.Fatalf("apply on a stopped container: written=%v restarted=%v state=%s, want written, left stopped\n%s", c.Written, c.Restarted, c.State, ap.Stderr)
	}
	start := time.Now()
	ct.Start(t)
	running := time.Since(start)
	c := f.waitStatus(t, fl, ct.name, 30*time.Second, func(c reportCt) bool { return c.State == "ready" })
	t.Logf("systemd container %s: lxc-start to RUNNING %v, to `gpupass status` ready %v (status polled by the test every 100 ms)",
		ct.name, running.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	wantDevices(t, c, map[string]string{"/dev/nvidia0": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	ct.assertSystemdAgent(t)
}

// openRCBoot bounds the waits for a Debian 12 OpenRC container's boot to its default
// runlevel, where the guest agent starts (measured: ~8 s alone, 18-30+ s under the suite).
const openRCBoot = 120 * time.Second

// Readiness in a container whose PID 1 is sysvinit running OpenRC (Debian 12): the guest
// agent is started by the shipped OpenRC init script, enabled in the default runlevel.
// OpenRC mounts a tmpfs on /run at boot too: the socket at /dev/gpupass is what it reaches.
func testOpenRCReadiness(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "openrc", ctOpts{OpenRC: true})
	fl := f.writeFleet(t, "openrc", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}, State: "running"}})
	start := time.Now()
	// Debian's OpenRC runs its sysinit scripts one by one: about 8 s to the default
	// runlevel on the 2-core CI machine alone, over 30 s while the whole suite runs.
	ap := f.mustApplyReadyWithin(t, fl, openRCBoot, ct.name)
	c := ap.Report.ct(t, ct.name)
	if !c.Written || !c.Started {
		t.Errorf("apply: written=%v started=%v, want the config written and the container started", c.Written, c.Started)
	}
	t.Logf("OpenRC container %s: apply (write, lxc-start, wait for the guest's push) ready in %v", ct.name, time.Since(start).Round(time.Millisecond))
	wantDevices(t, c, map[string]string{"/dev/nvidia0": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	if out, _ := ct.Attach(t, "rc-service", "gpupass-guest-agent", "status"); !strings.Contains(out, "started") {
		t.Errorf("rc-service gpupass-guest-agent status: %q, want started", out)
	}
	if out, code := ct.Attach(t, "test", "-S", "/dev/gpupass/agent.sock"); code != 0 {
		t.Errorf("no socket at /dev/gpupass/agent.sock inside: %s", out)
	}
	assertIdempotent(t, f, fl, ct)
}

// The old place, /run/gpupass, under systemd: a container whose config still has the
// managed guest mount gpupass wrote before the move boots with the bind in its mountinfo
// and systemd's tmpfs over it. Status names that reason (not just "has not connected");
// plan moves the line to dev/gpupass and wants a restart for it; apply does both and
// the guest reports ready.
func testSystemdLegacyRunHidden(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "legacy", ctOpts{Systemd: true})
	ct.appendConfig(t, legacyRendered(t, ct)...)
	ct.ensureGuestDir(t)
	ct.Start(t)
	fl := f.writeFleet(t, "sdlegacy", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})

	const why = "guest socket hidden inside the container by a mount on /run"
	st := f.waitStatus(t, fl, ct.name, 20*time.Second, func(c reportCt) bool { return anyContains(c.Reasons, why) })
	if st.State != "not-ready" {
		t.Errorf("status: state %s, want not-ready", st.State)
	}
	// What the container sees: no socket at /run/gpupass, although the host's
	// mountinfo view of its init lists the bind there.
	if out, code := ct.Attach(t, "test", "-S", "/run/gpupass/agent.sock"); code == 0 {
		t.Errorf("/run/gpupass/agent.sock is visible inside under systemd (%s): the scenario shows nothing", out)
	}
	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, ct.name)
	var removed, added []string
	for _, ch := range c.Changes {
		if ch.Op == "remove" {
			removed = append(removed, ch.Line)
		} else {
			added = append(added, ch.Line)
		}
	}
	if len(removed) != 1 || !strings.Contains(removed[0], " run/gpupass ") || len(added) != 1 || !strings.Contains(added[0], " dev/gpupass ") {
		t.Errorf("plan: changes -%q +%q, want the run/gpupass mount replaced by dev/gpupass", removed, added)
	}
	if !c.RestartRequired || !anyContains(c.RestartReasons, why) {
		t.Errorf("plan: restart_required=%v reasons=%q, want a restart because %q", c.RestartRequired, c.RestartReasons, why)
	}
	ap := f.mustApplyReady(t, fl, ct.name)
	if c := ap.Report.ct(t, ct.name); !c.Restarted || !c.Written {
		t.Errorf("apply: restarted=%v written=%v, want both", c.Restarted, c.Written)
	}
	ct.assertManaged(t, []int{0})
	ct.assertSystemdAgent(t)
	assertIdempotent(t, f, fl, ct)
}

// The old place under busybox init (nothing mounts over /run): a container started with
// the pre-move guest mount still sees its socket directory at /run/gpupass. Plan moves the
// line for the next start and wants no restart; apply writes it without restarting, and
// the new guest agent, finding no /dev/gpupass, falls back to /run/gpupass and reports
// ready; a second run changes nothing.
func testLegacyRunMigratesWithoutRestart(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "legacybb", ctOpts{})
	ct.appendConfig(t, legacyRendered(t, ct)...)
	legacy := ct.readConfig()
	fl := f.writeFleet(t, "bblegacy", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	// As after an upgrade: the agent manages the container (here: an apply while it is
	// stopped), whose config still has what the previous version wrote and which runs
	// with it, its guest connected.
	if ap := f.ctl(t, "apply", fl, "--timeout", "30s"); ap.Report.ct(t, ct.name).State != "stopped" {
		t.Fatalf("apply on the stopped container: %+v", ap.Report.ct(t, ct.name))
	}
	ct.writeConfig(t, legacy)
	ct.Start(t)
	f.waitStatus(t, fl, ct.name, 20*time.Second, func(c reportCt) bool { return c.State == "ready" })
	if log := ct.guestLog(t); !strings.Contains(log, `"msg":"dialled host agent","socket":"/run/gpupass/agent.sock"`) {
		t.Errorf("the guest agent's log does not show it fell back to the legacy socket:\n%s", tail(log, 2000))
	}

	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, ct.name)
	var removed, added []string
	for _, ch := range c.Changes {
		if ch.Op == "remove" {
			removed = append(removed, ch.Line)
		} else {
			added = append(added, ch.Line)
		}
	}
	if len(removed) != 1 || !strings.Contains(removed[0], " run/gpupass ") || len(added) != 1 || !strings.Contains(added[0], " dev/gpupass ") {
		t.Errorf("plan: changes -%q +%q, want the run/gpupass mount replaced by dev/gpupass", removed, added)
	}
	if c.RestartRequired {
		t.Errorf("plan: restart required %q, want none: the running container sees its socket directory", c.RestartReasons)
	}
	pid := ct.InitPID(t)
	ap := f.mustApplyReady(t, fl, ct.name)
	if c := ap.Report.ct(t, ct.name); !c.Written || c.Restarted {
		t.Errorf("apply: written=%v restarted=%v, want written and no restart", c.Written, c.Restarted)
	}
	if ct.InitPID(t) != pid {
		t.Errorf("apply restarted the container (init %d -> %d)", pid, ct.InitPID(t))
	}
	ct.assertManaged(t, []int{0})
	assertIdempotent(t, f, fl, ct)
}

// legacyRendered is what gpupass wrote before the move: the managed set with the guest
// socket mount at run/gpupass.
func legacyRendered(t testing.TB, ct *container) []string {
	t.Helper()
	lines := ct.rendered(t, 0)
	last := len(lines) - 1
	lines[last] = strings.Replace(lines[last], " dev/gpupass ", " run/gpupass ", 1)
	if !strings.Contains(lines[last], " run/gpupass ") {
		t.Fatalf("e2e: no guest mount line in %q", lines)
	}
	return lines
}

// assertSystemdAgent checks that systemd is PID 1 in the container and runs the guest
// agent as the shipped unit, in the unit's own cgroup (the identity the host accepted).
func (ct *container) assertSystemdAgent(t testing.TB) {
	t.Helper()
	if out, _ := ct.Attach(t, "cat", "/proc/1/comm"); strings.TrimSpace(out) != "systemd" {
		t.Errorf("PID 1 of %s is %q, want systemd", ct.name, strings.TrimSpace(out))
	}
	out, code := ct.Attach(t, "systemctl", "show", "-p", "ActiveState,SubState,MainPID,ControlGroup", "gpupass-guest-agent.service")
	if code != 0 || !strings.Contains(out, "ActiveState=active") || !strings.Contains(out, "ControlGroup=/system.slice/gpupass-guest-agent.service") {
		t.Errorf("guest agent unit in %s: exit %d:\n%s", ct.name, code, out)
	}
	// Seen from the host: the unit's process sits in lxc.payload.<name>/system.slice/<unit>,
	// the cgroup the host agent's identity check read when it accepted the guest.
	unitCg := filepath.Join("/sys/fs/cgroup", "lxc.payload."+ct.name, "system.slice", "gpupass-guest-agent.service")
	procs, err := os.ReadFile(filepath.Join(unitCg, "cgroup.procs"))
	if err != nil || len(strings.Fields(string(procs))) == 0 {
		t.Fatalf("no guest agent process in %s: %v %q", unitCg, err, procs)
	}
	hostPID := strings.Fields(string(procs))[0]
	cg, err := os.ReadFile(filepath.Join("/proc", hostPID, "cgroup"))
	if want := "\n0::/lxc.payload." + ct.name + "/system.slice/gpupass-guest-agent.service\n"; err != nil || !strings.Contains("\n"+string(cg), want) {
		t.Errorf("guest agent (host pid %s) cgroup %q (%v), want the unified line %q", hostPID, cg, err, strings.TrimSpace(want))
	}
}

// The seed incident on the PVE lab with a container that boots systemd: a template made
// from the same Debian 12 rootfs (pvelab.SystemdTemplate: the agent and the shipped unit
// baked in), `pct create` from it (unprivileged, as PVE 9 makes them), the real host agent
// with runtime pct; apply restarts it through pct and the unit's agent reports ready over
// /dev/gpupass (testPVESeed's assertions), and systemd is PID 1 with the unit active.
func testPVESeedSystemd(t *testing.T, lab *pveLab) {
	tpl := pvelab.SystemdTemplate(t, lab.f.bin.GuestAgent, filepath.Join(repoRoot(t), "packaging", "gpupass-guest-agent.service"))
	ct := lab.newCTFrom(t, false, tpl)
	testPVESeedFrom(t, lab, ct, "raw")
	if out, _ := ct.Exec(t, "cat", "/proc/1/comm"); strings.TrimSpace(out) != "systemd" {
		t.Errorf("PID 1 of %d is %q, want systemd", ct.ID, strings.TrimSpace(out))
	}
	if out, _ := ct.Exec(t, "systemctl", "is-active", "gpupass-guest-agent.service"); strings.TrimSpace(out) != "active" {
		t.Errorf("gpupass-guest-agent.service in %d is %q, want active", ct.ID, strings.TrimSpace(out))
	}
}
