// Command gpupass-guest-agent runs inside a GPU container: it tells the host agent, over the
// bind-mounted unix socket, whether the container's GPUs are really usable, and why not.
//
//	gpupass-guest-agent [--socket PATH] [--id ID] [--heartbeat D]
//	gpupass-guest-agent --once [-o json|table] [--expect-file FILE] [--socket PATH]
//	gpupass-guest-agent wait [--timeout D] [--require-network] [-o json|table]
//
// --once checks once, prints the report and exits 0 when ready, 2 when not, 1 on error.
// wait blocks until the container is ready (exit 0); at the deadline it prints the
// reasons and exits 2 (1 on error). The running agent keeps /run/gpupass/ready existing
// exactly while ready; wait follows it, or checks by itself when no agent runs.
// Its expectation comes from --expect-file, else from the host agent over the socket, else
// from the NVIDIA nodes found under /dev (docs/guest-agent.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"gpupass/internal/buildinfo"
	"gpupass/internal/guest"
	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

// Exit codes.
const (
	exitReady    = 0
	exitError    = 1
	exitNotReady = 2
)

type options struct {
	socket     string
	once       bool
	output     string
	expectFile string
	id         string
	heartbeat  time.Duration
	onceWait   time.Duration
	logLevel   string
	root       string
	version    bool
	stateDir   string
	// wait subcommand
	wait           bool
	waitTimeout    time.Duration
	requireNetwork bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	name := "gpupass-guest-agent"
	if len(args) > 0 && args[0] == "wait" {
		o.wait, args, name = true, args[1:], name+" wait"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.stateDir, "state-dir", guest.DefaultStateDir, "the agent's own directory in the container: "+guest.ReadyFile+" exists exactly while ready, "+guest.StatusFile+" says why not (\"\" disables)")
	if o.wait {
		fs.DurationVar(&o.waitTimeout, "timeout", 5*time.Minute, "give up after this long (exit 2 with the reasons); 0 waits forever")
		fs.BoolVar(&o.requireNetwork, "require-network", false, "also wait for the network (an up link with an address and a default route)")
	}
	fs.StringVar(&o.socket, "socket", "", "the host agent's unix socket (a host directory bind-mounted into the container); default "+guest.DefaultSocket+", then "+guest.LegacySocket+" (containers started before the move)")
	fs.BoolVar(&o.once, "once", false, "check once, print the report and exit: 0 ready, 2 not ready, 1 error")
	fs.StringVar(&o.output, "o", "table", "output of --once: json or table")
	fs.StringVar(&o.expectFile, "expect-file", "", "with --once: a JSON gpupass.v1.Expectation to check against instead of asking the host agent")
	fs.StringVar(&o.id, "id", "", "container id claimed in Hello (default $GPUPASS_CONTAINER_ID, else the hostname; the host agent decides identity from the kernel)")
	fs.DurationVar(&o.heartbeat, "heartbeat", guest.DefaultHeartbeat, "report at least this often (the host agent's expectation may set it)")
	fs.DurationVar(&o.onceWait, "once-timeout", 5*time.Second, "with --once: how long to wait for the host agent's expectation")
	fs.StringVar(&o.logLevel, "log-level", "", "debug, info, warn or error (default info, or $GPUPASS_LOG_LEVEL)")
	fs.StringVar(&o.root, "root", "/", "check the tree under this directory instead of / (tests, or a container's rootfs seen from outside)")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.output != "json" && o.output != "table" {
		return o, fmt.Errorf("-o %q: want json or table", o.output)
	}
	if o.wait && (o.once || o.expectFile != "") {
		return o, errors.New("wait takes neither --once nor --expect-file")
	}
	if o.waitTimeout < 0 {
		return o, fmt.Errorf("--timeout %v: want 0 (forever) or a positive duration", o.waitTimeout)
	}
	if o.expectFile != "" && !o.once {
		return o, errors.New("--expect-file needs --once")
	}
	if o.heartbeat <= 0 {
		return o, fmt.Errorf("--heartbeat %v: want a positive duration", o.heartbeat)
	}
	if o.id == "" {
		o.id = guest.DefaultContainerID()
	}
	return o, nil
}

// gcPercent keeps the heap small: the agent makes little garbage, rarely (a report every
// few seconds), so collecting more often costs nothing and keeps RSS well under 10 MiB.
const gcPercent = 25

// memoryLimit is the Go runtime's soft limit (heap, stacks, runtime data; not the binary's
// mapped pages): near it the runtime collects and returns freed pages to the kernel at
// once rather than keeping them. Without it a busy agent's RSS (a report every 20 ms in
// TestBinary/rss_and_systemd_notify) was 9.5-9.8 MiB and once, under CI's load, 4 KiB
// over the 10 MiB budget; with 7 MiB it is 9.0-9.5 MiB at the same report rate (6 MiB
// saved little more and cost a third of the reports: the collector ran all the time).
const memoryLimit = 7 << 20

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitReady
	}
	if err != nil {
		fmt.Fprintf(stderr, "gpupass-guest-agent: %v\n", err)
		return exitError
	}
	if o.version {
		fmt.Fprintln(stdout, buildinfo.Version)
		return exitReady
	}
	logger := log.Component(log.New(log.Options{Out: stderr, Level: o.logLevel}), "guest-agent")
	checker := &guest.Checker{Paths: guest.Paths{Root: o.root, PathEnv: os.Getenv("PATH")}}
	cfg := guest.Config{
		Socket: o.socket, ContainerID: o.id, BootID: checker.Paths.BootID(), Build: buildinfo.Version,
		Checker: checker, Heartbeat: o.heartbeat, Log: logger,
	}
	if o.once {
		return once(ctx, o, cfg, stdout, stderr)
	}
	if o.wait {
		return wait(ctx, o, cfg, stdout, stderr)
	}
	st := &statusNotifier{log: logger}
	mk := newMarker(o.stateDir, logger)
	defer mk.close()
	cfg.Started = func() { notify(logger, daemon.SdNotifyReady, "STATUS=connecting to the host agent") }
	cfg.OnState = func(s string) {
		if strings.HasPrefix(s, "disconnected") {
			st.set("waiting for the host agent (" + s + ")")
			mk.notConnected(s)
		}
	}
	cfg.OnReport = func(r *pb.GuestReport) {
		if r.GetReady() {
			st.set("connected; ready")
		} else {
			st.set("connected; not ready: " + strings.Join(r.GetReasons(), "; "))
		}
		mk.update(r)
	}
	cfg.OnLocalCheck = func(r *pb.GuestReport) {
		if !r.GetReady() { // only a full check with the host's expectation marks ready
			st.set("waiting for the host agent; not ready: " + strings.Join(r.GetReasons(), "; "))
			mk.update(r)
		}
	}
	a, err := guest.New(cfg)
	if err != nil {
		logger.WithError(err).Error("start")
		return exitError
	}
	logger.WithFields(log.Fields{"sockets": strings.Join(a.Sockets(), " "), "container_id": o.id, "build": buildinfo.Version}).Info("guest agent starting")
	if err := a.Run(ctx); err != nil {
		logger.WithError(err).Error("guest agent stopped")
		return exitError
	}
	notify(logger, daemon.SdNotifyStopping)
	return exitReady
}

// once checks once against --expect-file, the host agent's expectation, or what /dev holds.
func once(ctx context.Context, o options, cfg guest.Config, stdout, stderr io.Writer) int {
	var r *pb.GuestReport
	switch {
	case o.expectFile != "":
		exp, err := guest.LoadExpectation(o.expectFile)
		if err != nil {
			fmt.Fprintf(stderr, "gpupass-guest-agent: %v\n", err)
			return exitError
		}
		r = cfg.Checker.Check(ctx, exp)
	default:
		a, err := guest.New(cfg)
		if err != nil {
			fmt.Fprintf(stderr, "gpupass-guest-agent: %v\n", err)
			return exitError
		}
		r, err = a.Once(ctx, o.onceWait)
		if err != nil {
			// No host agent: check the NVIDIA nodes this container has.
			r = cfg.Checker.Check(ctx, nil)
			r.Warnings = append(r.Warnings, "no expectation from the host agent ("+err.Error()+"): checked the NVIDIA nodes found under /dev against /proc/devices")
		}
	}
	if r.TimeUnixNano == 0 {
		r.ContainerId, r.BootId, r.AgentBuild = cfg.ContainerID, cfg.BootID, cfg.Build
		r.Trigger, r.TimeUnixNano = guest.TriggerOnce, time.Now().UnixNano()
	}
	write := guest.WriteTable
	if o.output == "json" {
		write = guest.WriteJSON
	}
	if err := write(stdout, r); err != nil {
		fmt.Fprintf(stderr, "gpupass-guest-agent: %v\n", err)
		return exitError
	}
	if !r.GetReady() {
		return exitNotReady
	}
	return exitReady
}

// notify tells systemd (Type=notify) when NOTIFY_SOCKET is set; elsewhere it does nothing.
func notify(l *log.Entry, states ...string) {
	if _, err := daemon.SdNotify(false, strings.Join(states, "\n")); err != nil {
		l.WithError(err).Debug("sd_notify failed")
	}
}

// statusNotifier sends STATUS= to systemd only when it changes: heartbeats do not flood
// the notify socket (whose queue is short) and a slow reader never holds up a report.
type statusNotifier struct {
	log  *log.Entry
	last string
}

func (s *statusNotifier) set(status string) {
	if len(status) > 400 {
		status = status[:400] + "..."
	}
	if status == s.last {
		return
	}
	s.last = status
	notify(s.log, "STATUS="+status)
}
