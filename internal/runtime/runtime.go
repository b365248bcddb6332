// Package runtime is container lifecycle behind one interface, for the host agent: pct on
// Proxmox VE and plain LXC (lxc-* tools). Every external command goes through
// internal/runner with a deadline, and each runtime names where the container's config
// lives, the lock editors take, and the config the running container was started with (the
// evidence the restart rule needs; DESIGN.md "The restart rule").
package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"gpupass/internal/pveconf"
	"gpupass/internal/runner"
)

// Runtime manages the containers of this node.
type Runtime interface {
	// Name is "pct" or "lxc".
	Name() string
	// State is whether the container runs, and its init's host PID when it does.
	State(ctx context.Context, id string) (State, error)
	// Start starts a stopped container; starting a running one is not an error.
	Start(ctx context.Context, id string) error
	// Stop stops a running container; stopping a stopped one is not an error.
	Stop(ctx context.Context, id string) error
	// Restart makes a running container start again from its current config (a stopped
	// container is started).
	Restart(ctx context.Context, id string) error
	// ConfigPath is the file an editor changes.
	ConfigPath(id string) string
	// ConfigFormat is the syntax of ConfigPath.
	ConfigFormat() Format
	// StartedConfig is the config the running container was started with, st being the
	// state the caller just read (State, or RunChecker for a whole request); ErrNoStartedConfig
	// when there is no trustworthy record of it (not running, started by someone else, or
	// the record was changed after the start).
	StartedConfig(ctx context.Context, id string, st State) ([]byte, error)
	// LockPath is the flock file that guards edits of ConfigPath (its directory may not
	// exist yet).
	LockPath(id string) string
}

// RunChecker is implemented by runtimes that tell whether containers run without running
// a command per container: Active once per request, then Running per container. The
// status path uses it.
type RunChecker interface {
	Active(ctx context.Context) (map[string]bool, error)
	Running(ctx context.Context, id string, active map[string]bool) (bool, error)
	// InitPIDs is the init pid of every running container, from one command for the
	// whole request (the restart rule's evidence needs the init).
	InitPIDs(ctx context.Context) (map[string]int, error)
}

// State is what the runtime says about a container.
type State struct {
	Running bool
	InitPID int // host PID of the container's init; 0 when not running
}

// Format is the syntax of a container config file (the editor's type).
type Format = pveconf.Format

const (
	// FormatPVE is the Proxmox `key: value` format with sections.
	FormatPVE = pveconf.PVE
	// FormatLXC is the plain LXC `key = value` format.
	FormatLXC = pveconf.LXC
)

var (
	// ErrNoStartedConfig means the config the running container was started with is not known.
	ErrNoStartedConfig = errors.New("no record of the config the container was started with")
	// ErrNotFound means the container does not exist on this node.
	ErrNotFound = errors.New("container not found")
	// ErrInvalidID means the id cannot name a container of this runtime.
	ErrInvalidID = errors.New("invalid container id")
)

// Default deadlines of the commands.
const (
	DefaultQueryTimeout = 30 * time.Second  // status, info, config, list
	DefaultStartTimeout = 120 * time.Second // start (PVE mounts volumes, runs hooks)
	DefaultStopTimeout  = 120 * time.Second // stop, and each half of a reboot
)

// run runs argv with a deadline and turns a timeout into an error that says so.
func run(ctx context.Context, r runner.Runner, timeout time.Duration, argv ...string) ([]byte, error) {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out, err := r.Run(cctx, argv...)
	if err != nil && cctx.Err() != nil && ctx.Err() == nil {
		return out, fmt.Errorf("run %s: no answer after %v: %w (%w)", strings.Join(argv, " "), timeout, context.DeadlineExceeded, err)
	}
	return out, err
}

// stderrOf returns the standard error of a failed command, lower-cased, or "".
func stderrOf(err error) string {
	var ee *runner.ExitError
	if errors.As(err, &ee) {
		return strings.ToLower(ee.Stderr)
	}
	return ""
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
