package e2e

import (
	"strings"
	"testing"
)

// Row 1: the GPU lines are already in the config (written by someone else, here exactly
// what gpupass renders, appended with a plain write while the container runs) and the
// container runs without them. The bash orchestrator's "did I append anything?" gate
// never restarted it; gpupass judges the running container: plan says restart with the
// reason, apply restarts without writing, the guest reports ready; a second run changes
// and restarts nothing.
func testSeed(t *testing.T, f *fabric) { seedScenario(t, f, ctOpts{}) }

func seedScenario(t *testing.T, f *fabric, opts ctOpts) {
	h := f.addHost(t, hostOpts{})
	short := "seed"
	if opts.Systemd {
		short = "seedsd"
	}
	ct := h.newContainer(t, short, opts)
	fl := f.writeFleet(t, short, []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	ct.Start(t)

	first := f.ctl(t, "plan", fl)
	var adds []string
	for _, c := range first.Report.ct(t, ct.name).Changes {
		if c.Op == "add" {
			adds = append(adds, c.Line)
		}
	}
	if len(adds) == 0 {
		t.Fatalf("plan of a container without GPU lines adds nothing: %+v", first.Report.ct(t, ct.name))
	}
	ct.appendConfig(t, adds...) // someone else's `echo >>`, while the container runs
	before := ct.readConfig()
	pid := ct.InitPID(t)

	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, ct.name)
	if len(c.Changes) != 0 {
		t.Errorf("plan: lines already present, want no config change, got %+v", c.Changes)
	}
	if !c.RestartRequired || !anyContains(c.RestartReasons, "/dev/nvidia0") {
		t.Errorf("plan: want a restart because the running container lacks /dev/nvidia0; restart_required=%v reasons=%q", c.RestartRequired, c.RestartReasons)
	}
	if plan.Code != 2 {
		t.Errorf("plan: exit %d, want 2 (a restart is pending)", plan.Code)
	}

	ap := f.mustApplyReady(t, fl, ct.name)
	c = ap.Report.ct(t, ct.name)
	if !c.Restarted || c.Written {
		t.Errorf("apply: restarted=%v written=%v, want a restart and no write", c.Restarted, c.Written)
	}
	if got := ct.readConfig(); got != before {
		t.Errorf("apply changed a config that already had the lines:\n%s", got)
	}
	wantDevices(t, c, map[string]string{"/dev/nvidia0": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	if ct.InitPID(t) == pid {
		t.Errorf("apply reported a restart but init pid %d is unchanged", pid)
	}
	if !ct.devNodes(t)["/dev/nvidia0"] {
		t.Errorf("running container has no /dev/nvidia0 after apply")
	}
	if !c.Simulated {
		t.Errorf("a container on a simulated GPU host is not labelled simulated")
	}
	if opts.Systemd {
		ct.assertSystemdAgent(t)
	}

	assertIdempotent(t, f, fl, ct)
}

// assertIdempotent checks that plan then has nothing to do and apply restarts nothing.
func assertIdempotent(t *testing.T, f *fabric, fl string, cts ...*container) {
	t.Helper()
	pids := map[string]int{}
	configs := map[string]string{}
	for _, ct := range cts {
		pids[ct.name] = ct.InitPID(t)
		configs[ct.name] = ct.readConfig()
	}
	plan := f.ctl(t, "plan", fl)
	if plan.Code != 0 {
		t.Errorf("second plan: exit %d, want 0 (nothing to change)\n%s", plan.Code, plan.Stdout)
	}
	for _, ct := range cts {
		c := plan.Report.ct(t, ct.name)
		if len(c.Changes) != 0 || c.RestartRequired {
			t.Errorf("second plan for %s: changes %+v restart %v %q, want none", ct.name, c.Changes, c.RestartRequired, c.RestartReasons)
		}
	}
	ap := f.ctl(t, "apply", fl, "--timeout", "30s")
	if ap.Code != 0 {
		t.Errorf("second apply: exit %d, want 0\n%s%s", ap.Code, ap.Stdout, ap.Stderr)
	}
	for _, ct := range cts {
		c := ap.Report.ct(t, ct.name)
		if c.Restarted || c.Written || c.State != "ready" {
			t.Errorf("second apply for %s: restarted=%v written=%v state=%s, want ready with nothing done", ct.name, c.Restarted, c.Written, c.State)
		}
		if got := ct.InitPID(t); got != pids[ct.name] {
			t.Errorf("second apply restarted %s (init %d -> %d)", ct.name, pids[ct.name], got)
		}
		if got := ct.readConfig(); got != configs[ct.name] {
			t.Errorf("second apply changed the config of %s", ct.name)
		}
	}
}

// wantDevices compares the guest's device report with want (path -> status), exactly.
func wantDevices(t testing.TB, c reportCt, want map[string]string) {
	t.Helper()
	got := c.deviceStatus()
	if len(got) != len(want) {
		t.Errorf("%s: devices %v, want exactly %v", c.ID, got, want)
		return
	}
	for p, s := range want {
		if got[p] != s {
			t.Errorf("%s: device %s is %q, want %q (all: %v)", c.ID, p, got[p], s, got)
		}
	}
}

func anyContains(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
