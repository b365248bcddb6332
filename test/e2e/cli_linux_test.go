package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/pki"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// The JSON contract of plan, apply and status (DESIGN.md "Formats"), decoded here
// independently of the controller's own types so the suite checks the contract.
type report struct {
	Hosts      []reportHost `json:"hosts"`
	Containers []reportCt   `json:"containers"`
}

type reportHost struct {
	Name      string `json:"name"`
	Reachable bool   `json:"reachable"`
	Simulated bool   `json:"simulated"`
	Error     string `json:"error"`
	Driver    struct {
		Kernel string `json:"kernel"`
		Change string `json:"change"`
	} `json:"driver"`
	ElapsedMS int64 `json:"elapsed_ms"`
	GPUs      []struct {
		Index uint32 `json:"index"`
		UUID  string `json:"uuid"`
		Minor uint32 `json:"minor"`
		Bus   string `json:"bus"`
	} `json:"gpus"`
}

type reportCt struct {
	Host            string   `json:"host"`
	ID              string   `json:"id"`
	GPUs            []string `json:"gpus"`
	State           string   `json:"state"`
	RestartRequired bool     `json:"restart_required"`
	Restarted       bool     `json:"restarted"`
	Started         bool     `json:"started"`
	Reasons         []string `json:"reasons"`
	RestartReasons  []string `json:"restart_reasons"`
	Devices         []struct {
		Path   string `json:"path"`
		Status string `json:"status"`
		Detail string `json:"detail"`
	} `json:"devices"`
	Driver struct {
		Kernel    string `json:"kernel"`
		Userspace string `json:"userspace"`
		Source    string `json:"source"`
	} `json:"driver"`
	Warnings []string `json:"warnings"`
	Error    string   `json:"error"`
	Changes  []struct {
		Op   string `json:"op"`
		Line string `json:"line"`
	} `json:"changes"`
	Written    bool `json:"written"`
	RolledBack bool `json:"rolled_back"`
	Simulated  bool `json:"simulated"`
	// Proxmox (the PVE lab scenarios)
	Locked             string   `json:"locked"`
	Pending            []string `json:"pending"`
	PendingReplacesLXC bool     `json:"pending_replaces_lxc"`
	HA                 string   `json:"ha"`
	HACommand          string   `json:"ha_command"`
	// The reasons as data, one per reason in the same order.
	ReasonsDetail []struct {
		Kind   string `json:"kind"`
		Text   string `json:"text"`
		Device string `json:"device"`
		Got    string `json:"got"`
	} `json:"reasons_detail"`
	// plan --driver-version
	DriverUpgrade *struct {
		Message string `json:"message"`
	} `json:"driver_upgrade"`
}

// ct finds a container of the report; it fails the test when it is absent.
func (r *report) ct(t testing.TB, id string) reportCt {
	t.Helper()
	for _, c := range r.Containers {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("e2e: report has no container %s: %+v", id, r.Containers)
	return reportCt{}
}

func (r *report) host(t testing.TB, name string) reportHost {
	t.Helper()
	for _, h := range r.Hosts {
		if h.Name == name {
			return h
		}
	}
	t.Fatalf("e2e: report has no host %s", name)
	return reportHost{}
}

func (c reportCt) deviceStatus() map[string]string {
	out := map[string]string{}
	for _, d := range c.Devices {
		out[d.Path] = d.Status
	}
	return out
}

func (c reportCt) reasons() string { return strings.Join(c.Reasons, "; ") }

// fleetCt is one container entry of fleet.yaml.
type fleetCt struct {
	Host           *host
	Ct             *container
	GPUs           []string
	RequireNetwork bool
	State          string
	Driver         string // fleet.yaml driver: own | host ("" leaves it out)
}

// fleetHost is an extra host entry (one with no agent behind it).
type fleetHost struct{ Name, Address string }

// writeFleet writes a fleet.yaml naming the hosts of cts (and extra hosts) and returns
// its path.
func (f *fabric) writeFleet(t testing.TB, name string, cts []fleetCt, extra ...fleetHost) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ntls: {ca: %s, cert: %s, key: %s}\nhosts:\n",
		filepath.Join(f.pki, "ca.crt"), filepath.Join(f.pki, "controller.crt"), filepath.Join(f.pki, "controller.key"))
	seen := map[string]bool{}
	for _, c := range cts {
		if !seen[c.Host.name] {
			seen[c.Host.name] = true
			fmt.Fprintf(&b, "  - {name: %s, address: \"%s\"}\n", c.Host.name, c.Host.addr())
		}
	}
	for _, h := range extra {
		fmt.Fprintf(&b, "  - {name: %s, address: \"%s\"}\n", h.Name, h.Address)
	}
	b.WriteString("containers:\n")
	for _, c := range cts {
		gpus := make([]string, len(c.GPUs))
		for i, g := range c.GPUs {
			gpus[i] = fmt.Sprintf("%q", g)
		}
		fmt.Fprintf(&b, "  - {host: %s, id: %q, gpus: [%s], style: raw", c.Host.name, c.Ct.name, strings.Join(gpus, ", "))
		if c.RequireNetwork {
			b.WriteString(", require_network: true")
		}
		if c.State != "" {
			fmt.Fprintf(&b, ", state: %s", c.State)
		}
		if c.Driver != "" {
			fmt.Fprintf(&b, ", driver: %s", c.Driver)
		}
		b.WriteString("}\n")
	}
	p := filepath.Join(f.dir, name+".fleet.yaml")
	if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// ctlResult is one run of the controller CLI.
type ctlResult struct {
	cmdResult
	Report report
}

// ctl runs `gpupass <cmd> -f fleet -o json args...` in the controller's network namespace
// and decodes the JSON report.
func (f *fabric) ctl(t testing.TB, cmd, fleet string, args ...string) ctlResult {
	t.Helper()
	return f.ctlCtx(t, context.Background(), cmd, fleet, args...)
}

func (f *fabric) ctlCtx(t testing.TB, ctx context.Context, cmd, fleet string, args ...string) ctlResult {
	t.Helper()
	argv := inNetns(f.ctlNS(), append([]string{f.bin.Controller, cmd, "-f", fleet, "-o", "json"}, args...)...)
	res, err := run(ctx, 4*time.Minute, nil, argv...)
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	out := ctlResult{cmdResult: res}
	if res.Code == 0 || res.Code == 2 {
		if err := json.Unmarshal([]byte(res.Stdout), &out.Report); err != nil {
			t.Fatalf("e2e: gpupass %s: exit %d, output is not a JSON report: %v\nstdout: %s\nstderr: %s", cmd, res.Code, err, res.Stdout, res.Stderr)
		}
	} else if res.Stdout != "" {
		_ = json.Unmarshal([]byte(res.Stdout), &out.Report)
	}
	t.Logf("e2e: gpupass %s: exit %d in %v", cmd, res.Code, res.Elapsed.Round(time.Millisecond))
	return out
}

// mustApplyReady runs apply and requires every listed container ready (exit 0).
func (f *fabric) mustApplyReady(t testing.TB, fleet string, ids ...string) ctlResult {
	t.Helper()
	return f.mustApplyReadyWithin(t, fleet, 30*time.Second, ids...)
}

// mustApplyReadyWithin is mustApplyReady with apply's --timeout (how long the host waits
// for each started container's guest).
func (f *fabric) mustApplyReadyWithin(t testing.TB, fleet string, timeout time.Duration, ids ...string) ctlResult {
	t.Helper()
	r := f.ctl(t, "apply", fleet, "--timeout", timeout.String())
	for _, id := range ids {
		c := r.Report.ct(t, id)
		if c.State != "ready" {
			t.Fatalf("e2e: apply: %s is %s, want ready: reasons %q error %q\nstderr: %s", id, c.State, c.Reasons, c.Error, r.Stderr)
		}
	}
	if r.Code != 0 {
		t.Fatalf("e2e: apply: exit %d, want 0\nstdout: %s\nstderr: %s", r.Code, r.Stdout, r.Stderr)
	}
	return r
}

// waitStatus polls `gpupass status` (the test polls; gpupass does not) until cond holds
// for container id, and returns that report entry.
func (f *fabric) waitStatus(t testing.TB, fleet, id string, within time.Duration, cond func(reportCt) bool) reportCt {
	t.Helper()
	deadline := time.Now().Add(within)
	var last reportCt
	for {
		r := f.ctl(t, "status", fleet)
		for _, c := range r.Report.Containers {
			if c.ID == id {
				last = c
				if cond(c) {
					return c
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("e2e: status of %s did not reach the wanted state within %v; last: state %s reasons %q", id, within, last.State, last.Reasons)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// agentSession opens a controller session straight to a host agent over mutual TLS (the
// same certificates the CLI uses), for requests the CLI does not expose.
func (f *fabric) agentSession(t testing.TB, h *host) *wire.Session {
	t.Helper()
	cfg, err := pki.ClientTLS(filepath.Join(f.pki, "ca.crt"), filepath.Join(f.pki, "controller.crt"), filepath.Join(f.pki, "controller.key"), h.ip)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := dialFromNetns(ctx, f.brNS, h.addr())
	if err != nil {
		t.Fatalf("e2e: dial %s: %v", h.addr(), err)
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		t.Fatalf("e2e: TLS with %s: %v", h.addr(), err)
	}
	s, err := wire.Client(ctx, tc, wire.Config{Role: pb.Role_ROLE_CONTROLLER, Build: "e2e"}, nil)
	if err != nil {
		raw.Close()
		t.Fatalf("e2e: hello to %s: %v", h.addr(), err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// applyDirect runs host.Apply on a session and returns the final result (progress
// updates are dropped) or the call's error.
func applyDirect(ctx context.Context, s *wire.Session, req *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	st, err := s.Open(ctx, "host.Apply")
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := st.Send(req); err != nil {
		return nil, err
	}
	for {
		var up pb.ApplyUpdate
		if err := st.RecvReply(&up); err != nil {
			return nil, err
		}
		if r := up.GetResult(); r != nil {
			return r, nil
		}
	}
}
