package runtime

import (
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
	"gpupass/internal/runner"
)

// LXC is the plain LXC runtime: lxc-info, lxc-start and lxc-stop on <LXCPath>/<id>/config.
// Start snapshots the config into StateDir and starts the container from that snapshot
// (lxc-start -f), so the record of what the container runs with is exact by construction.
type LXC struct {
	Runner runner.Runner
	// LXCPath is the lxcpath (lxc-* -P); "" means /var/lib/lxc.
	LXCPath string
	// StateDir keeps the start-time configs, their records and start logs; required for
	// Start, Restart and StartedConfig.
	StateDir string
	// ProcRoot is where /proc is; "" means /proc.
	ProcRoot string
	// Deadlines; zero means the Default* constants. StopTimeout is how long a clean stop may
	// take before lxc-stop kills the container.
	QueryTimeout, StartTimeout, StopTimeout time.Duration
}

var _ Runtime = (*LXC)(nil)

// startRecord ties a start-time config to one instance of the container's init.
type startRecord struct {
	InitPID    int    `json:"init_pid"`
	StartTicks uint64 `json:"start_ticks"`
	Started    string `json:"started"`
}

// Name implements Runtime.
func (l *LXC) Name() string { return "lxc" }

func (l *LXC) lxcpath() string {
	if l.LXCPath == "" {
		return "/var/lib/lxc"
	}
	return l.LXCPath
}

func (l *LXC) procRoot() string {
	if l.ProcRoot == "" {
		return "/proc"
	}
	return l.ProcRoot
}

// checkName accepts names that are one path element.
func checkName(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00 \t\n") {
		return fmt.Errorf("%w %q: an LXC container name is one path element without blanks", ErrInvalidID, id)
	}
	return nil
}

func (l *LXC) lxc(ctx context.Context, timeout time.Duration, cmd, id string, args ...string) ([]byte, error) {
	argv := append([]string{cmd, "-P", l.lxcpath(), "-n", id}, args...)
	out, err := run(ctx, l.Runner, timeout, argv...)
	if err != nil {
		se := stderrOf(err)
		if strings.Contains(se, "doesn't exist") || strings.Contains(se, "does not exist") || strings.Contains(se, "not found") {
			return out, fmt.Errorf("%w: %s: %w", ErrNotFound, id, err)
		}
	}
	return out, err
}

// State implements Runtime (`lxc-info -s -p -H`: the state line, then the pid when running).
func (l *LXC) State(ctx context.Context, id string) (State, error) {
	if err := checkName(id); err != nil {
		return State{}, err
	}
	if _, err := os.Stat(l.ConfigPath(id)); errors.Is(err, fs.ErrNotExist) {
		return State{}, fmt.Errorf("%w: %s has no config %s", ErrNotFound, id, l.ConfigPath(id))
	}
	out, err := l.lxc(ctx, orDefault(l.QueryTimeout, DefaultQueryTimeout), "lxc-info", id, "-s", "-p", "-H")
	if err != nil {
		return State{}, fmt.Errorf("state of %s: %w", id, err)
	}
	return parseLXCInfo(id, out)
}

// parseLXCInfo parses `lxc-info -s -p -H`: "State: RUNNING" and "PID: N" lines (with one
// key asked, lxc-info prints the bare value instead, which is accepted as the state).
func parseLXCInfo(id string, out []byte) (State, error) {
	var state, pidText string
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		switch {
		case !ok && state == "" && strings.TrimSpace(line) != "":
			state = strings.TrimSpace(line)
		case ok && strings.TrimSpace(k) == "State":
			state = strings.TrimSpace(v)
		case ok && strings.TrimSpace(k) == "PID":
			pidText = strings.TrimSpace(v)
		}
	}
	switch state {
	case "RUNNING":
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			return State{}, fmt.Errorf("lxc-info %s: RUNNING with pid %q, not a pid", id, pidText)
		}
		return State{Running: true, InitPID: pid}, nil
	case "STOPPED":
		return State{}, nil
	case "":
		return State{}, fmt.Errorf("lxc-info %s: no state in %q", id, truncate(out))
	default:
		// STARTING, STOPPING, ABORTING, FREEZING, FROZEN, THAWED: a transition or a frozen
		// container; neither is a state to decide on.
		return State{}, fmt.Errorf("lxc-info %s: state %s: wait until it is RUNNING or STOPPED", id, state)
	}
}

func (l *LXC) startedPath(id string) string {
	return filepath.Join(l.StateDir, "started", id+".config")
}
func (l *LXC) recordPath(id string) string { return filepath.Join(l.StateDir, "started", id+".json") }

// StartLogPath is the LXC log of the latest start of id by this runtime.
func (l *LXC) StartLogPath(id string) string { return filepath.Join(l.StateDir, "started", id+".log") }

// Start implements Runtime: snapshot <lxcpath>/<id>/config into StateDir, lxc-start -f the
// snapshot, wait until RUNNING, then record which init runs with it.
func (l *LXC) Start(ctx context.Context, id string) error {
	if l.StateDir == "" {
		return errors.New("start container: LXC.StateDir is not set")
	}
	st, err := l.State(ctx, id)
	if err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	if st.Running {
		return nil
	}
	cfg, err := inputlimit.ReadFile(l.ConfigPath(id), inputlimit.ContainerConf)
	if err != nil {
		return fmt.Errorf("start %s: read config: %w", id, err)
	}
	dir := filepath.Join(l.StateDir, "started")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("start %s: %w", id, err)
	}
	// No record survives a start that does not complete.
	for _, p := range []string{l.recordPath(id), l.startedPath(id), l.StartLogPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("start %s: %w", id, err)
		}
	}
	if err := atomicfile.Write(l.startedPath(id), cfg, 0o600); err != nil {
		return fmt.Errorf("start %s: snapshot config: %w", id, err)
	}
	timeout := orDefault(l.StartTimeout, DefaultStartTimeout)
	if _, err := l.lxc(ctx, timeout, "lxc-start", id, "-f", l.startedPath(id), "-o", l.StartLogPath(id), "-l", "INFO"); err != nil {
		os.Remove(l.startedPath(id))
		return fmt.Errorf("start %s: %w%s", id, err, l.logErrors(id))
	}
	secs := strconv.Itoa(max(1, int(timeout/time.Second)))
	if _, err := l.lxc(ctx, timeout+5*time.Second, "lxc-wait", id, "-s", "RUNNING", "-t", secs); err != nil {
		os.Remove(l.startedPath(id))
		return fmt.Errorf("start %s: wait until running: %w%s", id, err, l.logErrors(id))
	}
	st, err = l.State(ctx, id)
	if err == nil && !st.Running {
		err = errors.New("stopped again right after the start")
	}
	if err != nil {
		os.Remove(l.startedPath(id))
		return fmt.Errorf("start %s: %w%s", id, err, l.logErrors(id))
	}
	ticks, err := startTicks(l.procRoot(), st.InitPID)
	if err != nil {
		os.Remove(l.startedPath(id))
		return fmt.Errorf("start %s: record init %d: %w", id, st.InitPID, err)
	}
	rec, _ := json.Marshal(startRecord{InitPID: st.InitPID, StartTicks: ticks, Started: time.Now().UTC().Format(time.RFC3339Nano)})
	if err := atomicfile.Write(l.recordPath(id), rec, 0o600); err != nil {
		return fmt.Errorf("start %s: record start: %w", id, err)
	}
	return nil
}

// ForgetStart removes the start record of id (its snapshot config and the init it
// names): a rollback that stops a container the apply started leaves no record of a
// start that was undone.
func (l *LXC) ForgetStart(id string) error {
	for _, p := range []string{l.recordPath(id), l.startedPath(id)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forget start of %s: %w", id, err)
		}
	}
	return nil
}

// logErrors returns the ERROR lines of the start log, for an error message.
func (l *LXC) logErrors(id string) string {
	b, err := os.ReadFile(l.StartLogPath(id))
	if err != nil {
		return ""
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, " ERROR ") {
			lines = append(lines, strings.TrimSpace(line))
		}
	}
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	if len(lines) == 0 {
		return " (log: " + l.StartLogPath(id) + ")"
	}
	return "\n" + strings.Join(lines, "\n") + "\n(log: " + l.StartLogPath(id) + ")"
}

// Stop implements Runtime: a clean stop (lxc.signal.halt) that lxc-stop turns into a kill
// after StopTimeout; if lxc-stop itself fails or hangs, lxc-stop -k.
func (l *LXC) Stop(ctx context.Context, id string) error {
	st, err := l.State(ctx, id)
	if err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	if !st.Running {
		return nil
	}
	stop := orDefault(l.StopTimeout, DefaultStopTimeout)
	secs := strconv.Itoa(max(1, int(stop/time.Second)))
	_, err = l.lxc(ctx, stop+10*time.Second, "lxc-stop", id, "-t", secs)
	if err != nil && ctx.Err() == nil {
		var ee *runner.ExitError
		if errors.As(err, &ee) && ee.ExitCode == 2 { // "not running": stopped meanwhile
			err = nil
		} else if _, kerr := l.lxc(ctx, orDefault(l.QueryTimeout, DefaultQueryTimeout), "lxc-stop", id, "-k"); kerr != nil {
			err = fmt.Errorf("%w; then lxc-stop -k: %w", err, kerr)
		} else {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("stop %s: %w", id, err)
	}
	if st, err := l.State(ctx, id); err != nil || st.Running {
		return fmt.Errorf("stop %s: still running after lxc-stop (%v)", id, err)
	}
	return nil
}

// Restart implements Runtime: Stop, then Start (which records the new start-time config).
func (l *LXC) Restart(ctx context.Context, id string) error {
	if err := l.Stop(ctx, id); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	if err := l.Start(ctx, id); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return nil
}

// ConfigPath implements Runtime: <lxcpath>/<id>/config.
func (l *LXC) ConfigPath(id string) string { return filepath.Join(l.lxcpath(), id, "config") }

// ConfigFormat implements Runtime.
func (l *LXC) ConfigFormat() Format { return FormatLXC }

// LockPath implements Runtime: <StateDir>/locks/<id>.lock (plain LXC has no config lock of
// its own).
func (l *LXC) LockPath(id string) string { return filepath.Join(l.StateDir, "locks", id+".lock") }

// StartedConfig implements Runtime: the snapshot taken by the Start that started the
// running init; ErrNoStartedConfig when the container runs an init this runtime did not
// start (someone ran lxc-start, or it rebooted itself).
func (l *LXC) StartedConfig(ctx context.Context, id string, st State) ([]byte, error) {
	if !st.Running || st.InitPID <= 0 {
		return nil, fmt.Errorf("%w: %s is not running", ErrNoStartedConfig, id)
	}
	b, err := os.ReadFile(l.recordPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s was not started by gpupass", ErrNoStartedConfig, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read start record: %w", err)
	}
	var rec startRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoStartedConfig, l.recordPath(id), err)
	}
	ticks, err := startTicks(l.procRoot(), st.InitPID)
	if err != nil {
		return nil, fmt.Errorf("%w: %s init %d: %w", ErrNoStartedConfig, id, st.InitPID, err)
	}
	if rec.InitPID != st.InitPID || rec.StartTicks != ticks {
		return nil, fmt.Errorf("%w: %s runs init %d, not the init %d gpupass started at %s",
			ErrNoStartedConfig, id, st.InitPID, rec.InitPID, rec.Started)
	}
	cfg, err := inputlimit.ReadFile(l.startedPath(id), inputlimit.ContainerConf)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s is missing", ErrNoStartedConfig, l.startedPath(id))
	}
	if err != nil {
		return nil, fmt.Errorf("read start-time config: %w", err)
	}
	return cfg, nil
}
