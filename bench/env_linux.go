package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"gpupass/internal/fleet"
	"gpupass/internal/gpu"
	"gpupass/internal/pki"
)

// Env is one benchmark run's machine: where the gpupass binaries are, a scratch directory
// it owns, and everything to undo at the end.
type Env struct {
	// Bin holds gpupass, gpupass-host-agent and gpupass-guest-agent.
	Bin string
	// Work is a scratch directory, removed by Close (not on a nodev mount: the simulated
	// GPU host's nodes must open).
	Work string
	// Out receives progress lines.
	Out io.Writer
	// ProfileDir, when set, receives CPU profiles of the sections that take them.
	ProfileDir string
	// FleetSizes are the fleet sizes of the status benchmark (default 1, 10, 100, 1000).
	FleetSizes []int

	ready  *Readiness // set by the readiness section
	guests *GuestLoad // set by the host agent section

	mu    sync.Mutex
	undo  []func()
	procs []*exec.Cmd
}

// Logf prints a progress line.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(e.Out, "  "+format+"\n", args...)
}

// Defer registers f to run at Close, last registered first.
func (e *Env) Defer(f func()) {
	e.mu.Lock()
	e.undo = append(e.undo, f)
	e.mu.Unlock()
}

// Close stops every process and container the run started and removes what it made.
func (e *Env) Close() {
	e.mu.Lock()
	undo, procs := e.undo, e.procs
	e.undo, e.procs = nil, nil
	e.mu.Unlock()
	for _, p := range procs {
		stopProc(p)
	}
	for i := len(undo) - 1; i >= 0; i-- {
		undo[i]()
	}
	if e.Work != "" {
		_ = os.RemoveAll(e.Work)
	}
}

// Setup makes the scratch directory, a simulated GPU host under it and the fleet PKI.
func (e *Env) Setup() error {
	if err := os.RemoveAll(e.Work); err != nil {
		return fmt.Errorf("clear %s: %w", e.Work, err)
	}
	if err := os.MkdirAll(e.Work, 0o755); err != nil {
		return fmt.Errorf("make %s: %w", e.Work, err)
	}
	if err := gpu.WriteSimulatedHost(e.HostRoot(), gpu.SimOptions{GPUs: 2}); err != nil {
		return err
	}
	ca, err := pki.InitCA(e.PKIDir(), pki.Options{})
	if err != nil {
		return err
	}
	for _, req := range []pki.IssueRequest{{Name: "host", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}, {Name: "controller"}} {
		crt, key, err := ca.Issue(req, pki.Options{})
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(e.PKIDir(), req.Name+".crt"), crt, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(e.PKIDir(), req.Name+".key"), key, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// HostRoot is the simulated GPU host tree.
func (e *Env) HostRoot() string { return filepath.Join(e.Work, "host") }

// PKIDir holds ca.crt, host.crt/key (127.0.0.1) and controller.crt/key.
func (e *Env) PKIDir() string { return filepath.Join(e.Work, "pki") }

func (e *Env) pkiFile(name string) string { return filepath.Join(e.PKIDir(), name) }

// HostAgent is a gpupass-host-agent process.
type HostAgent struct {
	Cmd    *exec.Cmd
	Addr   string
	Config string
	Log    string
	// Metrics is the Prometheus endpoint's host:port ("" when off).
	Metrics string
}

// Pid is the agent's process id.
func (h *HostAgent) Pid() int { return h.Cmd.Process.Pid }

// LogTail returns the end of the agent's log.
func (h *HostAgent) LogTail() string {
	b, _ := os.ReadFile(h.Log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// AgentConfig is what differs between the host agents of a run.
type AgentConfig struct {
	Dir       string // state, guest sockets and lxc_path live below it
	Heartbeat time.Duration
	Metrics   bool
}

// StartHostAgent writes a host-agent.yaml (runtime lxc, the simulated host, loopback TLS)
// and starts the real binary with it; it returns once the agent accepts connections.
func (e *Env) StartHostAgent(ctx context.Context, ac AgentConfig) (*HostAgent, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for _, d := range []string{"lxc", "state", "guests"} {
		if err := os.MkdirAll(filepath.Join(ac.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	hb := ac.Heartbeat
	if hb == 0 {
		hb = 10 * time.Second
	}
	cfg := fmt.Sprintf(`version: 1
listen: %q
runtime: lxc
tls: {ca: %s, cert: %s, key: %s}
state_dir: %s
guest_socket_dir: %s
host_root: %s
lxc_path: %s
heartbeat: %s
simulated: true
`, addr, e.pkiFile("ca.crt"), e.pkiFile("host.crt"), e.pkiFile("host.key"),
		filepath.Join(ac.Dir, "state"), filepath.Join(ac.Dir, "guests"), e.HostRoot(), filepath.Join(ac.Dir, "lxc"), hb)
	metrics := ""
	if ac.Metrics {
		mp, err := freePort()
		if err != nil {
			return nil, err
		}
		metrics = fmt.Sprintf("127.0.0.1:%d", mp)
		cfg += fmt.Sprintf("metrics_listen: %q\n", metrics)
	}
	path := filepath.Join(ac.Dir, "host-agent.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	h := &HostAgent{Addr: addr, Config: path, Log: filepath.Join(ac.Dir, "host-agent.log"), Metrics: metrics}
	logf, err := os.Create(h.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	h.Cmd = exec.Command(filepath.Join(e.Bin, "gpupass-host-agent"), "--config", path)
	h.Cmd.Stdout, h.Cmd.Stderr = logf, logf
	h.Cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	if err := e.start(h.Cmd); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return h, nil
		}
		if h.Cmd.ProcessState != nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("host agent did not listen on %s:\n%s", addr, h.LogTail())
}

// start starts cmd, killed with this process and stopped at Close.
func (e *Env) start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	e.mu.Lock()
	e.procs = append(e.procs, cmd)
	e.mu.Unlock()
	return nil
}

// Stop ends one process the run started (SIGTERM, then SIGKILL after 5 s).
func (e *Env) Stop(cmd *exec.Cmd) {
	e.mu.Lock()
	for i, p := range e.procs {
		if p == cmd {
			e.procs = append(e.procs[:i], e.procs[i+1:]...)
			break
		}
	}
	e.mu.Unlock()
	stopProc(cmd)
}

func stopProc(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FleetEntry is one container of a one-host fleet file.
type FleetEntry struct {
	ID    string
	GPUs  []string
	State string // "" or running
}

// WriteFleet writes a fleet.yaml naming hosts (name -> address) and containers on the
// first host, with the controller's certificate, and loads it.
func (e *Env) WriteFleet(path string, hosts [][2]string, entries []FleetEntry) (*fleet.Fleet, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\ntls: {ca: %s, cert: %s, key: %s}\nhosts:\n", e.pkiFile("ca.crt"), e.pkiFile("controller.crt"), e.pkiFile("controller.key"))
	for _, h := range hosts {
		fmt.Fprintf(&b, "  - {name: %s, address: %q}\n", h[0], h[1])
	}
	if len(entries) == 0 {
		b.WriteString("containers: []\n")
	} else {
		b.WriteString("containers:\n")
	}
	for _, c := range entries {
		gpus := make([]string, len(c.GPUs))
		for i, g := range c.GPUs {
			gpus[i] = fmt.Sprintf("%q", g)
		}
		state := ""
		if c.State != "" {
			state = ", state: " + c.State
		}
		fmt.Fprintf(&b, "  - {host: %s, id: %q, gpus: [%s], style: raw%s}\n", hosts[0][0], c.ID, strings.Join(gpus, ", "), state)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return fleet.Load(path)
}

// run runs argv and returns its combined output.
func run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// lines reads newline-terminated lines from r and sends each with the time it was read.
func lines(r io.Reader, ch chan<- time.Time) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		select {
		case ch <- time.Now():
		default:
		}
	}
}
