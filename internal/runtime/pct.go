package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gpupass/internal/atomicfile"
	"gpupass/internal/inputlimit"
	"gpupass/internal/pveconf"
	"gpupass/internal/runner"
)

// PCT is the Proxmox VE runtime: the pct command, configs under /etc/pve/lxc, and the
// start-time config PVE regenerates at /var/lib/lxc/<id>/config on every start.
type PCT struct {
	Runner runner.Runner
	// HostRoot prefixes /etc/pve, /var/lib/lxc, /run/lock and /proc; "" means "/".
	HostRoot string
	// Deadlines; zero means the Default* constants.
	QueryTimeout, StartTimeout, StopTimeout time.Duration
	// TaskWait bounds the wait for a PVE task that outlived its pct (killed at its
	// deadline); zero means DefaultTaskWait.
	TaskWait time.Duration
	// ProcRoot is where the host's /proc is; "" means <HostRoot>/proc. When
	// <ProcRoot>/net/unix cannot be read, State asks `pct status` instead.
	ProcRoot string
	// StateDir keeps the agent's own start records (<StateDir>/started/<id>.{config,json});
	// "" keeps none.
	StateDir string

	now func() time.Time // tests
}

// DefaultTaskWait bounds how long a start, stop or reboot whose pct was killed at its
// deadline waits for the PVE task to end before anything else touches the container.
const DefaultTaskWait = 5 * time.Minute

// ErrTaskRunning means a PVE task on the container still holds its config lock: nothing
// may race it (no rollback, no second start).
var ErrTaskRunning = errors.New("a PVE task still runs on the container")

var _ Runtime = (*PCT)(nil)

// startSlack is how much later than the init's start the start-time config may have been
// written and still count as the one it was started with (the clock error of processStart).
const startSlack = 100 * time.Millisecond

// Name implements Runtime.
func (p *PCT) Name() string { return "pct" }

func (p *PCT) root(elem ...string) string {
	r := p.HostRoot
	if r == "" {
		r = "/"
	}
	return filepath.Join(append([]string{r}, elem...)...)
}

// checkVMID accepts the ids PVE accepts: 100 to 999999999.
func checkVMID(id string) error {
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil || n < 100 || n > 999999999 || strconv.FormatUint(n, 10) != id {
		return fmt.Errorf("%w %q: a Proxmox container id is a number from 100 to 999999999", ErrInvalidID, id)
	}
	return nil
}

func (p *PCT) pct(ctx context.Context, timeout time.Duration, id string, args ...string) ([]byte, error) {
	out, err := run(ctx, p.Runner, timeout, append([]string{"pct"}, args...)...)
	if err != nil && strings.Contains(stderrOf(err), "does not exist") {
		return out, fmt.Errorf("%w: CT %s: %w", ErrNotFound, id, err)
	}
	return out, err
}

// action runs a pct command that changes the container (start, stop, reboot). Killing pct
// at its deadline does not end the PVE task: pct forks a worker that runs on and holds the
// config lock for the whole start/stop (the workers run under PVE::LXC::Config->lock_config:
// pve-container:src/PVE/API2/LXC/Status.pm:184 start, :295 stop; reboot under
// src/PVE/LXC.pm:3276; forked by pve-common:src/PVE/RESTEnvironment.pm:520 fork_worker;
// seen on the lab: TestLabPctTimeoutWaitsForTask). So after a timeout it waits, bounded by TaskWait, until that lock is free:
// whatever comes next (a rollback, a second start) never races the task. When the lock is
// still held at the bound, the error wraps ErrTaskRunning.
func (p *PCT) action(ctx context.Context, timeout time.Duration, id string, args ...string) ([]byte, error) {
	out, err := p.pct(ctx, timeout, id, args...)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return out, err
	}
	wait := orDefault(p.TaskWait, DefaultTaskWait)
	start := time.Now()
	f := &pveconf.File{LockPath: p.LockPath(id), LockTimeout: wait}
	release, lerr := f.Acquire()
	if lerr != nil {
		return out, fmt.Errorf("%w; %w: %s still held %v after pct was killed: %w", err, ErrTaskRunning, p.LockPath(id), wait, lerr)
	}
	release()
	return out, fmt.Errorf("%w (the PVE task ran on after pct was killed and ended %v later)", err, time.Since(start).Round(time.Millisecond))
}

// Status returns the fields of `pct status <id> --verbose` ("status", "pid", "uptime", ...).
func (p *PCT) Status(ctx context.Context, id string) (map[string]string, error) {
	if err := checkVMID(id); err != nil {
		return nil, err
	}
	out, err := p.pct(ctx, orDefault(p.QueryTimeout, DefaultQueryTimeout), id, "status", id, "--verbose")
	if err != nil {
		return nil, err
	}
	return parseColonLines(out), nil
}

func (p *PCT) procRoot() string {
	if p.ProcRoot != "" {
		return p.ProcRoot
	}
	return p.root("proc")
}

// Active returns the ids of the running containers of this node, as PVE itself finds them
// (pve-container:src/PVE/LXC.pm:83-105, list_active_containers): the abstract unix sockets
// "@/var/lib/lxc/<vmid>/command" that each running container's monitor listens on, read
// from /proc/net/unix. No command runs, and no pct (1.5-3 s of Perl start-up each).
func (p *PCT) Active(context.Context) (map[string]bool, error) {
	b, err := os.ReadFile(filepath.Join(p.procRoot(), "net/unix"))
	if err != nil {
		return nil, fmt.Errorf("list running containers: %w", err)
	}
	return parseNetUnix(b), nil
}

// parseNetUnix picks the container command sockets out of /proc/net/unix (the path is the
// 8th field; abstract names start with '@').
func parseNetUnix(b []byte) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 8 {
			continue
		}
		rest, ok := strings.CutPrefix(f[7], "@/var/lib/lxc/")
		if !ok {
			continue
		}
		if id, ok := strings.CutSuffix(rest, "/command"); ok && checkVMID(id) == nil {
			out[id] = true
		}
	}
	return out
}

// InitPIDs implements RunChecker: the init pid of every running container of this node from
// one `lxc-ls --active -f -F NAME,PID` (a C program that asks each container's command
// socket, as lxc-info -p does; PVE's own find_lxc_pid runs lxc-info,
// pve-container:src/PVE/LXC.pm:447-460), so a status of many containers runs one command.
func (p *PCT) InitPIDs(ctx context.Context) (map[string]int, error) {
	out, err := run(ctx, p.Runner, orDefault(p.QueryTimeout, DefaultQueryTimeout), "lxc-ls", "--active", "-f", "-F", "NAME,PID")
	if err != nil {
		return nil, fmt.Errorf("init pids of the running containers: %w", err)
	}
	return parseLXCLsPIDs(out)
}

// parseLXCLsPIDs parses `lxc-ls -f -F NAME,PID`: a "NAME PID" header, then one container a
// line; a container caught stopping prints "-" as its pid and is left out.
func parseLXCLsPIDs(out []byte) (map[string]int, error) {
	pids := map[string]int{}
	for n, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
			continue
		case n == 0 && len(f) == 2 && f[0] == "NAME" && f[1] == "PID":
			continue
		case len(f) != 2:
			return nil, fmt.Errorf("parse lxc-ls line %d %q: want NAME PID", n+1, line)
		}
		if f[1] == "-" {
			continue
		}
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 0 {
			return nil, fmt.Errorf("parse lxc-ls line %d %q: %q is not a pid", n+1, line, f[1])
		}
		pids[f[0]] = pid
	}
	return pids, nil
}

// Running implements runtime.RunChecker: whether the container runs, from /proc/net/unix
// (no command). ErrNotFound when it has no config on this node.
func (p *PCT) Running(ctx context.Context, id string, active map[string]bool) (bool, error) {
	if err := checkVMID(id); err != nil {
		return false, err
	}
	if _, err := os.Stat(p.ConfigPath(id)); errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("%w: CT %s has no config %s", ErrNotFound, id, p.ConfigPath(id))
	}
	return active[id], nil
}

// State implements Runtime. Where /proc/net/unix can be read it runs no pct: running from
// the command socket (Active), the init's pid from `lxc-info -n <id> -p` (as PVE's own
// find_lxc_pid: pve-container:src/PVE/LXC.pm:447-460). Else from `pct status <id>
// --verbose` ("status: running", "pid: N").
func (p *PCT) State(ctx context.Context, id string) (State, error) {
	if err := checkVMID(id); err != nil {
		return State{}, err
	}
	if active, err := p.Active(ctx); err == nil {
		running, err := p.Running(ctx, id, active)
		if err != nil || !running {
			return State{}, err
		}
		out, err := run(ctx, p.Runner, orDefault(p.QueryTimeout, DefaultQueryTimeout), "lxc-info", "-n", id, "-p")
		if err != nil {
			return State{}, fmt.Errorf("pid of CT %s: %w", id, err)
		}
		pid, _ := strconv.Atoi(parseColonLines(out)["PID"])
		if pid <= 0 {
			return State{}, fmt.Errorf("pid of CT %s: lxc-info -n %s -p printed no pid (%q)", id, id, strings.TrimSpace(string(out)))
		}
		return State{Running: true, InitPID: pid}, nil
	}
	st, err := p.Status(ctx, id)
	if err != nil {
		return State{}, err
	}
	switch st["status"] {
	case "running":
		pid, err := strconv.Atoi(st["pid"])
		if err != nil || pid <= 0 {
			return State{}, fmt.Errorf("pct status %s --verbose: running but pid %q is not a pid", id, st["pid"])
		}
		return State{Running: true, InitPID: pid}, nil
	case "stopped":
		return State{}, nil
	case "":
		return State{}, fmt.Errorf("pct status %s --verbose: no status line", id)
	default:
		return State{}, fmt.Errorf("pct status %s --verbose: unknown status %q", id, st["status"])
	}
}

// Start implements Runtime (`pct start <id>`).
func (p *PCT) Start(ctx context.Context, id string) error {
	if err := checkVMID(id); err != nil {
		return err
	}
	_, err := p.action(ctx, orDefault(p.StartTimeout, DefaultStartTimeout), id, "start", id)
	if err != nil && strings.Contains(stderrOf(err), "already running") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("start CT %s: %w", id, err)
	}
	p.recordStart(ctx, id)
	return nil
}

// Stop implements Runtime (`pct stop <id>`: PVE's immediate stop).
func (p *PCT) Stop(ctx context.Context, id string) error {
	if err := checkVMID(id); err != nil {
		return err
	}
	_, err := p.action(ctx, orDefault(p.StopTimeout, DefaultStopTimeout), id, "stop", id)
	if err != nil && strings.Contains(stderrOf(err), "not running") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop CT %s: %w", id, err)
	}
	return nil
}

// Restart implements Runtime: `pct reboot <id>` when running (there is no pct restart; the
// reboot shuts down cleanly, starts again and so regenerates the start-time config), else
// `pct start <id>`.
func (p *PCT) Restart(ctx context.Context, id string) error {
	st, err := p.State(ctx, id)
	if err != nil {
		return fmt.Errorf("restart CT %s: %w", id, err)
	}
	if !st.Running {
		return p.Start(ctx, id)
	}
	stop := orDefault(p.StopTimeout, DefaultStopTimeout)
	deadline := stop + orDefault(p.StartTimeout, DefaultStartTimeout) + 10*time.Second
	secs := strconv.Itoa(int(stop / time.Second))
	if _, err := p.action(ctx, deadline, id, "reboot", id, "--timeout", secs); err != nil {
		return fmt.Errorf("restart CT %s: %w", id, err)
	}
	p.recordStart(ctx, id)
	return nil
}

// ConfigPath implements Runtime: <HostRoot>/etc/pve/lxc/<id>.conf.
func (p *PCT) ConfigPath(id string) string { return p.root("etc/pve/lxc", id+".conf") }

// ConfigFormat implements Runtime.
func (p *PCT) ConfigFormat() Format { return FormatPVE }

// LockPath implements Runtime: the lock pct itself takes, <HostRoot>/run/lock/lxc/pve-config-<id>.lock.
func (p *PCT) LockPath(id string) string {
	return p.root("run/lock/lxc", "pve-config-"+id+".lock")
}

// StartedPath is where PVE writes the LXC config it starts the container with.
func (p *PCT) StartedPath(id string) string { return p.root("var/lib/lxc", id, "config") }

// StartedConfig implements Runtime: the config the running init was started with. PVE
// regenerates <HostRoot>/var/lib/lxc/<id>/config at every start, but also rewrites it for a
// running container (`pct set` of tags or memory), so the file alone proves the start only
// while it is older than the init. The agent therefore keeps its own start record, tied to
// the init's pid and start time (as the lxc runtime does): taken the first time the file is
// seen to be the start's (here, and after every start through this runtime), and used from
// then on whatever later rewrites the file.
func (p *PCT) StartedConfig(ctx context.Context, id string, st State) ([]byte, error) {
	if !st.Running || st.InitPID <= 0 {
		return nil, fmt.Errorf("%w: CT %s is not running", ErrNoStartedConfig, id)
	}
	ticks, terr := startTicks(p.procRoot(), st.InitPID)
	if terr == nil {
		if b, ok := p.recorded(id, st.InitPID, ticks); ok {
			return b, nil
		}
	}
	path := p.StartedPath(id)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing", ErrNoStartedConfig, path)
	}
	if err != nil {
		return nil, fmt.Errorf("read start-time config: %w", err)
	}
	now := time.Now
	if p.now != nil {
		now = p.now
	}
	started, err := processStart(p.procRoot(), st.InitPID, now())
	if err != nil {
		return nil, fmt.Errorf("%w: start of CT %s init %d: %w", ErrNoStartedConfig, id, st.InitPID, err)
	}
	if fi.ModTime().After(started.Add(startSlack)) {
		return nil, fmt.Errorf("%w: %s was written at %s, after CT %s started at %s, and there is no start record of this init",
			ErrNoStartedConfig, path, fi.ModTime().UTC().Format(time.RFC3339Nano), id, started.UTC().Format(time.RFC3339Nano))
	}
	b, err := inputlimit.ReadFile(path, inputlimit.ContainerConf)
	if err != nil {
		return nil, fmt.Errorf("read start-time config: %w", err)
	}
	if terr == nil {
		// Best effort: without the record, the next rewrite leaves "no record".
		_ = p.record(id, startRecord{InitPID: st.InitPID, StartTicks: ticks, Started: started.UTC().Format(time.RFC3339Nano)}, b)
	}
	return b, nil
}

func (p *PCT) recordPaths(id string) (cfg, rec string) {
	dir := filepath.Join(p.StateDir, "started")
	return filepath.Join(dir, id+".config"), filepath.Join(dir, id+".json")
}

// record keeps cfg as the start-time config of the init rec names.
func (p *PCT) record(id string, rec startRecord, cfg []byte) error {
	if p.StateDir == "" {
		return nil
	}
	cp, rp := p.recordPaths(id)
	if err := os.MkdirAll(filepath.Dir(cp), 0o700); err != nil {
		return fmt.Errorf("record start of CT %s: %w", id, err)
	}
	// The config first: a record file names only a config that is complete.
	if err := atomicfile.Write(cp, cfg, 0o600); err != nil {
		return fmt.Errorf("record start of CT %s: %w", id, err)
	}
	j, _ := json.Marshal(rec)
	if err := atomicfile.Write(rp, j, 0o600); err != nil {
		return fmt.Errorf("record start of CT %s: %w", id, err)
	}
	return nil
}

// recorded returns the recorded start-time config when the record is of this very init
// (pid and start time: a reused pid does not match).
func (p *PCT) recorded(id string, pid int, ticks uint64) ([]byte, bool) {
	if p.StateDir == "" {
		return nil, false
	}
	cp, rp := p.recordPaths(id)
	j, err := os.ReadFile(rp)
	if err != nil {
		return nil, false
	}
	var rec startRecord
	if json.Unmarshal(j, &rec) != nil || rec.InitPID != pid || rec.StartTicks != ticks {
		return nil, false
	}
	b, err := os.ReadFile(cp)
	return b, err == nil
}

// recordStart takes the start record right after a start through this runtime.
func (p *PCT) recordStart(ctx context.Context, id string) {
	if p.StateDir == "" {
		return
	}
	if st, err := p.State(ctx, id); err == nil {
		_, _ = p.StartedConfig(ctx, id, st)
	}
}

// parseColonLines parses "key: value" lines; later keys win, other lines are skipped.
func parseColonLines(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			continue
		}
		m[k] = strings.TrimSpace(v)
	}
	return m
}
