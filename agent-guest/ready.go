package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"gpupass/internal/guest"
	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

// marker is the running agent's ready marker (guest.Marker), or nothing when the state
// directory is disabled or cannot be made (the agent still reports to the host).
type marker struct {
	m       *guest.Marker
	log     *log.Entry
	verdict bool // a report was recorded: a disconnection keeps the verdict
	failed  bool
}

func newMarker(dir string, l *log.Entry) *marker {
	mk := &marker{log: l}
	if dir == "" {
		return mk
	}
	m, err := guest.NewMarker(dir, os.Getpid())
	if err != nil {
		l.WithError(err).Warn("no ready marker")
		return mk
	}
	mk.m = m
	return mk
}

func (mk *marker) update(r *pb.GuestReport) {
	if mk.m == nil {
		return
	}
	mk.verdict = true
	if err := mk.m.Update(r); err != nil && !mk.failed {
		mk.failed = true
		mk.log.WithError(err).Error("ready marker not updated")
	}
}

// notConnected records why there is no verdict yet; a verdict already recorded stays
// (the GPUs do not change because the host agent restarts, and changes meanwhile are
// checked locally).
func (mk *marker) notConnected(why string) {
	if mk.m == nil || mk.verdict {
		return
	}
	r := &pb.GuestReport{Reasons: []string{"the guest agent has not reached the host agent: " + why}}
	if err := mk.m.Update(r); err != nil && !mk.failed {
		mk.failed = true
		mk.log.WithError(err).Error("ready marker not updated")
	}
}

func (mk *marker) close() {
	if mk.m == nil {
		return
	}
	if err := mk.m.Close(); err != nil {
		mk.log.WithError(err).Warn("ready marker not removed")
	}
}

// wait blocks until ready (exit 0) or the deadline (exit 2, the last verdict on stdout).
// Progress goes to stderr, one line per change of verdict: under systemd that is the
// journal of gpupass-gpu-ready.service, which says why the apps waited.
func wait(ctx context.Context, o options, cfg guest.Config, stdout, stderr io.Writer) int {
	if o.waitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.waitTimeout)
		defer cancel()
	}
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "gpupass-guest-agent wait: "+format+"\n", args...)
	}
	cfg.Log = log.Discard() // its own agent loop, if it runs one, reports through logf
	dir := o.stateDir
	if dir == "" {
		dir = guest.DefaultStateDir
	}
	j, ready, err := guest.Wait(ctx, guest.WaitOptions{StateDir: dir, RequireNetwork: o.requireNetwork, Agent: cfg, Logf: logf})
	if err != nil {
		fmt.Fprintf(stderr, "gpupass-guest-agent wait: %v\n", err)
		return exitError
	}
	if ready {
		logf("ready after %v", time.Since(start).Round(time.Millisecond))
		return exitReady
	}
	logf("not ready after %v: giving up", time.Since(start).Round(time.Millisecond))
	if j.ContainerID == "" {
		j.ContainerID = cfg.ContainerID
	}
	write := j.WriteTable
	if o.output == "json" {
		write = func(w io.Writer) error { return guest.WriteJSONReport(w, j) }
	}
	if err := write(stdout); err != nil {
		fmt.Fprintf(stderr, "gpupass-guest-agent wait: %v\n", err)
		return exitError
	}
	return exitNotReady
}
