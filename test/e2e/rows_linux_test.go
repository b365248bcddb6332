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
)

// confApplyLXC renders gpupass's own lines into ct's config with the conf tool (another
// writer than the agent), for scenarios that start from "the lines are already there".
func (ct *container) confApplyLXC(t testing.TB, gpus string) {
	t.Helper()
	res, err := run(context.Background(), 30*time.Second, nil, ct.h.f.bin.HostAgent, "conf", "apply",
		"--conf", ct.c.ConfigPath(), "--gpus", gpus, "--host-root", ct.h.root,
		"--guest-socket-dir", filepath.Join(ct.h.guestDir, ct.name), "--state-dir", filepath.Join(ct.h.dir, "conf-state"))
	if err != nil || res.Code != 0 {
		t.Fatalf("e2e: conf apply %s: %v exit %d: %s", ct.name, err, res.Code, res.Stderr)
	}
}

// replaceConfig applies string replacements to ct's config, each of which must match.
func (ct *container) replaceConfig(t testing.TB, pairs ...string) {
	t.Helper()
	cfg := ct.readConfig()
	for i := 0; i+1 < len(pairs); i += 2 {
		if !strings.Contains(cfg, pairs[i]) {
			t.Fatalf("e2e: %s config has no %q:\n%s", ct.name, pairs[i], cfg)
		}
		cfg = strings.ReplaceAll(cfg, pairs[i], pairs[i+1])
	}
	ct.writeConfig(t, cfg)
}

// Row 3 on a real container: two writers left duplicate and conflicting GPU lines
// (every line twice, an "optional" variant, a major wildcard); apply replaces them with
// one rendered set and the container becomes ready.
func testDuplicateRules(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "dups", ctOpts{})
	ct.confApplyLXC(t, "0")
	rendered := ct.rendered(t, 0)
	ct.appendConfig(t, rendered...) // the second writer: every line again
	ct.appendConfig(t,
		"lxc.cgroup2.devices.allow = c 7:* rwm",
		fmt.Sprintf("lxc.mount.entry = %s dev/nvidia0 none bind,optional,create=file", filepath.Join(h.root, "dev/nvidia0")),
		"lxc.mount.entry = /dev/nvidia0 dev/nvidia0 none bind,optional,create=file 0 0",
		"# admin: keep this comment")
	ct.ensureGuestDir(t)
	ct.Start(t)
	fl := f.writeFleet(t, "dups", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	f.mustApplyReady(t, fl, ct.name)
	ct.assertManaged(t, []int{0}, "# admin: keep this comment")
	assertIdempotent(t, f, fl, ct)
}

// Row 4 on real containers: shrinking 0,1 to 1 removes nvidia0 from the config and,
// through the restart the plan asks for, from the running container; a clone that
// inherited the parent's GPU lines is given none and starts without any NVIDIA node.
func testShrinkAndClone(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	parent := h.newContainer(t, "parent", ctOpts{})
	fl := f.writeFleet(t, "shrink1", []fleetCt{{Host: h, Ct: parent, GPUs: []string{"0", "1"}, State: "running"}})
	r := f.mustApplyReady(t, fl, parent.name)
	if pc := r.Report.ct(t, parent.name); !pc.Started || pc.Restarted {
		t.Errorf("a stopped container with state: running: started %v restarted %v, want started (a start is not a restart)", pc.Started, pc.Restarted)
	}
	if n := parent.devNodes(t); !n["/dev/nvidia0"] || !n["/dev/nvidia1"] {
		t.Fatalf("parent with GPUs 0,1 lacks a node: %v", n)
	}
	clone := parent.clone(t, "clone") // inherits GPUs 0,1 (and the parent's guest mount)

	fl2 := f.writeFleet(t, "shrink2", []fleetCt{
		{Host: h, Ct: parent, GPUs: []string{"1"}},
		{Host: h, Ct: clone, GPUs: []string{}, State: "running"},
	})
	plan := f.ctl(t, "plan", fl2)
	pc := plan.Report.ct(t, parent.name)
	if !pc.RestartRequired || !anyContains(pc.RestartReasons, "/dev/nvidia0") {
		t.Errorf("plan after shrinking: restart %v %q, want a restart because the running container still has /dev/nvidia0", pc.RestartRequired, pc.RestartReasons)
	}
	ap := f.ctl(t, "apply", fl2, "--timeout", "30s")
	pc = ap.Report.ct(t, parent.name)
	if pc.State != "ready" || !pc.Restarted {
		t.Fatalf("apply after shrinking: state %s restarted %v reasons %q", pc.State, pc.Restarted, pc.Reasons)
	}
	wantDevices(t, pc, map[string]string{"/dev/nvidia1": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	if parent.devNodes(t)["/dev/nvidia0"] {
		t.Errorf("the running parent still has /dev/nvidia0 after shrinking to GPU 1")
	}
	parent.assertManaged(t, []int{1})

	cc := ap.Report.ct(t, clone.name)
	if cc.State != "ready" {
		t.Errorf("clone with gpus []: state %s reasons %q, want ready", cc.State, cc.Reasons)
	}
	for n := range clone.devNodes(t) {
		if strings.HasPrefix(n, "/dev/nvidia") {
			t.Errorf("clone given no GPUs runs with %s", n)
		}
	}
	clone.assertManaged(t, nil)
	if ap.Code != 0 {
		t.Errorf("apply: exit %d, want 0", ap.Code)
	}
}

// Row 5 on a real container: the config passes the uvm nodes with a stale major (243,
// from a guide); the running container's guest cannot open them. Plan replaces the
// rules with the major /proc/devices gives and asks for a restart; apply makes it ready.
func testStaleMajor(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "stale", ctOpts{})
	ct.confApplyLXC(t, "0")
	_, uvm := h.hostMajors(t)
	_, umin, _ := h.hostNode(t, gpu.PathUVM)
	_, tmin, _ := h.hostNode(t, gpu.PathUVMTools)
	ct.replaceConfig(t,
		fmt.Sprintf("c %d:%d rwm", uvm, umin), "c 243:0 rwm",
		fmt.Sprintf("c %d:%d rwm", uvm, tmin), "c 243:1 rwm")
	ct.ensureGuestDir(t)
	ct.Start(t)
	fl := f.writeFleet(t, "stale", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, ct.name)
	removed, added := false, false
	for _, ch := range c.Changes {
		removed = removed || (ch.Op == "remove" && strings.Contains(ch.Line, "c 243:0 rwm"))
		added = added || (ch.Op == "add" && strings.Contains(ch.Line, fmt.Sprintf("c %d:%d rwm", uvm, umin)))
	}
	if !removed || !added || !c.RestartRequired {
		t.Errorf("plan: want 243 replaced by %d and a restart; changes %+v restart %v %q", uvm, c.Changes, c.RestartRequired, c.RestartReasons)
	}
	f.mustApplyReady(t, fl, ct.name)
	ct.assertManaged(t, []int{0})
}

// Row 6: host preparation creates the uvm nodes that only appear when something
// initialises the driver, from the majors in /proc/devices, before READY=1; the
// container gets them as required (never optional) char devices with those numbers.
func testHostPrepCreatesUVM(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{Sim: gpu.SimOptions{RealMajors: true, SkipNodes: []string{gpu.PathUVM, gpu.PathUVMTools}}})
	_, uvm := h.hostMajors(t)
	for i, p := range []string{gpu.PathUVM, gpu.PathUVMTools} {
		maj, min, ok := h.hostNode(t, p)
		if !ok || maj != uvm || min != uint32(i) {
			t.Errorf("after the agent started, host %s is %d:%d (exists %v), want %d:%d", p, maj, min, ok, uvm, i)
		}
	}
	ct := h.newContainer(t, "prep", ctOpts{})
	fl := f.writeFleet(t, "prep", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}, State: "running"}})
	ap := f.ctl(t, "apply", fl, "--timeout", "20s")
	c := ap.Report.ct(t, ct.name)
	// Real majors on a machine without the driver: the nodes exist inside as the right
	// char devices and open() says "no such device": no-driver, never missing or
	// not-char-device.
	wantDevices(t, c, map[string]string{"/dev/nvidia0": "no-driver", "/dev/nvidiactl": "no-driver", "/dev/nvidia-uvm": "no-driver", "/dev/nvidia-uvm-tools": "no-driver"})
	ct.assertManaged(t, []int{0})
	if ap.Code != 2 {
		t.Errorf("apply: exit %d, want 2 (not ready: no driver)", ap.Code)
	}
}

// Row 7: a container whose libnvidia-ml differs from the host's kernel module is
// not-ready with the version mismatch as the reason (nothing rolled back: the
// passthrough itself works); a matching one is ready; one without the library is ready
// with a warning.
func testVersionMismatch(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{Sim: gpu.SimOptions{DriverVersion: "580.159.04"}})
	lib := "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so."
	bad := h.newContainer(t, "nvml550", ctOpts{Files: map[string]string{lib + "550.54.14": "not a real library\n"}})
	good := h.newContainer(t, "nvml580", ctOpts{Files: map[string]string{lib + "580.159.04": "not a real library\n"}})
	none := h.newContainer(t, "nvmlnone", ctOpts{})
	var cts []fleetCt
	for _, c := range []*container{bad, good, none} {
		cts = append(cts, fleetCt{Host: h, Ct: c, GPUs: []string{"0"}, State: "running"})
	}
	fl := f.writeFleet(t, "nvml", cts)
	ap := f.ctl(t, "apply", fl, "--timeout", "20s")
	if ap.Code != 2 {
		t.Errorf("apply: exit %d, want 2 (one container not ready)", ap.Code)
	}
	b := ap.Report.ct(t, bad.name)
	if b.State != "not-ready" || !anyContains(b.Reasons, "version mismatch") || !anyContains(b.Reasons, "550.54.14") || !anyContains(b.Reasons, "580.159.04") {
		t.Errorf("mismatch: state %s reasons %q, want not-ready naming the version mismatch 580.159.04 vs 550.54.14", b.State, b.Reasons)
	}
	if b.RolledBack || b.Driver.Userspace != "550.54.14" {
		t.Errorf("mismatch: rolled_back %v userspace %q, want no rollback and userspace 550.54.14", b.RolledBack, b.Driver.Userspace)
	}
	wantDevices(t, b, map[string]string{"/dev/nvidia0": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	g := ap.Report.ct(t, good.name)
	if g.State != "ready" || g.Driver.Userspace != "580.159.04" || g.Driver.Kernel != "580.159.04" {
		t.Errorf("match: state %s driver %+v reasons %q, want ready with 580.159.04 on both sides", g.State, g.Driver, g.Reasons)
	}
	n := ap.Report.ct(t, none.name)
	if n.State != "ready" || !anyContains(n.Warnings, "not installed") {
		t.Errorf("no library: state %s warnings %q, want ready with a warning", n.State, n.Warnings)
	}
}

// Row 8: a container given only GPU 1 becomes ready: the wait checks exactly the
// expected set (nvidia1, nvidiactl, nvidia-uvm, nvidia-uvm-tools), not /dev/nvidia0.
func testGPU1OnlyReady(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "gpu1", ctOpts{})
	fl := f.writeFleet(t, "gpu1", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"1"}, State: "running"}})
	ap := f.mustApplyReady(t, fl, ct.name)
	wantDevices(t, ap.Report.ct(t, ct.name), map[string]string{"/dev/nvidia1": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	if ct.devNodes(t)["/dev/nvidia0"] {
		t.Errorf("container given GPU 1 only has /dev/nvidia0")
	}
	ct.assertManaged(t, []int{1})
}

// Isolation: a container assigned GPU 1 only cannot open GPU 0's node even when it
// makes one itself: the device cgroup denies it (EPERM), while GPU 1 opens.
func testIsolationGPU0Denied(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "iso", ctOpts{})
	fl := f.writeFleet(t, "iso", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"1"}, State: "running"}})
	f.mustApplyReady(t, fl, ct.name)
	nv, _ := h.hostMajors(t)
	if out, code := ct.Attach(t, "sh", "-c", "exec 3<>/dev/nvidia1"); code != 0 {
		t.Errorf("open /dev/nvidia1 (assigned) inside: exit %d: %s", code, out)
	}
	out, code := ct.Attach(t, "sh", "-c", fmt.Sprintf("mknod /tmp/gpu0 c %d 0 && exec 3<>/tmp/gpu0", nv))
	if code == 0 || !strings.Contains(strings.ToLower(out), "not permitted") {
		t.Errorf("open of a self-made GPU 0 node (c %d:0) inside: exit %d %q, want EPERM from the device cgroup", nv, code, out)
	}
	if out, code := ct.Attach(t, "sh", "-c", "test -e /dev/nvidia0"); code == 0 {
		t.Errorf("/dev/nvidia0 exists inside a GPU-1-only container: %s", out)
	}
}

// Row 9: not ready is a hard failure with a named reason: apply exits 2 and names it. A
// host with NVIDIA's real majors but no driver gives no-driver for every node; a host
// whose driver is not loaded at all is refused with that reason and nothing is written.
func testNotReadyHardFailure(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{Sim: gpu.SimOptions{RealMajors: true}})
	ct := h.newContainer(t, "nodrv", ctOpts{})
	fl := f.writeFleet(t, "nodrv", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}, State: "running"}})
	ap := f.ctl(t, "apply", fl, "--timeout", "10s")
	c := ap.Report.ct(t, ct.name)
	if ap.Code != 2 || c.State != "not-ready" || !anyContains(c.Reasons, "no-driver") {
		t.Errorf("apply on a host without a driver behind 195: exit %d state %s reasons %q, want exit 2, not-ready, no-driver", ap.Code, c.State, c.Reasons)
	}
	st := f.ctl(t, "status", fl)
	if st.Code != 2 || st.Report.ct(t, ct.name).State != "not-ready" {
		t.Errorf("status: exit %d state %s, want 2 and not-ready", st.Code, st.Report.ct(t, ct.name).State)
	}

	h2 := f.addHost(t, hostOpts{Sim: gpu.SimOptions{NoDriver: true}})
	ct2 := h2.newContainer(t, "nomod", ctOpts{})
	before := ct2.readConfig()
	fl2 := f.writeFleet(t, "nomod", []fleetCt{{Host: h2, Ct: ct2, GPUs: []string{"0"}, State: "running"}})
	ap2 := f.ctl(t, "apply", fl2, "--timeout", "10s")
	c2 := ap2.Report.ct(t, ct2.name)
	if ap2.Code == 0 || c2.State == "ready" || !strings.Contains(strings.ToLower(c2.reasons()+" "+c2.Error), "driver") {
		t.Errorf("apply on a host whose driver is not loaded: exit %d state %s reasons %q error %q, want a failure naming the driver", ap2.Code, c2.State, c2.Reasons, c2.Error)
	}
	if ct2.readConfig() != before {
		t.Errorf("apply on a host without a driver wrote the config:\n%s", ct2.readConfig())
	}
}

// Row 10: GPU index 1 on a host whose minors run in reverse bus order is minor 64; by
// index or by UUID the container gets /dev/nvidia64 (7:64 here), never /dev/nvidia1.
func testIndexIsNotMinor(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{Sim: gpu.SimOptions{GPUs: 4, SwapMinors: true}})
	byIndex := h.newContainer(t, "idx1", ctOpts{})
	byUUID := h.newContainer(t, "uuid1", ctOpts{})
	fl := f.writeFleet(t, "idx", []fleetCt{
		{Host: h, Ct: byIndex, GPUs: []string{"1"}, State: "running"},
		{Host: h, Ct: byUUID, GPUs: []string{"GPU-5eed0000-0000-4000-8000-000000000002"}, State: "running"},
	})
	ap := f.mustApplyReady(t, fl, byIndex.name, byUUID.name)
	for _, ct := range []*container{byIndex, byUUID} {
		wantDevices(t, ap.Report.ct(t, ct.name), map[string]string{"/dev/nvidia64": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
		if n := ct.devNodes(t); n["/dev/nvidia1"] || !n["/dev/nvidia64"] {
			t.Errorf("%s: GPU index 1 must be /dev/nvidia64, not /dev/nvidia1: %v", ct.name, n)
		}
		ct.assertManaged(t, []int{64})
	}
}

// Row 11 on the agent: while another editor holds the config lock, apply fails with an
// error naming the lock; the config and the running container are untouched; once the
// lock is free, apply converges.
func testLockHeld(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "lock", ctOpts{Config: []string{"# admin: keep this comment"}})
	ct.Start(t)
	before, pid := ct.readConfig(), ct.InitPID(t)
	release := holdLock(t, filepath.Join(h.stateDir, "lxc", "locks", ct.name+".lock"))
	fl := f.writeFleet(t, "lock", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	ap := f.ctl(t, "apply", fl, "--timeout", "20s")
	c := ap.Report.ct(t, ct.name)
	if ap.Code == 0 || c.State == "ready" || !strings.Contains(strings.ToLower(c.reasons()+" "+c.Error), "lock") {
		t.Errorf("apply with the lock held: exit %d state %s reasons %q error %q, want a failure naming the lock", ap.Code, c.State, c.Reasons, c.Error)
	}
	if ct.readConfig() != before || ct.InitPID(t) != pid {
		t.Errorf("apply with the lock held changed the config or restarted the container")
	}
	release()
	f.mustApplyReady(t, fl, ct.name)
	ct.assertManaged(t, []int{0}, "# admin: keep this comment")
}

// Row 12: no exec, no polling. The agent never runs lxc-attach (a wrapper on its PATH
// would record it); apply reaches ready within seconds of the restart because the guest
// pushes; with a 30 s heartbeat, a change inside the container (the node unmounted)
// reaches status within a second or two: a push on change, not a poll.
func testPushNotPoll(t *testing.T, f *fabric) {
	execLog := filepath.Join(f.dir, "row12-attach.log")
	h := f.addHost(t, hostOpts{
		Heartbeat: 30 * time.Second,
		Wrappers:  map[string]string{"lxc-attach": fmt.Sprintf("echo \"$@\" >> %s\nexec \"$REAL\" \"$@\"", execLog)},
	})
	ct := h.newContainer(t, "push", ctOpts{})
	ct.Start(t)
	fl := f.writeFleet(t, "push", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	ap := f.mustApplyReady(t, fl, ct.name)
	if !ap.Report.ct(t, ct.name).Restarted {
		t.Fatalf("apply did not restart the container")
	}
	if ap.Elapsed > 5*time.Second {
		t.Errorf("apply with a restart took %v to readiness; the push should make it a second or so (the bash waited up to 30 s polling)", ap.Elapsed)
	}
	t.Logf("apply (write, restart, guest push, ready) took %v", ap.Elapsed)

	st := f.ctl(t, "status", fl)
	if st.Elapsed > 2*time.Second || st.Report.ct(t, ct.name).State != "ready" {
		t.Errorf("status: %v, state %s", st.Elapsed, st.Report.ct(t, ct.name).State)
	}
	if out, code := ct.Attach(t, "umount", "/dev/nvidia0"); code != 0 {
		t.Fatalf("umount /dev/nvidia0 inside: %s", out)
	}
	changed := time.Now()
	c := f.waitStatus(t, fl, ct.name, 5*time.Second, func(c reportCt) bool { return c.deviceStatus()["/dev/nvidia0"] != "ok" })
	took := time.Since(changed)
	if took > 2500*time.Millisecond {
		t.Errorf("the change reached status after %v with a 30 s heartbeat; want a push on change", took)
	}
	t.Logf("change inside the container -> status %q after %v", c.deviceStatus()["/dev/nvidia0"], took)
	if c.State != "not-ready" {
		t.Errorf("after losing /dev/nvidia0: state %s, want not-ready", c.State)
	}
	if b, err := os.ReadFile(execLog); err == nil {
		t.Errorf("the host agent ran lxc-attach: %s", b)
	}
}
