package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/hostdriver"
	"gpupass/internal/pvelab"
	pb "gpupass/proto/gpupass/v1"
)

// The PVE lab scenarios beyond the seed incident (docs/e2e.md "The PVE lab"; the rules they
// check are docs/host-agent.md "On Proxmox").

// unchanged checks that apply neither wrote nor restarted ct: same bytes, same init.
func unchanged(t *testing.T, ct *pvelab.CT, conf string, pid int, c reportCt) {
	t.Helper()
	if c.Written || c.Restarted {
		t.Errorf("apply: written=%v restarted=%v, want neither", c.Written, c.Restarted)
	}
	if got := ct.Conf(t); got != conf {
		t.Errorf("apply changed the config:\n%s", got)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("apply restarted the container (init %d -> %d)", pid, got)
	}
}

// A container under `lock: backup`: the plan says locked and by what; apply neither writes
// nor restarts it (pct reboot would not check the lock and leave it stopped, TestLockBackup
// in test/pve) and fails it with exit 1.
func testPVELocked(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "locked-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw"})
	ct.Start(t)
	ct.AppendConf(t, "lock: backup")
	conf, pid := ct.Conf(t), ct.InitPID(t)

	plan := lab.f.ctl(t, "plan", fl)
	if c := plan.Report.ct(t, id); c.Locked != "backup" {
		t.Errorf("plan: locked %q, want backup (exit %d, reasons %q)", c.Locked, plan.Code, c.Reasons)
	}
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "60s")
	c := ap.Report.ct(t, id)
	if ap.Code != 1 || !strings.Contains(c.Error+strings.Join(c.Reasons, " "), "locked") {
		t.Errorf("apply: exit %d error %q reasons %q, want exit 1 naming the lock", ap.Code, c.Error, c.Reasons)
	}
	unchanged(t, ct, conf, pid, c)
	if got := ct.Status(t); got != "running" {
		t.Errorf("container is %s after the refused apply, want running", got)
	}
	t.Logf("locked: plan exit %d, apply exit %d: %s", plan.Code, ap.Code, c.Error)

	// doctor explains it with Proxmox's commands (the host's runtime is pct), not lxc-*.
	doc, err := run(context.Background(), 2*time.Minute, nil, lab.f.bin.Controller, "doctor", "-f", fl, lab.h.name+"/"+id)
	if err != nil {
		t.Fatal(err)
	}
	out := doc.Stdout + doc.Stderr
	if !strings.Contains(out, "lock") || !strings.Contains(out, "pct ") || strings.Contains(out, "lxc-start") {
		t.Errorf("doctor (exit %d) does not explain the lock with pct commands:\n%s", doc.Code, out)
	}
	t.Logf("doctor (exit %d):\n%s", doc.Code, out)
}

// Pending changes: `pct set -features` on a running container goes to [pve:pending]; every
// start applies all of it. The plan lists it; apply refuses without --apply-pending (nothing
// written or restarted) and with it restarts through pct, which applies the pending change.
func testPVEPending(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "pending-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw"})
	ct.Start(t)
	pvelab.MustPct(t, "set", id, "-features", "nesting=1")
	if !strings.Contains(ct.Conf(t), "[pve:pending]") {
		t.Fatalf("pct set -features on a running container did not go to [pve:pending]:\n%s", ct.Conf(t))
	}
	conf, pid := ct.Conf(t), ct.InitPID(t)

	plan := lab.f.ctl(t, "plan", fl)
	if c := plan.Report.ct(t, id); !anyContains(c.Pending, "features") {
		t.Errorf("plan: pending %q, want the features change listed", c.Pending)
	}
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "60s")
	c := ap.Report.ct(t, id)
	if ap.Code != 1 {
		t.Errorf("apply without --apply-pending: exit %d, want 1; error %q", ap.Code, c.Error)
	}
	unchanged(t, ct, conf, pid, c)

	ap = lab.f.ctl(t, "apply", fl, "--timeout", "90s", "--apply-pending")
	c = ap.Report.ct(t, id)
	if ap.Code != 0 || c.State != "ready" || !c.Restarted || !c.Written {
		t.Fatalf("apply --apply-pending: exit %d state %s restarted %v written %v error %q reasons %q", ap.Code, c.State, c.Restarted, c.Written, c.Error, c.Reasons)
	}
	p := pvelab.ParseStrict(t, ct.ConfPath())
	if p["features"] != "nesting=1" || len(p["pending"].(map[string]any)) != 0 {
		t.Errorf("after the restart: features %v pending %v, want nesting=1 applied and nothing pending", p["features"], p["pending"])
	}
}

// A pending raw lxc.* line replaces the whole raw lxc.* list at start (GPU lines included):
// the plan flags it and apply refuses even with --apply-pending.
func testPVEPendingLXC(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "pendlxc-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw"})
	ct.Start(t)
	ct.WriteConf(t, ct.Conf(t)+"\n[pve:pending]\nlxc.environment: GPUPASS_LAB=1\n")
	pvelab.ParseStrict(t, ct.ConfPath())
	conf, pid := ct.Conf(t), ct.InitPID(t)

	plan := lab.f.ctl(t, "plan", fl)
	if c := plan.Report.ct(t, id); !c.PendingReplacesLXC {
		t.Errorf("plan: pending_replaces_lxc false, want true (pending %q)", c.Pending)
	}
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "60s", "--apply-pending")
	c := ap.Report.ct(t, id)
	if ap.Code != 1 {
		t.Errorf("apply --apply-pending with a pending lxc.* line: exit %d, want 1; error %q", ap.Code, c.Error)
	}
	unchanged(t, ct, conf, pid, c)
}

// An HA-managed container (/etc/pve/ha/resources.cfg lists ct:<id>): the plan names the
// resource and the ha-manager commands; apply writes the config and leaves the restart to HA
// (pct reboot would bypass it), exit 1.
func testPVEHA(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "ha-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw"})
	ct.Start(t)
	res := filepath.Join(pvelab.EtcPVE, "ha", "resources.cfg")
	if err := os.MkdirAll(filepath.Dir(res), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(res, []byte(fmt.Sprintf("ct: %s\n\tstate started\n", id)), 0o640); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(res) })
	pid := ct.InitPID(t)

	plan := lab.f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, id)
	if !strings.Contains(c.HA, id) || !strings.Contains(c.HACommand, "ha-manager") {
		t.Errorf("plan: ha %q ha_command %q, want the resource and the ha-manager commands", c.HA, c.HACommand)
	}
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "60s")
	c = ap.Report.ct(t, id)
	if ap.Code != 1 || !c.Written || c.Restarted {
		t.Errorf("apply: exit %d written %v restarted %v, want exit 1, written, not restarted; error %q", ap.Code, c.Written, c.Restarted, c.Error)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("apply restarted an HA-managed container itself (init %d -> %d)", pid, got)
	}
	pvelab.ParseStrict(t, ct.ConfPath())
	t.Logf("HA: apply exit %d: %s; %s", ap.Code, c.Error, c.HACommand)
}

// A stale nvidia-uvm major (the driver was reloaded and got another one): the lines name
// 238 where /proc/devices says 10. Apply replaces them, starts the stopped container through
// pct and the guest reports ready.
func testPVEStaleMajor(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "stale-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw", state: "running"})
	first := lab.f.ctl(t, "plan", fl)
	var stale []string
	for _, c := range first.Report.ct(t, id).Changes {
		if c.Op == "add" {
			stale = append(stale, strings.ReplaceAll(c.Line, "c 10:", "c 238:"))
		}
	}
	if !anyContains(stale, "c 238:") {
		t.Fatalf("no uvm allow line to make stale in %q", stale)
	}
	ct.AppendConf(t, stale...)

	plan := lab.f.ctl(t, "plan", fl)
	var removes []string
	for _, c := range plan.Report.ct(t, id).Changes {
		if c.Op != "add" {
			removes = append(removes, c.Op+" "+c.Line)
		}
	}
	if !anyContains(removes, "238:") {
		t.Errorf("plan does not replace the stale major: changes %q", removes)
	}
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "90s")
	c := ap.Report.ct(t, id)
	if ap.Code != 0 || c.State != "ready" || !c.Written || !c.Started {
		t.Fatalf("apply: exit %d state %s written %v started %v error %q reasons %q", ap.Code, c.State, c.Written, c.Started, c.Error, c.Reasons)
	}
	if conf := ct.Conf(t); strings.Contains(conf, "238:") {
		t.Errorf("the stale major is still in the config:\n%s", conf)
	}
	pvelab.ParseStrict(t, ct.ConfPath())
}

// The host agent SIGKILLed mid-apply, after writing and before its `pct reboot` ran: the
// restarted agent reconciles from its journal, restarts the container through pct, and the
// guest reports ready.
func testPVEAgentKilled(t *testing.T, lab *pveLab) {
	h := lab.h
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "killed-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw"})
	ct.Start(t)
	pid := ct.InitPID(t)
	marker := filepath.Join(h.dir, "reboot-called")
	h.wrap(t, "pct", fmt.Sprintf(`if [ "$1" = reboot ]; then touch %s; sleep 120; fi
exec "$REAL" "$@"`, marker))
	h.Restart(t) // the wrapper takes effect for a new agent's PATH lookups
	bg := lab.f.ctlBackground(t, "apply", fl, "--timeout", "90s")
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never called pct reboot\n%s", h.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.Kill(t)
	bg.wait(t, 30*time.Second)
	if !strings.Contains(ct.Conf(t), "lxc.cgroup2.devices.allow") {
		t.Fatalf("the agent was killed before it wrote the config:\n%s", ct.Conf(t))
	}
	if got := ct.InitPID(t); got != pid {
		t.Fatalf("the container restarted although pct reboot never ran (init %d -> %d)", pid, got)
	}
	h.unwrap(t, "pct")
	h.Start(t) // READY=1 comes after interrupted applies are reconciled
	c := lab.f.waitStatus(t, fl, id, 60*time.Second, func(c reportCt) bool { return c.State == "ready" })
	if got := ct.InitPID(t); got == pid {
		t.Errorf("ready but the container was not restarted (init %d)", got)
	}
	t.Logf("after the kill: reconciled through pct, %s %s", id, c.State)
	pvelab.ParseStrict(t, ct.ConfPath())
}

// `pct set -tags` on a running GPU container rewrites /var/lib/lxc/<id>/config (PVE), which
// must not make gpupass restart it: the pct runtime keeps its own start record.
func testPVETags(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, true)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "tags-"+id, labCt{ct: ct, gpus: []string{"1"}, style: "dev", state: "running"})
	ap := lab.f.ctl(t, "apply", fl, "--timeout", "90s")
	if c := ap.Report.ct(t, id); ap.Code != 0 || c.State != "ready" || !c.Started {
		t.Fatalf("apply: exit %d state %s started %v error %q reasons %q", ap.Code, c.State, c.Started, c.Error, c.Reasons)
	}
	pid := ct.InitPID(t)
	st, _ := os.Stat(ct.RenderedPath())
	time.Sleep(1100 * time.Millisecond)
	pvelab.MustPct(t, "set", id, "-tags", "gpu")
	if st2, _ := os.Stat(ct.RenderedPath()); !st2.ModTime().After(st.ModTime()) {
		t.Fatalf("pct set -tags did not rewrite %s; the case is not exercised", ct.RenderedPath())
	}
	plan := lab.f.ctl(t, "plan", fl)
	if c := plan.Report.ct(t, id); plan.Code != 0 || c.RestartRequired {
		t.Errorf("plan after pct set -tags: exit %d restart %v %q, want nothing to do", plan.Code, c.RestartRequired, c.RestartReasons)
	}
	ap = lab.f.ctl(t, "apply", fl, "--timeout", "60s")
	if c := ap.Report.ct(t, id); ap.Code != 0 || c.Restarted || c.State != "ready" {
		t.Errorf("apply after pct set -tags: exit %d restarted %v state %s", ap.Code, c.Restarted, c.State)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("the container was restarted (init %d -> %d)", pid, got)
	}
}

// The status path runs no pct (each call costs about a second of Perl start-up here, more on
// a loaded node); an apply runs one pct per state change. Every pct the agent runs is logged
// by a wrapper on its PATH.
func testPVEPctCalls(t *testing.T, lab *pveLab) {
	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "calls-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw", state: "running"})
	took := lab.logPct(t)
	took("agent start")

	ap := lab.f.ctl(t, "apply", fl, "--timeout", "90s")
	if c := ap.Report.ct(t, id); ap.Code != 0 || c.State != "ready" || !c.Started {
		t.Fatalf("apply: exit %d state %s started %v error %q", ap.Code, c.State, c.Started, c.Error)
	}
	if got := took("apply from stopped"); len(got) != 1 || got[0] != "start_"+id {
		t.Errorf("apply of a stopped container ran pct %q, want exactly one `pct start %s`", got, id)
	}
	for i := 0; i < 3; i++ {
		if st := lab.f.ctl(t, "status", fl); st.Code != 0 {
			t.Fatalf("status: exit %d", st.Code)
		}
	}
	if got := took("3 status requests"); len(got) != 0 {
		t.Errorf("status ran pct %q, want none", got)
	}
	if ap := lab.f.ctl(t, "apply", fl, "--timeout", "60s"); ap.Code != 0 {
		t.Fatalf("second apply: exit %d", ap.Code)
	}
	if got := took("apply with nothing to do"); len(got) != 0 {
		t.Errorf("an apply with nothing to do ran pct %q, want none", got)
	}
}

// logPct puts a wrapper on the lab agent's PATH that logs every pct the agent runs and
// restarts the agent (the wrapper takes effect for a new agent's PATH lookups); the wrapper
// goes when the test ends. took returns the calls since the last took, one per call with
// its arguments joined by "_" ("start_9901"), and logs them.
func (lab *pveLab) logPct(t *testing.T) (took func(what string) []string) {
	t.Helper()
	h := lab.h
	calls := filepath.Join(h.dir, "pct-calls")
	_ = os.Remove(calls)
	h.wrap(t, "pct", fmt.Sprintf(`echo "$*" >> %s
exec "$REAL" "$@"`, calls))
	t.Cleanup(func() { h.unwrap(t, "pct") })
	h.Restart(t)
	return func(what string) []string {
		t.Helper()
		b, _ := os.ReadFile(calls)
		_ = os.Remove(calls)
		lines := strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
		t.Logf("%s: %d pct calls %q", what, len(lines), lines)
		return lines
	}
}

// `driver: host` across a host driver upgrade on Proxmox, through the real pct (docs/driver.md
// "Host driver upgrades"; on plain LXC DriverHost_UpgradeRestartsAndRealigns): a busybox
// container without NVIDIA files gets the simulated host's userspace (apply starts it through
// `pct start`, the hook line in /etc/pve/lxc/<id>.conf). The host tree is then upgraded
// (module version, libraries: setHostDriver): status names the host's change and "restart
// required: host driver changed A -> B"; apply restarts the container through `pct reboot`
// (one pct call, a new init) without writing, and it is ready with B from the host; PVE's
// strict parser accepts the config; another apply does nothing. The simulated host's driver
// is put back at the end, for scenarios after this one.
func testPVEDriverHostUpgrade(t *testing.T, lab *pveLab) {
	h := lab.h
	inv, err := gpu.Discover(lab.root)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := inv.DriverVersion, "590.44.01"
	if v1 == "" || v1 == v2 {
		t.Fatalf("the simulated host's driver is %q: want a loaded version other than %s", v1, v2)
	}
	versionFile := filepath.Join(lab.root, "proc/driver/nvidia/version")
	loaded, err := os.ReadFile(versionFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(versionFile, loaded, 0o644); err != nil {
			t.Errorf("put back the simulated host's driver: %v", err)
		}
		if err := os.RemoveAll(filepath.Join(lab.root, "usr")); err != nil {
			t.Errorf("put back the simulated host's driver: %v", err)
		}
	})
	h.setHostDriver(t, v1) // the userspace of the loaded module beside it

	ct := lab.newCT(t, false)
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "drvhost-"+id, labCt{ct: ct, gpus: []string{"0"}, style: "raw", state: "running", driver: "host"})
	took := lab.logPct(t)
	took("agent start")

	ap := lab.f.ctl(t, "apply", fl, "--timeout", "90s")
	c := ap.Report.ct(t, id)
	if ap.Code != 0 || c.State != "ready" || !c.Started || !c.Written {
		t.Fatalf("apply: exit %d state %s started %v written %v error %q reasons %q", ap.Code, c.State, c.Started, c.Written, c.Error, c.Reasons)
	}
	if c.Driver.Source != "host" || c.Driver.Userspace != v1 {
		t.Fatalf("driver: host after apply: %+v, want userspace %s from the host", c.Driver, v1)
	}
	if got := took("apply from stopped"); len(got) != 1 || got[0] != "start_"+id {
		t.Errorf("apply of a stopped container ran pct %q, want exactly one `pct start %s`", got, id)
	}
	hook := "lxc.hook.mount: " + lab.f.bin.HostAgent + " driver hook --host-root " + lab.root
	if conf := ct.Conf(t); !strings.Contains(conf, hook+"\n") {
		t.Fatalf("%s lacks %q:\n%s", ct.ConfPath(), hook, conf)
	}
	t.Logf("apply: exit %d in %v, %s ready with %s from the host", ap.Code, ap.Elapsed.Round(time.Millisecond), id, v1)
	pid := ct.InitPID(t)

	h.setHostDriver(t, v2) // the upgrade
	st := lab.f.ctl(t, "status", fl)
	if st.Code != 2 {
		t.Errorf("status after the upgrade: exit %d, want 2", st.Code)
	}
	if ch := st.Report.host(t, h.name).Driver.Change; !strings.Contains(ch, "host driver changed "+v1+" -> "+v2) {
		t.Errorf("host driver change in status: %q", ch)
	}
	c = st.Report.ct(t, id)
	if !c.RestartRequired || !anyContains(c.Reasons, "restart required: host driver changed "+v1+" -> "+v2) ||
		!hasKind(c, pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER) {
		t.Errorf("status after the upgrade: restart_required %v reasons %q details %+v, want the host driver change as %s",
			c.RestartRequired, c.Reasons, c.ReasonsDetail, pb.ReasonKindName(pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER))
	}
	t.Logf("status after the upgrade: exit %d, host: %q, %s: %s, reasons %q", st.Code, st.Report.host(t, h.name).Driver.Change, id, c.State, c.Reasons)
	plan := lab.f.ctl(t, "plan", fl)
	c = plan.Report.ct(t, id)
	if plan.Code != 2 || len(c.Changes) != 0 || !c.RestartRequired || !hasKind(c, pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED) {
		t.Errorf("plan after the upgrade: exit %d changes %+v restart %v reasons %q, want exit 2, a restart (%s) and no config change",
			plan.Code, c.Changes, c.RestartRequired, c.Reasons, pb.ReasonKindName(pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED))
	}
	if got := took("status and plan"); len(got) != 0 {
		t.Errorf("status and plan ran pct %q, want none", got)
	}

	ap = lab.f.ctl(t, "apply", fl, "--timeout", "90s")
	c = ap.Report.ct(t, id)
	if ap.Code != 0 || c.State != "ready" || !c.Restarted || c.Written {
		t.Fatalf("apply after the upgrade: exit %d state %s restarted %v written %v error %q reasons %q, want a restart and no write",
			ap.Code, c.State, c.Restarted, c.Written, c.Error, c.Reasons)
	}
	if c.Driver.Source != "host" || c.Driver.Userspace != v2 || c.Driver.Kernel != v2 {
		t.Errorf("driver: host after the upgrade's apply: %+v, want kernel and userspace %s from the host", c.Driver, v2)
	}
	if got := took("apply after the upgrade"); len(got) != 1 || !strings.HasPrefix(got[0], "reboot_"+id+"_") {
		t.Errorf("apply after the upgrade ran pct %q, want exactly one `pct reboot %s`", got, id)
	}
	if got := ct.InitPID(t); got == pid || got == 0 {
		t.Errorf("apply reported a restart but init pid %d -> %d", pid, got)
	}
	if got, _ := ct.Exec(t, "cat", hostdriver.Marker); got != "source=host\nversion="+v2+"\nfrom=/usr/lib/x86_64-linux-gnu\n" {
		t.Errorf("%s inside after the restart: %q, want the host's %s", hostdriver.Marker, got, v2)
	}
	if _, code := ct.Exec(t, "test", "-e", hostdriver.ContainerDir+"/lib/libnvidia-ml.so."+v1); code == 0 {
		t.Errorf("the old %s libnvidia-ml is still inside after the restart", v1)
	}
	pvelab.ParseStrict(t, ct.ConfPath())
	t.Logf("apply after the upgrade: exit %d in %v, %s restarted through pct reboot (init %d -> %d), ready with %s from the host",
		ap.Code, ap.Elapsed.Round(time.Millisecond), id, pid, ct.InitPID(t), v2)

	// Nothing more to do: no restart, no pct.
	pid = ct.InitPID(t)
	ap = lab.f.ctl(t, "apply", fl, "--timeout", "60s")
	if c := ap.Report.ct(t, id); ap.Code != 0 || c.Restarted || c.Written || c.State != "ready" {
		t.Errorf("second apply: exit %d restarted %v written %v state %s, want ready with nothing done", ap.Code, c.Restarted, c.Written, c.State)
	}
	if got := took("second apply"); len(got) != 0 {
		t.Errorf("an apply with nothing to do ran pct %q, want none", got)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("second apply restarted the container (init %d -> %d)", pid, got)
	}
}

// hasKind says whether one of c's reasons_detail is of kind k.
func hasKind(c reportCt, k pb.ReasonKind) bool {
	for _, d := range c.ReasonsDetail {
		if d.Kind == pb.ReasonKindName(k) {
			return true
		}
	}
	return false
}
