package controller

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/controller/agenttest"
)

func TestStatusUnreachableAndSlowHostsWithinDeadline(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion})
	hung := agenttest.New("pve4")
	hung.Hang = true
	e.host(t, hung)
	e.deadHost("pve2", agenttest.Refused(t))
	e.deadHost("pve3", agenttest.Silent(t))
	e.container("pve1", "901", "0")
	e.container("pve2", "902", "1")
	e.container("pve3", "903", "0")
	e.container("pve4", "904", "0")

	const timeout = 700 * time.Millisecond
	start := time.Now()
	r := e.controller(t, timeout).Status(context.Background())
	took := time.Since(start)
	if took > timeout+500*time.Millisecond {
		t.Errorf("status took %s with a per-host timeout of %s", took, timeout)
	}
	got := map[string]string{}
	for _, c := range r.Containers {
		got[c.Key()] = c.State
	}
	want := map[string]string{"pve1/901": "ready", "pve2/902": "unreachable", "pve3/903": "unreachable", "pve4/904": "unreachable"}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("states (-got +want)\n%s", diff)
	}
	for i, wantSub := range map[int]string{
		1: "no answer within 700ms (waiting for the answer of 127.0.0.1:",
		2: "connection refused",
		3: "no answer within 700ms (TLS handshake with 127.0.0.1:",
	} {
		if h := r.Hosts[i]; h.Reachable || !strings.Contains(h.Error, wantSub) {
			t.Errorf("host %s: reachable=%v error=%q, want unreachable with %q", h.Name, h.Reachable, h.Error, wantSub)
		}
	}
	if !r.Hosts[0].Reachable || r.Hosts[0].ElapsedMS > 500 {
		t.Errorf("the good host: %+v", r.Hosts[0])
	}
	if got := r.ExitCode(); got != ExitError {
		t.Errorf("exit code %d, want %d", got, ExitError)
	}
	b, _ := json.Marshal(r)
	t.Logf("%s", b)
}
