// Package cli is the gpupass command line: the cobra commands, their flags and exit codes
// (0 ok / nothing to change, 2 changes pending or not ready, 1 error), wired to the
// controller, the fleet file, the PKI and the renderers.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"gpupass/internal/buildinfo"
	"gpupass/internal/controller"
	"gpupass/internal/controller/render"
	"gpupass/internal/fleet"
	"gpupass/internal/log"
	"gpupass/internal/manpage"
	"gpupass/internal/pki"
)

// IO is what the commands read and write.
type IO struct {
	Stdout, Stderr io.Writer
	// Terminal: stdout is a terminal (live progress, colour unless NO_COLOR).
	Terminal bool
	Width    int                 // terminal width, 0 unknown
	Getenv   func(string) string // default os.Getenv
	Log      *log.Entry          // default: a logger on Stderr
}

// Stdio is the process's IO.
func Stdio() IO {
	io := IO{Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	if fd := int(os.Stdout.Fd()); term.IsTerminal(fd) {
		io.Terminal = true
		if w, _, err := term.GetSize(fd); err == nil {
			io.Width = w
		}
	}
	return io
}

// exitCode is returned by a command to end with a code other than 0 without an error
// message (2: changes pending or not ready).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// Run runs the command line args and returns the exit code.
func Run(ctx context.Context, args []string, io IO) int {
	if io.Getenv == nil {
		io.Getenv = os.Getenv
	}
	if io.Log == nil {
		io.Log = log.Component(log.New(log.Options{Out: io.Stderr, Level: "warn"}), "controller")
	}
	root := newRoot(&io)
	root.SetArgs(args)
	root.SetOut(io.Stdout)
	root.SetErr(io.Stderr)
	err := root.ExecuteContext(ctx)
	var ec exitCode
	switch {
	case err == nil:
		return controller.ExitOK
	case errors.As(err, &ec):
		return int(ec)
	default:
		fmt.Fprintf(io.Stderr, "gpupass: %v\n", err)
		return controller.ExitError
	}
}

func (io *IO) style() render.Style {
	return render.Style{Color: io.Terminal && io.Getenv("NO_COLOR") == "", Width: io.Width}
}

func newRoot(io *IO) *cobra.Command {
	root := &cobra.Command{
		Use:   "gpupass",
		Short: "Give Proxmox VE LXC containers NVIDIA GPUs, reliably",
		Long: `gpupass declares once which container gets which GPUs (fleet.yaml), edits the
container configs idempotently through the host agents, restarts a container only when
it does not match, and answers fleet-wide which GPU containers are ready, and if not, why.

Exit codes: 0 ok or nothing to change, 2 changes pending (plan) or not ready, 1 error.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newPlan(io), newApply(io), newStatus(io), newDoctor(io), newImport(io), newPKI(io), newVersion(io),
		manpage.Command("1", buildinfo.Version))
	return root
}

func newVersion(io *IO) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(io.Stdout, "gpupass %s\n", buildinfo.Version)
			return nil
		},
	}
}

// fleetFlags are shared by the commands that talk to hosts.
type fleetFlags struct {
	file     string
	output   string
	timeout  string
	parallel int
}

func (f *fleetFlags) add(cmd *cobra.Command, timeoutHelp string, defTimeout string, defParallel int, parallelHelp string) {
	cmd.Flags().StringVarP(&f.file, "file", "f", "fleet.yaml", "the fleet file")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	f.timeout = defTimeout
	cmd.Flags().Var((*durationFlag)(&f.timeout), "timeout", timeoutHelp)
	cmd.Flags().IntVar(&f.parallel, "parallel", defParallel, parallelHelp)
}

// durationFlag is a duration flag kept as text (parseDuration checks it, naming the flag),
// so that --help shows its type as "duration" rather than "string".
type durationFlag string

func (d *durationFlag) String() string     { return string(*d) }
func (d *durationFlag) Set(s string) error { *d = durationFlag(s); return nil }
func (d *durationFlag) Type() string       { return "duration" }

func (f *fleetFlags) check() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("-o %q: use table or json", f.output)
	}
	if f.parallel < 1 {
		return fmt.Errorf("--parallel %d: use 1 or more", f.parallel)
	}
	return nil
}

// session is what a command that talks to hosts works with; close it when done.
type session struct {
	fleet *fleet.Fleet
	ctl   *controller.Controller
	cache *pki.SessionCache
	io    *IO
}

// close saves the TLS session cache, so that the next run resumes instead of repeating
// the full handshake with every host.
func (s *session) close() {
	if s.cache == nil {
		return
	}
	if err := s.cache.Save(); err != nil {
		fmt.Fprintf(s.io.Stderr, "gpupass: warning: %v\n", err)
	}
}

// sessionCachePath is $GPUPASS_TLS_SESSION_CACHE, or the default under the user's cache
// directory; "off" (or no cache directory) disables it.
func (io *IO) sessionCachePath() string {
	p := io.Getenv("GPUPASS_TLS_SESSION_CACHE")
	switch p {
	case "off":
		return ""
	case "":
		return pki.DefaultSessionCachePath()
	}
	return p
}

// open loads the fleet file and the controller's TLS configuration.
func open(io *IO, f *fleetFlags, connectTimeout string) (*session, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	timeout, err := parseDuration("--timeout", connectTimeout)
	if err != nil {
		return nil, err
	}
	fl, err := fleet.Load(f.file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: name the fleet file with -f FILE (the default is ./fleet.yaml; docs/controller.md describes it, gpupass import phoenix writes one)", err)
	}
	if err != nil {
		return nil, err
	}
	tlsCfg, err := pki.ClientTLS(fl.TLS.CA, fl.TLS.Cert, fl.TLS.Key, "")
	if err != nil {
		return nil, fmt.Errorf("%s: tls: %w", f.file, err)
	}
	s := &session{fleet: fl, io: io}
	if p := io.sessionCachePath(); p != "" {
		cache, err := pki.LoadSessionCache(p)
		if err != nil {
			io.Log.WithError(err).Debug("TLS session cache ignored")
		}
		scoped, err := cache.For(fl.TLS.CA, fl.TLS.Cert)
		if err != nil {
			return nil, fmt.Errorf("%s: tls: %w", f.file, err)
		}
		s.cache = cache
		tlsCfg.ClientSessionCache = scoped
	}
	s.ctl = controller.New(controller.Options{Fleet: fl, TLS: tlsCfg, Timeout: timeout, Parallel: f.parallel, Log: io.Log})
	return s, nil
}
