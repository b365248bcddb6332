package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "gpupass/proto/gpupass/v1"
)

const adminLine = "# admin: keep this comment"

// bgCmd is a controller command running in the background.
type bgCmd struct {
	cmd  *exec.Cmd
	done chan struct{}
	res  cmdResult
}

// ctlBackground starts `gpupass <cmd> -f fleet -o json args...` in the controller's
// namespace without waiting for it.
func (f *fabric) ctlBackground(t testing.TB, cmd, fleet string, args ...string) *bgCmd {
	t.Helper()
	argv := inNetns(f.ctlNS(), append([]string{f.bin.Controller, cmd, "-f", fleet, "-o", "json"}, args...)...)
	b := &bgCmd{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan struct{})}
	var o, e bytes.Buffer
	b.cmd.Stdout, b.cmd.Stderr = &o, &e
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		err := b.cmd.Wait()
		b.res = cmdResult{Stdout: o.String(), Stderr: e.String()}
		if ee, ok := err.(*exec.ExitError); ok {
			b.res.Code = ee.ExitCode()
		}
		close(b.done)
	}()
	t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
	})
	return b
}

// wait waits for the command to end.
func (b *bgCmd) wait(t testing.TB, within time.Duration) cmdResult {
	t.Helper()
	select {
	case <-b.done:
		return b.res
	case <-time.After(within):
		t.Fatalf("e2e: background controller command still running after %v", within)
		return cmdResult{}
	}
}

// journalEntry is one line of the host agent's journal (its on-disk format).
type journalEntry struct {
	Op        string `json:"op"`
	Step      string `json:"step"`
	Container string `json:"container"`
	Outcome   string `json:"outcome"`
	Detail    string `json:"detail"`
}

func readJournal(path string) []journalEntry {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []journalEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var e journalEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// pendingOps lists the unfinished journal files of ct (the agent moves finished ones to
// journal/done).
func (ct *container) pendingOps() []string {
	files, _ := filepath.Glob(filepath.Join(ct.h.stateDir, "journal", "*.jsonl"))
	var out []string
	for _, p := range files {
		if es := readJournal(p); len(es) > 0 && es[0].Container == ct.name {
			out = append(out, p)
		}
	}
	return out
}

// doneOps lists the finished journals of ct, oldest first.
func (ct *container) doneOps() [][]journalEntry {
	files, _ := filepath.Glob(filepath.Join(ct.h.stateDir, "journal", "done", "*.jsonl"))
	var out [][]journalEntry
	for _, p := range files {
		if es := readJournal(p); len(es) > 0 && es[0].Container == ct.name {
			out = append(out, es)
		}
	}
	return out
}

// waitJournal waits (polling the state directory every millisecond: the test watches,
// the agent does not poll) until ct's running apply has journaled step.
func (ct *container) waitJournal(t testing.TB, step string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, p := range ct.pendingOps() {
			for _, e := range readJournal(p) {
				if e.Step == step {
					return
				}
			}
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("e2e: %s: no %q step in the journal within %v", ct.name, step, within)
}

// cutJournal keeps the lines of a journal file up to and including the first one of step.
func cutJournal(t testing.TB, path, step string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var kept []byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		kept = append(kept, line...)
		var e journalEntry
		if json.Unmarshal(bytes.TrimSpace(line), &e) == nil && e.Step == step {
			break
		}
	}
	if err := os.WriteFile(path, kept, 0o600); err != nil {
		t.Fatal(err)
	}
}

// An external edit between plan and apply: apply with the plan's digest refuses to write
// (conflict: plan again), nothing is lost; after a new plan it converges and keeps the
// edit. An edit made while apply waits for the config lock is caught by the digest
// re-check under the lock. The controller CLI sends no digests (see docs/e2e.md), so
// this runs against the host agent's API directly, over the same mutual TLS.
func testDigestMismatch(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	ct := h.newContainer(t, "digest", ctOpts{Config: []string{adminLine}})
	ct.Start(t)
	s := f.agentSession(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	spec := &pb.ContainerSpec{Id: ct.name, Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW}
	plan := func() string {
		var resp pb.PlanResponse
		if err := s.Call(ctx, "host.Plan", &pb.PlanRequest{Containers: []*pb.ContainerSpec{spec}}, &resp); err != nil {
			t.Fatalf("host.Plan: %v", err)
		}
		if p := resp.GetContainers()[0]; p.GetError() != "" || p.GetDigest() == "" {
			t.Fatalf("host.Plan: error %q digest %q", p.GetError(), p.GetDigest())
		}
		return resp.GetContainers()[0].GetDigest()
	}
	d1 := plan()
	ct.appendConfig(t, "lxc.environment = ADMIN_EDIT=1") // someone else, between plan and apply
	edited, pid := ct.readConfig(), ct.InitPID(t)
	resp, err := applyDirect(ctx, s, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: 20000, ExpectDigest: map[string]string{ct.name: d1}})
	if err != nil {
		t.Fatalf("host.Apply: %v", err)
	}
	r := resp.GetContainers()[0]
	if !strings.Contains(r.GetError(), "changed since the plan") || r.GetWritten() || r.GetRestarted() {
		t.Errorf("apply with a stale digest: error %q written %v restarted %v, want a conflict and nothing done", r.GetError(), r.GetWritten(), r.GetRestarted())
	}
	if ct.readConfig() != edited || ct.InitPID(t) != pid {
		t.Errorf("apply with a stale digest changed the config or restarted the container")
	}
	d2 := plan()
	if d2 == d1 {
		t.Fatalf("the digest did not change with the edit")
	}
	resp, err = applyDirect(ctx, s, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: 20000, ExpectDigest: map[string]string{ct.name: d2}})
	if err != nil {
		t.Fatalf("host.Apply: %v", err)
	}
	if r := resp.GetContainers()[0]; r.GetError() != "" || r.GetStatus().GetState() != "ready" || !r.GetWritten() {
		t.Errorf("apply after a new plan: error %q state %s written %v, want ready", r.GetError(), r.GetStatus().GetState(), r.GetWritten())
	}
	ct.assertManaged(t, []int{0}, adminLine, "lxc.environment = ADMIN_EDIT=1")

	// An edit while apply waits for the lock: the re-check under the lock refuses.
	ct2 := h.newContainer(t, "digest2", ctOpts{Config: []string{adminLine}})
	ct2.Start(t)
	spec2 := &pb.ContainerSpec{Id: ct2.name, Gpus: []string{"1"}, Style: pb.Style_STYLE_RAW}
	release := holdLock(t, filepath.Join(h.stateDir, "lxc", "locks", ct2.name+".lock"))
	type result struct {
		r   *pb.ApplyResponse
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := applyDirect(ctx, s, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec2}, TimeoutMs: 20000})
		ch <- result{r, err}
	}()
	ct2.waitJournal(t, "begin", 10*time.Second)
	ct2.appendConfig(t, "lxc.environment = EDIT_DURING_APPLY=1")
	edited2 := ct2.readConfig()
	release()
	res := <-ch
	if res.err != nil {
		t.Fatalf("host.Apply: %v", res.err)
	}
	r2 := res.r.GetContainers()[0]
	if r2.GetError() == "" || r2.GetWritten() || !strings.Contains(r2.GetError(), "plan again") {
		t.Errorf("apply racing an edit: error %q written %v, want a digest conflict and nothing written", r2.GetError(), r2.GetWritten())
	}
	if ct2.readConfig() != edited2 {
		t.Errorf("apply racing an edit overwrote it:\n%s", ct2.readConfig())
	}
	fl := f.writeFleet(t, "digest2", []fleetCt{{Host: h, Ct: ct2, GPUs: []string{"1"}}})
	f.mustApplyReady(t, fl, ct2.name)
	ct2.assertManaged(t, []int{1}, adminLine, "lxc.environment = EDIT_DURING_APPLY=1")

	// The same through the controller: gpupass plan -o json > plan.json, an edit, then
	// gpupass apply --plan plan.json refuses that container and leaves it as it is.
	ct3 := h.newContainer(t, "digest3", ctOpts{Config: []string{adminLine}})
	ct3.Start(t)
	fl3 := f.writeFleet(t, "digest3", []fleetCt{{Host: h, Ct: ct3, GPUs: []string{"0"}}})
	planned := f.ctl(t, "plan", fl3)
	if planned.Code != 2 {
		t.Fatalf("plan: exit %d, want 2 (changes pending)\n%s", planned.Code, planned.Stderr)
	}
	planFile := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(planFile, []byte(planned.Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	ct3.appendConfig(t, "lxc.environment = EDIT_AFTER_PLAN=1")
	edited3, pid3 := ct3.readConfig(), ct3.InitPID(t)
	stale := f.ctl(t, "apply", fl3, "--plan", planFile, "--timeout", "20s")
	if c := stale.Report.ct(t, ct3.name); stale.Code != 1 || !strings.Contains(c.Error, "changed since the plan") {
		t.Errorf("apply --plan after an edit: exit %d error %q, want 1 and a conflict naming the plan", stale.Code, c.Error)
	}
	if ct3.readConfig() != edited3 || ct3.InitPID(t) != pid3 {
		t.Errorf("apply --plan with a stale plan changed the config or restarted the container")
	}
	replanned := f.ctl(t, "plan", fl3)
	if err := os.WriteFile(planFile, []byte(replanned.Stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := f.ctl(t, "apply", fl3, "--plan", planFile, "--timeout", "30s"); r.Code != 0 {
		t.Errorf("apply --plan after a new plan: exit %d\n%s", r.Code, r.Stderr)
	}
	ct3.assertManaged(t, []int{0}, adminLine, "lxc.environment = EDIT_AFTER_PLAN=1")
}

// The host agent SIGKILLed at each step of an apply (journaled, config written, while
// stopping, stopped, started and waiting for the guest), then started again: it
// reconciles the interrupted apply before READY=1 (the journal says how it ended, the
// container runs, as it did before), and re-running the apply converges: ready, every
// managed line once, the admin's line kept.
func testAgentKilledAtEachStep(t *testing.T, f *fabric) {
	slow := func(secs string) string { return "sleep " + secs + "\nexec \"$REAL\" \"$@\"" }
	cases := []struct {
		name     string
		wrappers map[string]string
		lock     bool
		kill     func(t *testing.T, ct *container)
		// cutAfter drops the journal lines after this step once the agent is dead: the
		// agent writes the next step microseconds later, so a kill rarely lands in
		// between; the files on disk are then exactly what a crash there leaves.
		cutAfter string
		// slowGuest: the container's init waits a second before it starts the guest
		// agent, so the agent is surely still waiting for the guest when it is killed.
		slowGuest bool
	}{
		{name: "AfterBeginBeforeWrite", lock: true,
			kill: func(t *testing.T, ct *container) { ct.waitJournal(t, "begin", 10*time.Second) }},
		{name: "AfterConfigWritten", wrappers: map[string]string{"lxc-stop": slow("2")}, cutAfter: "written",
			kill: func(t *testing.T, ct *container) { ct.waitJournal(t, "written", 10*time.Second) }},
		{name: "WhileStopping", wrappers: map[string]string{"lxc-stop": slow("2")},
			kill: func(t *testing.T, ct *container) {
				ct.waitJournal(t, "restart", 10*time.Second)
				time.Sleep(300 * time.Millisecond)
			}},
		{name: "StoppedBeforeStart", wrappers: map[string]string{"lxc-start": slow("2")},
			kill: func(t *testing.T, ct *container) {
				ct.waitJournal(t, "restart", 10*time.Second)
				deadline := time.Now().Add(10 * time.Second)
				for ct.State(t) != "STOPPED" && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
			}},
		{name: "StartedWaitingForGuest", slowGuest: true,
			kill: func(t *testing.T, ct *container) {
				rec := filepath.Join(ct.h.stateDir, "lxc", "started", ct.name+".json")
				ct.waitJournal(t, "restart", 10*time.Second)
				deadline := time.Now().Add(10 * time.Second)
				for time.Now().Before(deadline) {
					if _, err := os.Stat(rec); err == nil {
						return
					}
					time.Sleep(time.Millisecond)
				}
				t.Fatalf("no start record %s", rec)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := f.addHost(t, hostOpts{Wrappers: tc.wrappers})
			opts := ctOpts{Config: []string{adminLine}}
			if tc.slowGuest {
				opts.Files = map[string]string{"/etc/gpupass-init.sh": strings.Replace(initScript, "/usr/local/bin/gpupass-guest-agent", "sleep 1; /usr/local/bin/gpupass-guest-agent", 1)}
			}
			ct := h.newContainer(t, "kill"+h.name, opts)
			ct.Start(t)
			fl := f.writeFleet(t, "kill-"+h.name, []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
			var release func()
			if tc.lock {
				release = holdLock(t, filepath.Join(h.stateDir, "lxc", "locks", ct.name+".lock"))
			}
			bg := f.ctlBackground(t, "apply", fl, "--timeout", "20s")
			tc.kill(t, ct)
			h.Kill(t)
			if release != nil {
				release()
			}
			res := bg.wait(t, 30*time.Second)
			t.Logf("the interrupted apply ended with exit %d", res.Code)
			pending := ct.pendingOps()
			if len(pending) != 1 {
				t.Fatalf("want exactly one interrupted journal, have %v", pending)
			}
			if tc.cutAfter != "" {
				cutJournal(t, pending[0], tc.cutAfter)
			}
			last := readJournal(pending[0])
			t.Logf("killed after journal step %q", last[len(last)-1].Step)

			for name := range tc.wrappers {
				h.unwrap(t, name)
			}
			h.Start(t) // reconciles before READY=1
			if p := ct.pendingOps(); len(p) != 0 {
				t.Errorf("after the restart, journals still unfinished: %v", p)
			}
			finished := readJournal(filepath.Join(filepath.Dir(pending[0]), "done", filepath.Base(pending[0])))
			if len(finished) == 0 {
				t.Fatalf("the interrupted journal %s was not finished", filepath.Base(pending[0]))
			}
			end := finished[len(finished)-1]
			if end.Step != "done" || (end.Outcome != "as-desired" && end.Outcome != "as-it-was") {
				t.Errorf("the reconciled journal ends with %+v, want done as-desired or as-it-was", end)
			}
			t.Logf("reconciled: %s (%s)", end.Outcome, end.Detail)
			if s := ct.State(t); s != "RUNNING" {
				t.Errorf("after reconciling, the container is %s; it was running before the apply", s)
			}
			f.mustApplyReady(t, fl, ct.name)
			ct.assertManaged(t, []int{0}, adminLine)
		})
	}
}

// The controller SIGKILLed mid-apply (while the host restarts the container): the host
// agent finishes or rolls back on its own, and re-running the apply converges.
func testControllerKilled(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{Wrappers: map[string]string{"lxc-start": "sleep 1.5\nexec \"$REAL\" \"$@\""}})
	ct := h.newContainer(t, "ctlkill", ctOpts{Config: []string{adminLine}})
	ct.Start(t)
	fl := f.writeFleet(t, "ctlkill", []fleetCt{{Host: h, Ct: ct, GPUs: []string{"1"}}})
	bg := f.ctlBackground(t, "apply", fl, "--timeout", "20s")
	ct.waitJournal(t, "restart", 10*time.Second)
	if err := bg.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	bg.wait(t, 10*time.Second)
	h.unwrap(t, "lxc-start")
	f.mustApplyReady(t, fl, ct.name)
	ct.assertManaged(t, []int{1}, adminLine)
	deadline := time.Now().Add(20 * time.Second)
	for len(ct.pendingOps()) > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if p := ct.pendingOps(); len(p) != 0 {
		t.Errorf("journals never finished: %v", p)
	}
	for _, op := range ct.doneOps() {
		end := op[len(op)-1]
		t.Logf("journal %s: %s %s", end.Op, end.Outcome, end.Detail)
		if end.Step != "done" || end.Outcome == "failed" {
			t.Errorf("journal %s ends %+v", end.Op, end)
		}
	}
	if s := ct.State(t); s != "RUNNING" {
		t.Errorf("container is %s after the re-run", s)
	}
	assertIdempotent(t, f, fl, ct)
}
