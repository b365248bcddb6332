package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/pvelab"
)

// pveLab is gpupass on the PVE lab (test/pvelab, docs/e2e.md "The PVE lab"): the real host
// agent with `runtime: pct`, the REAL pct, pmxcfs and PVE's hooks, a
// simulated GPU host laid over the machine (pvelab.SimulateGPUHost), and containers made by
// `pct create` from a busybox template with the guest agent baked in and started by init.
type pveLab struct {
	f    *fabric
	h    *host
	tpl  string
	root string // the agent's host_root (pvelab.GPUHost.Root)
}

// TestPVELab runs the PVE lab scenarios one after the other (they share the simulated GPU
// host, one per machine at a time).
func TestPVELab(t *testing.T) {
	pvelab.Require(t)
	f := newFabric(t)
	f.ctlHere = true
	sim := pvelab.SimulateGPUHost(t, gpu.SimOptions{GPUs: 2})
	lab := &pveLab{f: f, root: sim.Root}
	lab.tpl = pvelab.Template(t, pvelab.TemplateSpec{
		Name:  "guest",
		Files: map[string]pvelab.File{strings.TrimPrefix(guestAgentPath, "/"): {Source: f.bin.GuestAgent, Mode: 0o755}},
		Inittab: []string{"::respawn:/bin/sh -c 'exec " + guestAgentPath +
			" --log-level debug >>/var/log/gpupass-guest-agent.log 2>&1'"},
	})
	lab.h = lab.startHost(t)
	for _, s := range []struct {
		name string
		fn   func(t *testing.T, lab *pveLab)
	}{
		{"Seed_Unprivileged_Raw", func(t *testing.T, lab *pveLab) { testPVESeed(t, lab, false, "raw") }},
		{"Seed_Privileged_Dev", func(t *testing.T, lab *pveLab) { testPVESeed(t, lab, true, "dev") }},
		{"Seed_Systemd_Unprivileged_Raw", testPVESeedSystemd},
		{"Locked_NeverWrittenOrRestarted", testPVELocked},
		{"Pending_ListedAndRefused", testPVEPending},
		{"PendingLXCLine_Refused", testPVEPendingLXC},
		{"HA_WrittenRestartLeftToHA", testPVEHA},
		{"StaleUVMMajor_Corrected", testPVEStaleMajor},
		{"AgentKilledMidApply_Reconciles", testPVEAgentKilled},
		{"SetTagsRunning_NoRestart", testPVETags},
		{"PctCalls_NoneForStatus_OnePerStateChange", testPVEPctCalls},
		{"DriverHost_UpgradeRestartsThroughPct", testPVEDriverHostUpgrade},
	} {
		t.Run(s.name, func(t *testing.T) { s.fn(t, lab) })
	}
}

// startHost starts a host agent with runtime pct in the test's own network and mount
// namespaces (pct talks to pmxcfs and lxc-monitord over abstract unix sockets, which are per
// network namespace), listening on a free port of 127.0.0.1.
func (lab *pveLab) startHost(t *testing.T) *host {
	t.Helper()
	f := lab.f
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	// root is the simulated GPU host's root (host_root), so host helpers such as
	// setHostDriver change the tree this agent reads.
	h := &host{f: f, t: t, name: "pve-lab", ip: "127.0.0.1", port: port, root: lab.root}
	h.dir = filepath.Join(f.dir, h.name)
	h.stateDir = filepath.Join(h.dir, "state")
	h.guestDir = filepath.Join(h.dir, "guests")
	h.config = filepath.Join(h.dir, "host-agent.yaml")
	h.log = filepath.Join(h.dir, "agent.log")
	h.wrapDir = filepath.Join(h.dir, "wrap")
	for _, d := range []string{h.dir, h.wrapDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.gpupass(t, "pki", "issue", "--dir", f.pki, "--name", h.name, "--ip", h.ip)
	cfg := fmt.Sprintf(`version: 1
listen: "%s"
runtime: pct
tls: {ca: %s, cert: %s, key: %s}
state_dir: %s
guest_socket_dir: %s
host_root: %s
heartbeat: 2s
guest_stale_after: 7s
simulated: true
`, h.addr(), filepath.Join(f.pki, "ca.crt"), filepath.Join(f.pki, h.name+".crt"), filepath.Join(f.pki, h.name+".key"),
		h.stateDir, h.guestDir, lab.root)
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stopAgent(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("e2e: pve-lab agent log (end):\n%s", h.logTail())
		}
	})
	h.Start(t)
	return h
}

// labCt is one entry of a lab fleet.
type labCt struct {
	ct     *pvelab.CT
	gpus   []string
	style  string // raw | dev
	state  string
	driver string // fleet.yaml driver ("" the default, own)
}

// writeFleet writes a fleet.yaml for the lab host.
func (lab *pveLab) writeFleet(t *testing.T, name string, cts ...labCt) string {
	t.Helper()
	f := lab.f
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ntls: {ca: %s, cert: %s, key: %s}\nhosts:\n  - {name: %s, address: \"%s\"}\ncontainers:\n",
		filepath.Join(f.pki, "ca.crt"), filepath.Join(f.pki, "controller.crt"), filepath.Join(f.pki, "controller.key"),
		lab.h.name, lab.h.addr())
	for _, c := range cts {
		gpus := make([]string, len(c.gpus))
		for i, g := range c.gpus {
			gpus[i] = fmt.Sprintf("%q", g)
		}
		fmt.Fprintf(&b, "  - {host: %s, id: \"%d\", gpus: [%s], style: %s", lab.h.name, c.ct.ID, strings.Join(gpus, ", "), c.style)
		if c.state != "" {
			fmt.Fprintf(&b, ", state: %s", c.state)
		}
		if c.driver != "" {
			fmt.Fprintf(&b, ", driver: %s", c.driver)
		}
		b.WriteString("}\n")
	}
	p := filepath.Join(f.dir, name+".fleet.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// newCT makes a lab container from the guest template; on failure its guest log is shown.
func (lab *pveLab) newCT(t *testing.T, privileged bool) *pvelab.CT {
	t.Helper()
	return lab.newCTFrom(t, privileged, lab.tpl)
}

// newCTFrom is newCT from another template.
func (lab *pveLab) newCTFrom(t *testing.T, privileged bool, tpl string) *pvelab.CT {
	t.Helper()
	ct := pvelab.NewCT(t, pvelab.Spec{Privileged: privileged, Template: tpl})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("e2e: CT %d config:\n%s\nrendered:\n%s", ct.ID, readOrErr(ct.ConfPath()), readOrErr(ct.RenderedPath()))
			if pid := ct.InitPID(t); pid > 0 {
				t.Logf("e2e: CT %d guest agent log (end):\n%s", ct.ID, tail(readOrErr(fmt.Sprintf("/proc/%d/root/var/log/gpupass-guest-agent.log", pid)), 3000))
			}
		}
	})
	return ct
}

func readOrErr(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// The seed incident on Proxmox, with the real pct (FACTS.md row 1): the GPU lines are
// already in /etc/pve/lxc/<id>.conf (appended while the container ran), the container was
// started before they were there and its hostname (ai-<id>) differs from its id. Plan says
// restart (exit 2) with the reason; apply restarts it through pct without writing; the guest
// baked into the template reports ready; PVE's own parser accepts the config; a re-run plans
// nothing and restarts nothing.
func testPVESeed(t *testing.T, lab *pveLab, privileged bool, style string) {
	testPVESeedFrom(t, lab, lab.newCT(t, privileged), style)
}

func testPVESeedFrom(t *testing.T, lab *pveLab, ct *pvelab.CT, style string) {
	f := lab.f
	id := fmt.Sprint(ct.ID)
	fl := lab.writeFleet(t, "seed-"+id, labCt{ct: ct, gpus: []string{"0"}, style: style})
	ct.Start(t)

	first := f.ctl(t, "plan", fl)
	var adds []string
	for _, c := range first.Report.ct(t, id).Changes {
		if c.Op == "add" {
			adds = append(adds, c.Line)
		}
	}
	if len(adds) == 0 {
		t.Fatalf("plan of a container without GPU lines adds nothing: %+v\n%s", first.Report.ct(t, id), first.Stderr)
	}
	ct.AppendConf(t, adds...) // someone else's edit, while the container runs
	before := pvelab.ParseStrict(t, ct.ConfPath())
	pid := ct.InitPID(t)

	plan := f.ctl(t, "plan", fl)
	c := plan.Report.ct(t, id)
	if len(c.Changes) != 0 {
		t.Errorf("plan: lines already present, want no config change, got %+v", c.Changes)
	}
	if !c.RestartRequired || !anyContains(c.RestartReasons, "/dev/nvidia") {
		t.Errorf("plan: want a restart because the running container lacks the GPU; restart_required=%v reasons=%q", c.RestartRequired, c.RestartReasons)
	}
	if plan.Code != 2 {
		t.Errorf("plan: exit %d, want 2 (a restart is pending)", plan.Code)
	}
	t.Logf("plan: exit %d, restart reasons %q", plan.Code, c.RestartReasons)

	ap := f.ctl(t, "apply", fl, "--timeout", "90s")
	c = ap.Report.ct(t, id)
	if ap.Code != 0 || c.State != "ready" {
		t.Fatalf("apply: exit %d, %s state %s reasons %q error %q\nstderr: %s", ap.Code, id, c.State, c.Reasons, c.Error, ap.Stderr)
	}
	if !c.Restarted || c.Written {
		t.Errorf("apply: restarted=%v written=%v, want a restart and no write", c.Restarted, c.Written)
	}
	// pct rewrites the file at start (keys sorted, lxc.* last): compare what PVE parses.
	after := pvelab.ParseStrict(t, ct.ConfPath())
	delete(before, "digest")
	delete(after, "digest")
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("apply changed a config that already had the lines (-before +after):\n%s", diff)
	}
	if got := ct.InitPID(t); got == pid || got == 0 {
		t.Errorf("apply reported a restart but init pid %d -> %d", pid, got)
	}
	wantDevices(t, c, map[string]string{"/dev/nvidia0": "ok", "/dev/nvidiactl": "ok", "/dev/nvidia-uvm": "ok", "/dev/nvidia-uvm-tools": "ok"})
	if !c.Simulated {
		t.Errorf("a container on a simulated GPU host is not labelled simulated")
	}
	t.Logf("apply: exit %d in %v, %s ready after a restart through pct", ap.Code, ap.Elapsed.Round(time.Millisecond), id)

	// A re-run: nothing to change, nothing restarted.
	pid = ct.InitPID(t)
	again := f.ctl(t, "plan", fl)
	if c := again.Report.ct(t, id); again.Code != 0 || len(c.Changes) != 0 || c.RestartRequired {
		t.Errorf("second plan: exit %d changes %+v restart %v %q, want nothing", again.Code, c.Changes, c.RestartRequired, c.RestartReasons)
	}
	ap2 := f.ctl(t, "apply", fl, "--timeout", "60s")
	if c := ap2.Report.ct(t, id); ap2.Code != 0 || c.Restarted || c.Written || c.State != "ready" {
		t.Errorf("second apply: exit %d restarted=%v written=%v state=%s, want ready with nothing done", ap2.Code, c.Restarted, c.Written, c.State)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("second apply restarted the container (init %d -> %d)", pid, got)
	}
}
