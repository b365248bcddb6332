package controller

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/controller/agenttest"
)

func TestWatchStreamsChangesFromAllHosts(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion})
	b := e.host(t, agenttest.New("pve2"))
	b.Add(agenttest.Container{ID: "950", GPUs: []string{"1"}, Guest: false})
	e.deadHost("pve3", agenttest.Refused(t))
	e.container("pve1", "901", "0")
	e.container("pve2", "950", "1")
	e.container("pve3", "960", "0")

	w := startWatch(t, e, func(ev Event) string { return ev.Container.Key() + " " + ev.Container.State })
	waitFor := func(n int) {
		t.Helper()
		w.waitUntil(fmt.Sprintf("%d events", n), func(got []string) bool { return len(got) >= n })
	}
	waitFor(3)
	// A guest on pve2 connects: its container becomes ready.
	b.Update("950", func(c *agenttest.Container) { c.Guest, c.Lib = true, agenttest.KernelVersion })
	waitFor(4)
	// pve1's container loses its device cgroup rule.
	a.Update("901", func(c *agenttest.Container) { c.Denied = true })
	waitFor(5)
	got := w.stop()
	first := map[string]bool{}
	for _, g := range got[:3] {
		first[g] = true
	}
	if diff := cmp.Diff(first, map[string]bool{"pve1/901 ready": true, "pve2/950 not-ready": true, "pve3/960 unreachable": true}); diff != "" {
		t.Errorf("initial events (-got +want)\n%s", diff)
	}
	if diff := cmp.Diff(got[3:5], []string{"pve2/950 ready", "pve1/901 not-ready"}); diff != "" {
		t.Errorf("changes (-got +want)\n%s", diff)
	}
}

// TestWatchPrintsEachContainerOnce: where the fleet asks for more than the host last
// applied (901 runs with GPU 0, the fleet now wants GPUs 0 and 1), the watch's events are
// judged against the fleet's spec, as its first state (a Status call) is: 901 shows once,
// restart required, and is not printed again as "no restart required" when the host's
// watch starts (it was, when the host judged against the spec it last applied).
func TestWatchPrintsEachContainerOnce(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion})
	a.Add(agenttest.Container{ID: "902", GPUs: []string{"0"}, Guest: false})
	e.container("pve1", "901", "0", "1")
	e.container("pve1", "902", "0")

	w := startWatch(t, e, func(ev Event) string {
		return fmt.Sprintf("%s %s restart=%v", ev.Container.Key(), ev.Container.State, ev.Container.RestartRequired)
	})
	waitFor := func(line string) {
		t.Helper()
		w.waitUntil(strconv.Quote(line), func(got []string) bool { return slices.Contains(got, line) })
	}
	// The first state of both, from the Status call.
	waitFor("pve1/901 ready restart=true")
	waitFor("pve1/902 not-ready restart=false")
	// 902's guest connects. The host's watch sends 901's state (the first event of the
	// stream) before this change, so once the change is seen, 901's is too.
	a.Update("902", func(c *agenttest.Container) { c.Guest, c.Lib = true, agenttest.KernelVersion })
	waitFor("pve1/902 ready restart=false")
	got := w.stop()
	var of901 []string
	for _, g := range got {
		if strings.HasPrefix(g, "pve1/901 ") {
			of901 = append(of901, g)
		}
	}
	if diff := cmp.Diff(of901, []string{"pve1/901 ready restart=true"}); diff != "" {
		t.Errorf("901's lines (-got +want); all: %q\n%s", got, diff)
	}
}

// watchLog is the controller's Watch of an env's fleet running in the background, one line
// per event.
type watchLog struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc
	mu     sync.Mutex
	got    []string
	seen   chan struct{}
	done   chan error
}

// startWatch starts the controller's Watch, keeping line(ev) of every event; it gives up
// after 10 seconds.
func startWatch(t *testing.T, e *env, line func(Event) string) *watchLog {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	w := &watchLog{t: t, ctx: ctx, cancel: cancel, seen: make(chan struct{}, 1), done: make(chan error, 1)}
	go func() {
		w.done <- e.controller(t, time.Second).Watch(ctx, func(ev Event) {
			w.mu.Lock()
			w.got = append(w.got, line(ev))
			w.mu.Unlock()
			select {
			case w.seen <- struct{}{}:
			default: // a wake-up is pending already
			}
		})
	}()
	return w
}

// waitUntil waits until cond holds of the lines so far (what names it in the failure).
func (w *watchLog) waitUntil(what string, cond func(got []string) bool) {
	w.t.Helper()
	for {
		w.mu.Lock()
		ok, got := cond(w.got), slices.Clone(w.got)
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-w.seen:
		case <-w.ctx.Done():
			w.t.Fatalf("timed out waiting for %s, have %v", what, got)
		}
	}
}

// stop ends the watch and returns its lines.
func (w *watchLog) stop() []string {
	w.t.Helper()
	w.cancel()
	if err := <-w.done; err != nil {
		w.t.Fatal(err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.got
}

func TestApplyProgressAndFailingHosts(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.StepDelay = 5 * time.Millisecond
	a.Add(agenttest.Container{ID: "901", GPUs: []string{}, Guest: true, Lib: agenttest.KernelVersion})
	a.Add(agenttest.Container{ID: "902", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion})
	e.deadHost("pve2", agenttest.Silent(t))
	e.deadHost("pve3", agenttest.Refused(t))
	e.container("pve1", "901", "1")
	e.container("pve1", "902")
	e.container("pve1", "903", "0") // not on the host
	e.container("pve2", "950", "0")
	e.container("pve3", "960", "0")

	var mu sync.Mutex
	steps := map[string][]string{}
	start := time.Now()
	r := e.controller(t, 600*time.Millisecond).Apply(context.Background(), ApplyOptions{Timeout: 5 * time.Second, Parallel: 3, Progress: func(p Progress) {
		mu.Lock()
		defer mu.Unlock()
		key := p.Host
		if p.Container != "" {
			key += "/" + p.Container
		}
		steps[key] = append(steps[key], p.Step)
	}})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("apply took %s", took)
	}
	want := map[string][]string{
		"pve1":     {"connect"},
		"pve1/901": {"journal", "write", "restart", "wait-ready", "done"},
		"pve1/902": {"journal", "write", "restart", "wait-ready", "done"},
		"pve1/903": {"done"}, // as the agent: done, with its outcome (error), after a failed container too
		"pve2":     {"connect", "failed"},
		"pve3":     {"connect", "failed"},
	}
	if diff := cmp.Diff(steps, want); diff != "" {
		t.Errorf("progress (-got +want)\n%s", diff)
	}
	states := map[string]string{}
	for _, c := range r.Containers {
		states[c.Key()] = c.State
	}
	wantStates := map[string]string{"pve1/901": "ready", "pve1/902": "ready", "pve1/903": "error", "pve2/950": "unreachable", "pve3/960": "unreachable"}
	if diff := cmp.Diff(states, wantStates); diff != "" {
		t.Errorf("states (-got +want)\n%s", diff)
	}
	if c := r.Containers[0]; !c.Written || !c.Restarted {
		t.Errorf("901: written=%v restarted=%v", c.Written, c.Restarted)
	}
	if c := r.Containers[2]; !strings.Contains(c.Reasons[0], "does not exist on pve1") {
		t.Errorf("903 reasons: %v", c.Reasons)
	}
	if got := r.ExitCode(); got != ExitError {
		t.Errorf("exit %d, want 1", got)
	}
	if c, _ := a.Get("901"); len(c.Running) != 1 || c.Running[0] != 1 {
		t.Errorf("901 runs with minors %v after apply, want [1]", c.Running)
	}
}

func TestApplyCancelled(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.StepDelay = time.Hour
	a.Add(agenttest.Container{ID: "901", GPUs: []string{}})
	e.container("pve1", "901", "0")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	r := e.controller(t, time.Second).Apply(ctx, ApplyOptions{})
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("cancelled apply took %s", took)
	}
	if c := r.Containers[0]; c.State != StateUnreachable && c.State != StateError {
		t.Errorf("901 after cancel: %+v", c)
	}
}
