package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/gpu"
)

// hostOpts shape one simulated GPU host.
type hostOpts struct {
	// Sim is the simulated GPU host written under host_root.
	Sim gpu.SimOptions
	// Wrappers are shell scripts put first on the agent's PATH, by command name (e.g. a
	// slow lxc-stop); "$REAL" in a script is the real command's path.
	Wrappers map[string]string
	// NoAgent leaves the agent unstarted (Start it later).
	NoAgent bool
	// Heartbeat of the guests (default 2s); guests go stale after 3.5 heartbeats.
	Heartbeat time.Duration
}

// host is one simulated Proxmox-like host: its own network namespace with an address on
// the bridge, a simulated GPU host tree, an lxc_path, and a gpupass-host-agent process.
type host struct {
	f    *fabric
	t    *testing.T
	name string
	ns   string // "" = the test's own network namespace
	ip   string
	port string // "" = agentPort

	dir, root, lxcPath, stateDir, guestDir, config, log, wrapDir string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	starts int
}

// addHost creates a host and starts its agent (unless opts.NoAgent). Everything is
// removed when the test ends.
func (f *fabric) addHost(t *testing.T, opts hostOpts) *host {
	t.Helper()
	f.mu.Lock()
	f.hosts++
	n := f.hosts
	f.mu.Unlock()
	h := &host{f: f, t: t, name: fmt.Sprintf("h%d", n), ip: f.allocIP()}
	h.ns = f.netnsName(h.name)
	h.dir = filepath.Join(f.dir, h.name)
	h.root = filepath.Join(h.dir, "root")
	h.lxcPath = filepath.Join(h.dir, "lxc")
	h.stateDir = filepath.Join(h.dir, "state")
	h.guestDir = filepath.Join(h.dir, "guests")
	h.config = filepath.Join(h.dir, "host-agent.yaml")
	h.log = filepath.Join(h.dir, "agent.log")
	h.wrapDir = filepath.Join(h.dir, "wrap")
	for _, d := range []string{h.dir, h.root, h.lxcPath, h.wrapDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// Network: a namespace with eth0 (veth to the bridge) at h.ip.
	addNetns(t, h.ns)
	veth := "v" + h.name
	mustRun(t, "ip", "-n", f.brNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
	mustRun(t, "ip", "-n", f.brNS, "link", "set", veth, "master", "br0", "up")
	mustRun(t, "ip", "-n", h.ns, "addr", "add", h.ip+"/24", "dev", "eth0")
	mustRun(t, "ip", "-n", h.ns, "link", "set", "eth0", "up")
	mustRun(t, "ip", "-n", h.ns, "link", "set", "lo", "up")

	if err := gpu.WriteSimulatedHost(h.root, opts.Sim); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	f.gpupass(t, "pki", "issue", "--dir", f.pki, "--name", h.name, "--ip", h.ip)
	for name, script := range opts.Wrappers {
		h.wrap(t, name, script)
	}
	hb := opts.Heartbeat
	if hb == 0 {
		hb = 2 * time.Second
	}
	cfg := fmt.Sprintf(`version: 1
listen: "%s:%s"
runtime: lxc
tls: {ca: %s, cert: %s, key: %s}
state_dir: %s
guest_socket_dir: %s
host_root: %s
lxc_path: %s
heartbeat: %s
guest_stale_after: %s
simulated: true
`, h.ip, agentPort, filepath.Join(f.pki, "ca.crt"), filepath.Join(f.pki, h.name+".crt"), filepath.Join(f.pki, h.name+".key"),
		h.stateDir, h.guestDir, h.root, h.lxcPath, hb, hb*7/2)
	if err := os.WriteFile(h.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stopAgent(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			t.Logf("e2e: host %s agent log (end):\n%s", h.name, tail(string(b), 6000))
		}
	})
	if !opts.NoAgent {
		h.Start(t)
	}
	return h
}

// addr is the agent's address as fleet.yaml names it.
func (h *host) addr() string {
	if h.port != "" {
		return h.ip + ":" + h.port
	}
	return h.ip + ":" + agentPort
}

// wrap installs a wrapper script for a command on the agent's PATH.
func (h *host) wrap(t testing.TB, name, script string) {
	t.Helper()
	real, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("e2e: wrap %s: %v", name, err)
	}
	body := "#!/bin/sh\nREAL=" + real + "\n" + script + "\n"
	if err := os.WriteFile(filepath.Join(h.wrapDir, name), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// unwrap removes a wrapper.
func (h *host) unwrap(t testing.TB, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(h.wrapDir, name)); err != nil {
		t.Fatal(err)
	}
}

// Start starts the host agent in the host's network namespace and waits for READY=1 on
// a NOTIFY_SOCKET (sent after the listener is up, host preparation is done and
// interrupted applies are reconciled).
func (h *host) Start(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cmd != nil {
		t.Fatalf("e2e: host %s: agent already running", h.name)
	}
	h.starts++
	notifyPath := filepath.Join(h.dir, fmt.Sprintf("notify-%d.sock", h.starts))
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatalf("e2e: notify socket: %v", err)
	}
	defer func() { ln.Close(); os.Remove(notifyPath) }()

	logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logf, "----- e2e: agent start %d at %s\n", h.starts, time.Now().Format(time.RFC3339Nano))
	argv := inNetns(h.ns, h.f.bin.HostAgent, "--config", h.config)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath, "LC_ALL=C",
		"PATH="+h.wrapDir+":"+os.Getenv("PATH"), "GPUPASS_LOG_LEVEL=debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("e2e: start host agent %s: %v", h.name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	h.cmd, h.exited = cmd, exited

	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			_ = ln.SetReadDeadline(time.Now().Add(90 * time.Second))
			n, err := ln.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			for _, l := range strings.Split(string(buf[:n]), "\n") {
				if l == "READY=1" {
					ready <- nil
					return
				}
			}
		}
	}()
	began := time.Now()
	defer func() {
		if d := time.Since(began); d > 2*time.Second {
			t.Logf("e2e: host %s: READY=1 took %v", h.name, d.Round(time.Millisecond))
		}
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("e2e: host %s: no READY=1 from the agent: %v\n%s", h.name, err, h.logTail())
		}
	case <-exited:
		t.Fatalf("e2e: host %s: agent exited before READY=1:\n%s", h.name, h.logTail())
	}
}

// Kill SIGKILLs the agent and every process of its process group (as a crash under
// systemd's KillMode=control-group would; lxc-start's monitor has its own session and
// survives, as on a real host).
func (h *host) Kill(t testing.TB) {
	t.Helper()
	h.stopAgent(syscall.SIGKILL)
}

func (h *host) stopAgent(sig syscall.Signal) {
	h.mu.Lock()
	cmd, exited := h.cmd, h.exited
	h.cmd = nil
	h.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Restart stops the agent (SIGTERM) and starts it again.
func (h *host) Restart(t testing.TB) {
	t.Helper()
	h.stopAgent(syscall.SIGTERM)
	h.Start(t)
}

func (h *host) logTail() string {
	b, _ := os.ReadFile(h.log)
	return tail(string(b), 4000)
}

// lxc runs an lxc-* command for container name inside the host's network namespace (the
// monitor's command socket is an abstract unix socket, which is per network namespace).
func (h *host) lxc(t testing.TB, timeout time.Duration, cmd, name string, args ...string) cmdResult {
	t.Helper()
	argv := inNetns(h.ns, append([]string{cmd, "-P", h.lxcPath, "-n", name}, args...)...)
	res, err := run(context.Background(), timeout, nil, argv...)
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return res
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
