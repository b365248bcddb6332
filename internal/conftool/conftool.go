// Package conftool is the local CLI that edits one container config without the daemon:
// `gpupass-host-agent conf plan|apply`. It discovers the host's GPUs, renders the managed
// entries for the desired GPUs (package passthrough), prints a unified diff, and for
// apply writes the file the safe way (package pveconf: lock, digest re-check, temp file
// and rename, backup).
//
// Exit codes travel in *ExitError, which main turns into the process status: 0 nothing to
// change (plan) or written (apply); 2 changes pending (plan); 1 any error (unknown GPU,
// missing node, unparsable config, lock held, digest changed), the file untouched.
package conftool

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"gpupass/internal/gpu"
	"gpupass/internal/hostdriver"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitError1  = 1
	ExitPending = 2
)

// ExitError carries the process exit code; Err (nil for "changes pending") is the message
// main prints.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode maps an error from the command to the process status: nil 0, *ExitError its
// Code, anything else (flag errors) 1.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitError1
}

// DefaultStateDir is where apply keeps backups (<state-dir>/backups).
const DefaultStateDir = "/var/lib/gpupass"

type options struct {
	conf, gpus, style, hostRoot, stateDir, format, guestDir string
	driver, driverHook                                      string
	lockTimeout                                             time.Duration
	migCaps                                                 bool
}

// seams for tests.
type env struct {
	discover    func(root string) (*gpu.Inventory, error)
	beforeWrite func(path string)
	now         func() time.Time
}

// NewCommand is the `conf` command with its plan and apply subcommands.
func NewCommand() *cobra.Command { return newCommand(env{discover: gpu.Discover}) }

func newCommand(e env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conf",
		Short: "Plan or apply the GPU entries of one container config, locally",
		Long: `conf edits one container config on this host without the daemon: the Proxmox VE
config (/etc/pve/lxc/<id>.conf, "key: value") or a plain LXC config
(/var/lib/lxc/<name>/config, "key = value").

It owns the GPU entries of the main section (every entry passing /dev/nvidia* or
/dev/nvidia-caps/*, every cgroup allow rule for an NVIDIA major, stale ones next to them
included, and the guest socket mount) and renders them from --gpus; every other line,
and every [snapshot] and [pve:pending] section, stays byte-identical. Majors are read
from /proc/devices, GPU minors from /proc/driver/nvidia/gpus/*/information: the index
of a GPU is not its minor.

Exit status: 0 nothing to change (or written, for apply), 2 changes pending (plan),
1 error (unknown GPU, missing device node, unparsable config, lock held); on error the
file is untouched.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newSub(e, false), newSub(e, true))
	return cmd
}

func newSub(e env, apply bool) *cobra.Command {
	var o options
	use, short, example := "plan", "Print the diff that apply would write (exit 2 when there is one)",
		`  gpupass-host-agent conf plan --conf /etc/pve/lxc/901.conf --gpus 0,1
  gpupass-host-agent conf plan --conf /etc/pve/lxc/901.conf --gpus GPU-d82c56db-4d07-1592-0f97-2ec890a55c77 --style dev
  gpupass-host-agent conf plan --conf /var/lib/lxc/gpu1/config --gpus 0000:41:00.0`
	if apply {
		use, short, example = "apply", "Write the GPU entries (locked, digest-checked, atomic, backed up) and print the diff",
			`  gpupass-host-agent conf apply --conf /etc/pve/lxc/901.conf --gpus 1
  gpupass-host-agent conf apply --conf /etc/pve/lxc/901.conf --gpus none
  gpupass-host-agent conf apply --conf /etc/pve/lxc/901.conf --gpus 0 --guest-socket-dir /run/gpupass/guests/901`
	}
	c := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SilenceUsage = true
			return run(e, o, apply, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	c.SilenceErrors = true
	f := c.Flags()
	f.StringVar(&o.conf, "conf", "", "container config file (required)")
	f.StringVar(&o.gpus, "gpus", "", `GPUs to pass, comma separated: index ("1"), UUID ("GPU-...") or PCI bus id ("0000:41:00.0" or "41:00.0"); "none" removes them (required)`)
	f.StringVar(&o.style, "style", "raw", "raw (lxc.cgroup2.devices.allow + lxc.mount.entry) or dev (PVE 8.1+ devN entries)")
	f.StringVar(&o.hostRoot, "host-root", "/", "prefix for /proc, /dev and /run (test and simulated hosts)")
	f.StringVar(&o.format, "format", "auto", "config syntax: auto, pve (key: value) or lxc (key = value)")
	f.BoolVar(&o.migCaps, "mig-caps", false, "also pass /dev/nvidia-caps/* (MIG config and monitor capabilities); whole GPUs get none without it")
	f.StringVar(&o.driver, "driver", "own", "own (the template brings its NVIDIA userspace) or host (the host's userspace of the loaded module is bound in at every start by an lxc.hook.mount; docs/driver.md)")
	f.StringVar(&o.driverHook, "driver-hook", "", `with --driver host: the hook command line (default: this program's path, "driver hook", and --host-root when not /)`)
	f.StringVar(&o.guestDir, "guest-socket-dir", "", "host directory bind-mounted at /dev/gpupass in the container for the guest agent (an entry at the old run/gpupass is moved there); empty: no guest mount (an existing one is removed)")
	if apply {
		f.StringVar(&o.stateDir, "state-dir", DefaultStateDir, "state directory; the previous config is kept under <state-dir>/backups")
		f.DurationVar(&o.lockTimeout, "lock-timeout", pveconf.DefaultLockTimeout, "how long to wait for the config lock")
	}
	c.MarkFlagRequired("conf")
	c.MarkFlagRequired("gpus")
	return c
}

func fail(format string, args ...any) error {
	return &ExitError{Code: ExitError1, Err: fmt.Errorf(format, args...)}
}

func run(e env, o options, apply bool, stdout, stderr io.Writer) error {
	desired, err := desiredFrom(o)
	if err != nil {
		return &ExitError{Code: ExitError1, Err: err}
	}
	if desired.DriverHook != "" {
		// Preflight: the hook refuses the start on the same grounds, later.
		set, err := hostdriver.Find(o.hostRoot)
		if err != nil {
			return fail("--driver host: %w", err)
		}
		fmt.Fprintf(stderr, "driver: host %s (%d libraries, %d tools from %s)\n", set.Version, len(set.Libs), len(set.Tools), strings.Join(set.Dirs, ", "))
	}
	file := fileFor(o)
	file.Now = e.now
	b, digest, err := file.Read()
	if err != nil {
		return fail("%w", err)
	}
	format, err := formatFor(o, b)
	if err != nil {
		return &ExitError{Code: ExitError1, Err: err}
	}
	cfg, err := pveconf.Parse(b, format)
	if err != nil {
		return fail("parse %s (%s format): %w", o.conf, format, err)
	}
	inv, err := e.discover(o.hostRoot)
	switch {
	case err != nil && len(desired.GPUs) == 0 && (errors.Is(err, gpu.ErrNoDriver) || errors.Is(err, gpu.ErrNoGPUs)):
		fmt.Fprintf(stderr, "note: %v; removing the GPU entries found by their paths and neighbours\n", err)
		inv = nil
	case err != nil:
		return fail("discover GPUs under %s: %w", o.hostRoot, err)
	}
	if inv != nil && inv.Simulated {
		fmt.Fprintf(stderr, "note: %s is a SIMULATED GPU host (stand-in device numbers)\n", o.hostRoot)
	}
	res, err := passthrough.Plan(cfg, inv, desired)
	if err != nil {
		return fail("plan %s: %w", o.conf, err)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	for _, g := range res.GPUs {
		fmt.Fprintf(stderr, "gpu %s: %s -> %s\n", g, g.Model, g.DevPath())
	}
	if !res.Changed {
		fmt.Fprintf(stderr, "nothing to change: %s already has the desired GPU entries\n", o.conf)
		return nil
	}
	adds, removes := 0, 0
	for _, ch := range res.Changes {
		if ch.Op == passthrough.Add {
			adds++
		} else {
			removes++
		}
	}
	if !apply {
		io.WriteString(stdout, res.Diff)
		fmt.Fprintf(stderr, "%d line(s) to add, %d to remove; run apply to write them\n", adds, removes)
		return &ExitError{Code: ExitPending}
	}
	if e.beforeWrite != nil {
		e.beforeWrite(o.conf)
	}
	backup, err := file.Write(res.New, digest)
	if err != nil {
		return fail("apply: %w", err)
	}
	io.WriteString(stdout, res.Diff)
	fmt.Fprintf(stderr, "wrote %s: %d line(s) added, %d removed", o.conf, adds, removes)
	if backup != "" {
		fmt.Fprintf(stderr, " (previous version: %s)", backup)
	}
	fmt.Fprintln(stderr, "\na running container picks this up only after a restart (pct reboot, or lxc-stop and lxc-start)")
	return nil
}

func desiredFrom(o options) (passthrough.Desired, error) {
	var d passthrough.Desired
	style, err := passthrough.ParseStyle(o.style)
	if err != nil {
		return d, fmt.Errorf("--style: %w", err)
	}
	d.Style, d.GuestSocketDir, d.Label, d.MIGCaps = style, o.guestDir, o.conf, o.migCaps
	switch o.driver {
	case "own", "":
		if o.driverHook != "" {
			return d, errors.New("--driver-hook needs --driver host")
		}
	case "host":
		d.DriverHook = o.driverHook
		if d.DriverHook == "" {
			d.DriverHook = hostdriver.HookCommand(o.hostRoot)
		}
	default:
		return d, fmt.Errorf("--driver %q: want own or host", o.driver)
	}
	switch strings.TrimSpace(o.gpus) {
	case "":
		return d, errors.New(`--gpus is empty: list GPUs (index, UUID or bus id, comma separated) or say "none"`)
	case "none":
		return d, nil
	}
	for _, s := range strings.Split(o.gpus, ",") {
		s = strings.TrimSpace(s)
		if s == "" || s == "none" {
			return d, fmt.Errorf("--gpus %q: empty item or \"none\" in a list", o.gpus)
		}
		d.GPUs = append(d.GPUs, s)
	}
	return d, nil
}

// fileFor picks the lock: PVE's /run/lock/lxc/pve-config-<id>.lock (under --host-root)
// for a config under <host-root>/etc/pve, else a lock file beside the config.
func fileFor(o options) *pveconf.File {
	f := &pveconf.File{Path: o.conf, LockTimeout: o.lockTimeout}
	if o.stateDir != "" {
		f.BackupDir = filepath.Join(o.stateDir, "backups")
	}
	abs, err := filepath.Abs(o.conf)
	if err != nil {
		abs = o.conf
	}
	pve := filepath.Join(o.hostRoot, "etc/pve") + "/"
	if strings.HasPrefix(abs, pve) && strings.HasSuffix(abs, ".conf") {
		f.LockPath = pveconf.LockPathFor(o.hostRoot, strings.TrimSuffix(filepath.Base(abs), ".conf"))
	} else {
		f.LockPath = abs + ".lock"
	}
	return f
}

func formatFor(o options, b []byte) (pveconf.Format, error) {
	switch o.format {
	case "pve":
		return pveconf.PVE, nil
	case "lxc":
		return pveconf.LXC, nil
	case "auto", "":
		abs, err := filepath.Abs(o.conf)
		if err != nil {
			abs = o.conf
		}
		if pveconf.IsPVEPath(abs, o.hostRoot) {
			// PVE's file, whatever its first lines look like (raw lxc.* keys may come first).
			return pveconf.PVE, nil
		}
		if len(strings.TrimSpace(string(b))) == 0 && filepath.Base(o.conf) == "config" {
			return pveconf.LXC, nil
		}
		return pveconf.DetectFormat(b), nil
	}
	return 0, fmt.Errorf("--format %q: want auto, pve or lxc", o.format)
}

// Report prints err (when it carries a message) to w and returns the exit code.
func Report(w io.Writer, prog string, err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Err != nil {
		fmt.Fprintf(w, "%s: %v\n", prog, err)
	}
	return ExitCode(err)
}
