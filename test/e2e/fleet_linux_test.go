package e2e

import (
	"fmt"
	"testing"
	"time"

	"gpupass/internal/gpu"
)

// A fleet apply over 3 hosts with 3 containers each (running or stopped, one GPU, the
// other, both, none): every container ready in one command, a second plan has nothing to
// do. Then one host's agent is down and an address has nobody behind it: both are
// reported unreachable within the connect timeout while the other hosts answer.
func testFleet(t *testing.T, f *fabric) {
	hosts := []*host{
		f.addHost(t, hostOpts{}),
		f.addHost(t, hostOpts{Sim: gpu.SimOptions{GPUs: 4, SwapMinors: true}}),
		f.addHost(t, hostOpts{}),
	}
	assign := [][]string{{"0"}, {"1"}, {"0", "1"}}
	var entries []fleetCt
	var all []*container
	for hi, h := range hosts {
		for ci := 0; ci < 3; ci++ {
			ct := h.newContainer(t, fmt.Sprintf("f%d%d", hi+1, ci+1), ctOpts{})
			e := fleetCt{Host: h, Ct: ct, GPUs: assign[ci]}
			if ci == 1 {
				e.State = "running" // stopped: apply starts it
			} else {
				ct.Start(t) // running without GPUs: apply restarts it
			}
			entries = append(entries, e)
			all = append(all, ct)
		}
	}
	fl := f.writeFleet(t, "fleet", entries)
	plan := f.ctl(t, "plan", fl)
	if plan.Code != 2 {
		t.Errorf("plan: exit %d, want 2", plan.Code)
	}
	for _, h := range plan.Report.Hosts {
		if !h.Reachable || !h.Simulated || len(h.GPUs) == 0 {
			t.Errorf("plan: host %s reachable %v simulated %v gpus %d", h.Name, h.Reachable, h.Simulated, len(h.GPUs))
		}
	}
	ids := make([]string, len(all))
	for i, ct := range all {
		ids[i] = ct.name
	}
	ap := f.mustApplyReady(t, fl, ids...)
	t.Logf("fleet apply of %d containers on %d hosts: %v", len(all), len(hosts), ap.Elapsed)
	for i, e := range entries {
		c := ap.Report.ct(t, e.Ct.name)
		// The stopped ones (state: running) are started, the running ones restarted: a
		// start is not a restart.
		if wantStart := e.State == "running"; c.Started != wantStart || c.Restarted == wantStart {
			t.Errorf("%s: started %v restarted %v, want started %v restarted %v", c.ID, c.Started, c.Restarted, wantStart, !wantStart)
		}
		minors := []int{}
		for _, g := range e.GPUs {
			minor := int(g[0] - '0')
			if i/3 == 1 { // the host whose minors run in reverse bus order (4 GPUs)
				minor = []int{65, 64, 1, 0}[minor]
			}
			minors = append(minors, minor)
		}
		e.Ct.assertManaged(t, minors)
	}
	assertIdempotent(t, f, fl, all...)

	t.Run("UnreachableHost", func(t *testing.T) {
		down := hosts[2]
		down.Kill(t)
		fl2 := f.writeFleet(t, "fleet-down", entries, fleetHost{Name: "ghost", Address: subnet + "250:" + agentPort})
		st := f.ctl(t, "status", fl2, "--timeout", "3s")
		if st.Code != 1 {
			t.Errorf("status with unreachable hosts: exit %d, want 1", st.Code)
		}
		if st.Elapsed > 8*time.Second {
			t.Errorf("status with unreachable hosts took %v; want it bounded by the 3s connect timeout", st.Elapsed)
		}
		for _, name := range []string{down.name, "ghost"} {
			h := st.Report.host(t, name)
			if h.Reachable || h.Error == "" {
				t.Errorf("host %s: reachable %v error %q, want unreachable with a reason", name, h.Reachable, h.Error)
			}
			t.Logf("%s: %s (after %d ms)", name, h.Error, h.ElapsedMS)
		}
		for _, e := range entries {
			c := st.Report.ct(t, e.Ct.name)
			switch {
			case e.Host == down && c.State != "unreachable":
				t.Errorf("%s on the down host: state %s, want unreachable", c.ID, c.State)
			case e.Host != down && c.State != "ready":
				t.Errorf("%s on a live host: state %s %q, want ready", c.ID, c.State, c.Reasons)
			}
		}
		ap := f.ctl(t, "apply", fl2, "--connect-timeout", "3s", "--timeout", "20s")
		if ap.Code != 1 || ap.Elapsed > 15*time.Second {
			t.Errorf("apply with unreachable hosts: exit %d after %v, want 1 within the timeouts", ap.Code, ap.Elapsed)
		}
		for _, e := range entries {
			if c := ap.Report.ct(t, e.Ct.name); e.Host != down && (c.State != "ready" || c.Restarted) {
				t.Errorf("%s on a live host: state %s restarted %v, want ready and untouched", c.ID, c.State, c.Restarted)
			}
		}
	})
}
