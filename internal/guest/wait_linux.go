package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	pb "gpupass/proto/gpupass/v1"
)

// WaitOptions configure Wait.
type WaitOptions struct {
	// StateDir is the running agent's state directory; default DefaultStateDir.
	StateDir string
	// RequireNetwork also waits for the network (an up link with an address and a default
	// route), whatever the host's expectation says.
	RequireNetwork bool
	// Agent configures the check Wait runs by itself when no agent runs: the agent loop
	// in this process (Checker, Socket, ContainerID, ...). Its callbacks are Wait's.
	Agent Config
	// Logf, if set, receives a line whenever the verdict changes (the journal of a unit).
	Logf func(format string, args ...any)
	// Poll is how often Wait looks whether an agent started or stopped; default 250 ms.
	Poll time.Duration
	// AgentPID finds the running agent; default RunningAgent.
	AgentPID func(dir string) int
}

// Wait blocks until the container is ready or ctx ends, and returns the last verdict and
// whether it was ready. Ready has one definition, the agent's (Assess over the host's
// expectation): when the guest agent runs, Wait follows its marker (ReadyFile appears,
// StatusFile says why not); when none runs, it runs the same agent loop in this process
// until ready. It never counts a check without the host's expectation as ready: the
// nodes found under /dev may be fewer than those assigned (FACTS.md §1 #8).
func Wait(ctx context.Context, o WaitOptions) (JSONReport, bool, error) {
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Poll <= 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.AgentPID == nil {
		o.AgentPID = RunningAgent
	}
	w := &waiter{o: o}
	for {
		var ready bool
		var err error
		if pid := o.AgentPID(o.StateDir); pid != 0 {
			w.logf("following the running guest agent (pid %d) through %s", pid, filepath.Join(o.StateDir, ReadyFile))
			ready, err = w.follow(ctx, pid)
		} else {
			w.logf("no guest agent runs here: checking by itself against the host agent's expectation")
			ready, err = w.self(ctx)
		}
		if ready || err != nil || ctx.Err() != nil {
			return w.last, ready, err
		}
	}
}

type waiter struct {
	o       WaitOptions
	last    JSONReport
	lastWhy string
}

func (w *waiter) logf(format string, args ...any) {
	if w.o.Logf != nil {
		w.o.Logf(format, args...)
	}
}

// see records a verdict and logs it when its reasons changed.
func (w *waiter) see(j JSONReport) {
	if !w.o.RequireNetwork || j.Network.OK {
		// nothing to add
	} else if j.Ready {
		j.Ready, j.State = false, "not-ready"
		j.Reasons = append(j.Reasons, "network: "+orUnknown(j.Network.Reason)+" (wait --require-network)")
	} else if !hasPrefix(j.Reasons, "network: ") {
		j.Reasons = append(j.Reasons, "network: "+orUnknown(j.Network.Reason)+" (wait --require-network)")
	}
	w.last = j
	why := strings.Join(j.Reasons, "; ")
	if j.Ready {
		why = "ready"
	}
	if why != w.lastWhy {
		w.lastWhy = why
		if !j.Ready { // ready is the caller's to say, with the time it took
			w.logf("not ready: %s", why)
		}
	}
}

func hasPrefix(list []string, p string) bool {
	for _, s := range list {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// notYet is the verdict before any report: what keeps it from having one.
func notYet(why string) JSONReport {
	return JSONReport{State: "not-ready", Reasons: []string{why}, Warnings: []string{}, Devices: []JSONDevice{}, Network: JSONNetwork{Reason: "not checked yet", Links: []JSONLink{}}}
}

// follow waits on the running agent's marker until ready, ctx ends, or the agent stops
// (ready false, no error).
func (w *waiter) follow(ctx context.Context, pid int) (bool, error) {
	dir := w.o.StateDir
	ino, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return false, fmt.Errorf("watch %s: %w", dir, err)
	}
	defer unix.Close(ino)
	if _, err := unix.InotifyAddWatch(ino, dir, unix.IN_CREATE|unix.IN_DELETE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_CLOSE_WRITE); err != nil {
		return false, fmt.Errorf("watch %s: %w", dir, err)
	}
	buf := make([]byte, 4096)
	for {
		// Look after arming the watch: a change between the two is seen either way.
		j, err := ReadStatus(dir)
		if err != nil {
			j = notYet("the guest agent has not judged this container yet (" + err.Error() + ")")
		}
		_, statErr := os.Stat(filepath.Join(dir, ReadyFile))
		j.Ready = statErr == nil
		if j.Ready {
			j.State, j.Reasons = "ready", []string{}
		} else if len(j.Reasons) == 0 {
			j.State, j.Reasons = "not-ready", []string{"the guest agent has not marked this container ready yet"}
		}
		w.see(j)
		if w.last.Ready {
			return true, nil
		}
		for changed := false; !changed; {
			if ctx.Err() != nil {
				return false, nil
			}
			timeout := w.o.Poll
			if dl, ok := ctx.Deadline(); ok {
				timeout = min(timeout, max(time.Until(dl), time.Millisecond))
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(ino), Events: unix.POLLIN}}, int(timeout.Milliseconds())+1)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return false, fmt.Errorf("watch %s: %w", dir, err)
			}
			if n > 0 {
				for drainRead(ino, buf) {
				}
				changed = true
			} else if w.o.AgentPID(dir) != pid {
				w.logf("the guest agent (pid %d) stopped", pid)
				return false, nil
			}
		}
	}
}

func drainRead(fd int, buf []byte) bool {
	n, err := unix.Read(fd, buf)
	return err == nil && n > 0
}

// self runs the agent loop in this process until a report is ready, ctx ends, or a
// guest agent starts (then Wait follows it instead).
func (w *waiter) self(ctx context.Context) (bool, error) {
	cfg := w.o.Agent
	reports := make(chan *pb.GuestReport, 1)
	states := make(chan string, 1)
	latest := func(ch chan string, s string) {
		select {
		case <-ch:
		default:
		}
		ch <- s
	}
	cfg.OnReport = func(r *pb.GuestReport) {
		select {
		case <-reports:
		default:
		}
		reports <- r
	}
	cfg.OnState = func(s string) { latest(states, s) }
	cfg.Started = nil
	a, err := New(cfg)
	if err != nil {
		return false, err
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() {
		stop()
		<-done
	}()
	w.see(notYet("no report yet: connecting to the host agent at " + strings.Join(a.Sockets(), " or ")))
	tick := time.NewTicker(w.o.Poll)
	defer tick.Stop()
	connected, reported := false, false
	for {
		select {
		case <-ctx.Done():
			return false, nil
		case err := <-done:
			done <- err // for the deferred wait
			if err != nil {
				return false, err
			}
			return false, nil
		case r := <-reports:
			connected, reported = true, true
			w.see(ToJSON(r))
			if w.last.Ready {
				return true, nil
			}
		case s := <-states:
			if strings.HasPrefix(s, "disconnected") {
				// A verdict already had stays the reason (the GPUs do not change because
				// the host agent went away); before any, the connection is the reason.
				if !reported {
					w.see(notYet("no report: the host agent is not reachable (" + s + ")"))
				}
				connected = false
			}
		case <-tick.C:
			if !connected && w.o.AgentPID(w.o.StateDir) != 0 {
				return false, nil // follow it
			}
		}
	}
}
