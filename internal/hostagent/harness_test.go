package hostagent

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pki"
	"gpupass/internal/runtime"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// memRuntime is a runtime kept in memory, for tests where the containers themselves do not
// matter (the controller listener, the guest channel under load). Every container it is
// told about runs; configs live under dir.
type memRuntime struct {
	dir string
	mu  sync.Mutex
	ids map[string]bool
}

var _ runtime.Runtime = (*memRuntime)(nil)

func newMemRuntime(dir string, ids ...string) *memRuntime {
	m := &memRuntime{dir: dir, ids: map[string]bool{}}
	for _, id := range ids {
		m.ids[id] = true
	}
	return m
}

func (m *memRuntime) Name() string { return "mem" }
func (m *memRuntime) State(_ context.Context, id string) (runtime.State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.ids[id] {
		return runtime.State{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, id)
	}
	return runtime.State{Running: true, InitPID: 1}, nil
}
func (m *memRuntime) Start(context.Context, string) error   { return nil }
func (m *memRuntime) Stop(context.Context, string) error    { return nil }
func (m *memRuntime) Restart(context.Context, string) error { return nil }
func (m *memRuntime) ConfigPath(id string) string           { return filepath.Join(m.dir, id, "config") }
func (m *memRuntime) ConfigFormat() runtime.Format          { return runtime.FormatLXC }
func (m *memRuntime) StartedConfig(context.Context, string, runtime.State) ([]byte, error) {
	return nil, runtime.ErrNoStartedConfig
}
func (m *memRuntime) LockPath(id string) string { return filepath.Join(m.dir, id+".lock") }

// testPKI is a fleet CA with the certificates the TLS tests present, and a second CA.
type testPKI struct {
	dir, other string
}

func (p testPKI) ca() string                     { return filepath.Join(p.dir, pki.CACertFile) }
func (p testPKI) pair(name string) (c, k string) { return p.files(p.dir, name) }
func (p testPKI) files(dir, name string) (c, k string) {
	return filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
}

// newTestPKI makes the fleet CA with "host" (127.0.0.1), the controllers "controller",
// "ci" and "expired" (valid for an hour two days ago), and another CA with the controller
// "intruder".
func newTestPKI(t testing.TB) testPKI {
	t.Helper()
	p := testPKI{dir: t.TempDir(), other: t.TempDir()}
	for _, d := range []string{p.dir, p.other} {
		if _, err := pki.InitCA(d, pki.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	past := func() time.Time { return time.Now().Add(-48 * time.Hour) }
	for _, req := range []struct {
		dir  string
		name string
		role pki.Role
		ips  []net.IP
		opts pki.Options
	}{
		{p.dir, "host", pki.RoleHost, []net.IP{net.IPv4(127, 0, 0, 1)}, pki.Options{}},
		{p.dir, "controller", pki.RoleController, nil, pki.Options{}},
		{p.dir, "ci", pki.RoleController, nil, pki.Options{}},
		{p.dir, "expired", pki.RoleController, nil, pki.Options{Now: past, Validity: time.Hour}},
		{p.other, "intruder", pki.RoleController, nil, pki.Options{}},
	} {
		if _, _, err := pki.IssueFiles(req.dir, pki.IssueRequest{Name: req.name, Role: req.role, IPs: req.ips}, req.opts); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// clientTLS is the controller's TLS configuration with the named certificate of dir.
func (p testPKI) clientTLS(t testing.TB, dir, name string) *tls.Config {
	t.Helper()
	c, k := p.files(dir, name)
	cfg, err := pki.ClientTLS(p.ca(), c, k, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// syncBuffer collects log lines from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitLog waits up to d for a log line containing every one of parts.
func (s *syncBuffer) waitLog(d time.Duration, parts ...string) (string, bool) {
	deadline := time.Now().Add(d)
	for {
		for _, line := range strings.Split(s.String(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(line, p)
			}
			if all {
				return line, true
			}
		}
		if time.Now().After(deadline) {
			return "", false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// serviceFixture is the real daemon (Service.Run) on a loopback TLS listener built from
// its configuration, with an in-memory runtime and no GPUs.
type serviceFixture struct {
	addr  string
	agent *Agent
	logs  *syncBuffer
	pki   testPKI
}

// startService runs the daemon with the host certificate of p.
func startService(t *testing.T, p testPKI) *serviceFixture {
	t.Helper()
	return startServiceWith(t, p, nil)
}

// startServiceWith is startService with a change to the host-agent.yaml it runs with.
func startServiceWith(t *testing.T, p testPKI, edit func(*hostconfig.Config)) *serviceFixture {
	t.Helper()
	base := t.TempDir()
	cfg := hostconfig.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.TLS.CA = p.ca()
	cfg.TLS.Cert, cfg.TLS.Key = p.pair("host")
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "g")
	cfg.HostRoot = filepath.Join(base, "root")
	cfg.Runtime = hostconfig.RuntimeLXC
	if edit != nil {
		edit(cfg)
	}
	if err := os.MkdirAll(cfg.HostRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	l := log.Component(log.New(log.Options{Out: logs, Format: "json", Level: "debug"}), "hostagent")
	type up struct {
		addr  net.Addr
		agent *Agent
	}
	ready := make(chan up, 1)
	svc := &Service{
		Config:  cfg,
		Log:     l,
		Runtime: newMemRuntime(filepath.Join(base, "lxc")),
		Ready:   func(a net.Addr, ag *Agent) { ready <- up{a, ag} },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Service.Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Service.Run did not return within 10s of the cancel")
		}
		if t.Failed() {
			t.Logf("host agent log:\n%s", logs.String())
		}
	})
	select {
	case u := <-ready:
		return &serviceFixture{addr: u.addr.String(), agent: u.agent, logs: logs, pki: p}
	case err := <-done:
		t.Fatalf("Service.Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the host agent did not get ready within 10s")
	}
	return nil
}

// dialController connects to the agent with tc and says Hello as role.
func dialController(addr string, tc *tls.Config, role pb.Role) (*wire.Session, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var conn net.Conn = raw
	if tc != nil {
		conn = tls.Client(raw, tc)
	}
	sess, err := wire.Client(ctx, conn, wire.Config{Role: role, Build: "test", HelloTimeout: 5 * time.Second}, nil)
	if err != nil {
		raw.Close()
		return nil, err
	}
	return sess, nil
}
