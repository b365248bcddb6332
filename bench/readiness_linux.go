package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gpupass/internal/controller"
	"gpupass/internal/log"
	"gpupass/internal/pki"
)

// readinessCT is the benchmark's container (a name no other test uses).
const readinessCT = "gpb-ready"

// Readiness is what the readiness benchmark measured, one value per run.
type Readiness struct {
	// Push: from the host agent's restart returning (its "wait-ready" progress, seen by
	// the controller) to the controller holding the apply result that says ready.
	Push Sample
	// PushInit: from the container's init running to the controller holding that result
	// (what push adds on top of a bare start).
	PushInit Sample
	// Restart: the agent's stop + start, from its "restart" progress to "wait-ready".
	Restart Sample
	// Poll2s, Poll100ms: `lxc-attach <ct> -- test -e /dev/nvidia0` every interval (the
	// first try one interval after the start returns, as `sleep; check` loops do) until it
	// succeeds. PollFirst: the same check issued at once (a check-first loop).
	Poll2s, Poll100ms, PollFirst Sample
	// Attempts counts the checks of the polling runs (first-try successes show that the
	// node exists from the start: the check proves presence only).
	Attempts map[string]int
	// Bare: lxc-start issued until the container's init runs (its first command).
	Bare Sample
	// GuestPID is the guest agent in the container at the end (for its footprint).
	GuestPID int
	Agent    *HostAgent
}

// initScript is the container's init: say it runs (first command), start the guest agent
// as a template's init would, then idle as PID 1.
const initScript = `#!/bin/sh
echo up >/run/gpb-signal/init
/usr/local/bin/gpupass-guest-agent >/tmp/guest.log 2>&1 &
exec /bin/sleep 2147483647
`

// MeasureReadiness runs the readiness benchmark on one real LXC container: runs push
// restarts through `apply`, then runs of each polling loop.
func (e *Env) MeasureReadiness(ctx context.Context, runs int) (*Readiness, error) {
	dir := filepath.Join(e.Work, "ready")
	lxcpath := filepath.Join(dir, "lxc")
	signalDir := filepath.Join(dir, "signal")
	for _, d := range []string{lxcpath, signalDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := e.makeContainer(lxcpath, readinessCT, signalDir); err != nil {
		return nil, err
	}
	e.Defer(func() { killContainer(lxcpath, readinessCT) })

	// The init's signal: a fifo this process holds open for reading and writing, so that
	// the init's write never blocks.
	fifo := filepath.Join(signalDir, "init")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		return nil, fmt.Errorf("make fifo: %w", err)
	}
	ff, err := os.OpenFile(fifo, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	e.Defer(func() { ff.Close() })
	inits := make(chan time.Time, 64)
	go lines(ff, inits)

	agent, err := e.StartHostAgent(ctx, AgentConfig{Dir: dir})
	if err != nil {
		return nil, err
	}
	res := &Readiness{Agent: agent, Attempts: map[string]int{}}
	fleetPath := filepath.Join(dir, "fleet.yaml")
	tlsCfg, err := pki.ClientTLS(e.pkiFile("ca.crt"), e.pkiFile("controller.crt"), e.pkiFile("controller.key"), "")
	if err != nil {
		return nil, err
	}
	apply := func(gpu string, progress func(controller.Progress)) (*controller.Report, error) {
		f, err := e.WriteFleet(fleetPath, [][2]string{{"bench", agent.Addr}}, []FleetEntry{{ID: readinessCT, GPUs: []string{gpu}, State: "running"}})
		if err != nil {
			return nil, err
		}
		c := controller.New(controller.Options{Fleet: f, TLS: tlsCfg, Timeout: 30 * time.Second, Log: log.Discard()})
		r := c.Apply(ctx, controller.ApplyOptions{Timeout: 60 * time.Second, Progress: progress})
		if code := r.ExitCode(); code != controller.ExitOK || len(r.Containers) != 1 || r.Containers[0].State != controller.StateReady {
			return r, fmt.Errorf("apply GPU %s: exit %d, %+v\nhost agent log:\n%s", gpu, code, r.Containers, agent.LogTail())
		}
		return r, nil
	}
	drain := func() {
		for len(inits) > 0 {
			<-inits
		}
	}
	// The first apply writes the config and starts the stopped container.
	if _, err := apply("0", nil); err != nil {
		return nil, err
	}
	e.Logf("container %s ready on SIMULATED GPU 0; %d push runs (apply switches GPU 0 <-> 1, each a restart)", readinessCT, runs)
	for i := range runs {
		gpu := "1"
		if i%2 == 1 {
			gpu = "0"
		}
		drain()
		var tRestart, tRet time.Time
		r, err := apply(gpu, func(p controller.Progress) {
			switch p.Step {
			case "restart":
				tRestart = p.Time
			case "wait-ready":
				tRet = p.Time
			}
		})
		done := time.Now()
		if err != nil {
			return nil, err
		}
		if !r.Containers[0].Restarted || tRet.IsZero() || tRestart.IsZero() {
			return nil, fmt.Errorf("push run %d: apply did not restart the container (%+v)", i, r.Containers[0])
		}
		tInit, err := within(inits, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("push run %d: the container's init never signalled", i)
		}
		res.Push = append(res.Push, done.Sub(tRet))
		res.PushInit = append(res.PushInit, done.Sub(tInit))
		res.Restart = append(res.Restart, tRet.Sub(tRestart))
	}
	// Polling waits for /dev/nvidia0, the node the bash tools wait for: GPU 0.
	if runs%2 == 1 {
		if _, err := apply("0", nil); err != nil {
			return nil, err
		}
	}
	e.Logf("push: median %s ms, init→ready median %s ms, agent restart median %s ms", num(res.Push.Median()), num(res.PushInit.Median()), num(res.Restart.Median()))
	modes := []struct {
		name     string
		interval time.Duration
		first    bool
		out      *Sample
	}{
		{"poll2s", 2 * time.Second, false, &res.Poll2s},
		{"poll100ms", 100 * time.Millisecond, false, &res.Poll100ms},
		{"check-first", 2 * time.Second, true, &res.PollFirst},
	}
	for _, m := range modes {
		e.Logf("%d runs of %s", runs, m.name)
		for i := range runs {
			bare, lat, n, err := e.pollRun(ctx, lxcpath, inits, m.interval, m.first)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", m.name, i, err)
			}
			res.Bare = append(res.Bare, bare)
			*m.out = append(*m.out, lat)
			res.Attempts[m.name] += n
		}
		e.Logf("%s: median %s ms", m.name, num(m.out.Median()))
	}
	// Leave it as the agent would: restarted by gpupass, guest reporting.
	if _, err := apply("1", nil); err != nil {
		return nil, err
	}
	res.GuestPID, err = guestPID(readinessCT)
	if err != nil {
		return nil, err
	}
	return res, nil
}

// pollRun restarts the container with the command sequence of the lxc runtime's Start
// (lxc-start, lxc-wait RUNNING, lxc-info), then polls like the bash tools: every interval
// `lxc-attach -n <ct> -- test -e /dev/nvidia0`, the first check one interval after the start
// returns (or at once when first is set). It returns bare (lxc-start issued until the init
// runs), the latency (start returned until a check succeeds) and the number of checks.
func (e *Env) pollRun(ctx context.Context, lxcpath string, inits chan time.Time, interval time.Duration, first bool) (bare, lat time.Duration, attempts int, err error) {
	lxc := func(cmd string, args ...string) error {
		_, err := run(ctx, append([]string{cmd, "-P", lxcpath, "-n", readinessCT}, args...)...)
		return err
	}
	if err := lxc("lxc-stop", "-k"); err != nil {
		return 0, 0, 0, err
	}
	for len(inits) > 0 {
		<-inits
	}
	issued := time.Now()
	if err := lxc("lxc-start"); err != nil {
		return 0, 0, 0, err
	}
	if err := lxc("lxc-wait", "-s", "RUNNING", "-t", "30"); err != nil {
		return 0, 0, 0, err
	}
	if err := lxc("lxc-info", "-s", "-p", "-H"); err != nil {
		return 0, 0, 0, err
	}
	ret := time.Now()
	deadline := ret.Add(30 * time.Second)
	for wait := !first; ; wait = true {
		if wait {
			select {
			case <-ctx.Done():
				return 0, 0, attempts, ctx.Err()
			case <-time.After(interval):
			}
		}
		attempts++
		err := lxc("lxc-attach", "--", "test", "-e", "/dev/nvidia0")
		if err == nil {
			lat = time.Since(ret)
			break
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || time.Now().After(deadline) {
			return 0, 0, attempts, err
		}
	}
	tInit, err := within(inits, 5*time.Second)
	if err != nil {
		return 0, 0, attempts, errors.New("the container's init never signalled")
	}
	return tInit.Sub(issued), lat, attempts, nil
}

func within(ch chan time.Time, d time.Duration) (time.Time, error) {
	select {
	case t := <-ch:
		return t, nil
	case <-time.After(d):
		return time.Time{}, errors.New("timed out")
	}
}

// makeContainer makes a busybox container whose init starts the guest agent, with its
// own device list (deny all, allow the basics) and the signal directory bound in.
func (e *Env) makeContainer(lxcpath, name, signalDir string) error {
	root := filepath.Join(lxcpath, name, "rootfs")
	for _, d := range []string{"bin", "usr/local/bin", "dev", "proc", "sys", "etc", "run", "root", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile("/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return fmt.Errorf("needs a static /bin/busybox (apt-get install busybox-static): %w", err)
	}
	for _, a := range []string{"sh", "sleep", "test", "echo", "cat", "ls"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(e.Bin, "gpupass-guest-agent"), filepath.Join(root, "usr/local/bin/gpupass-guest-agent"), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "etc/init.sh"), []byte(initScript), 0o755); err != nil {
		return err
	}
	cfg := strings.Join([]string{
		"# gpupass benchmark container (busybox, guest agent in its init)",
		"lxc.uts.name = " + name,
		"lxc.rootfs.path = dir:" + root,
		"lxc.net.0.type = empty",
		"lxc.init.cmd = /bin/sh /etc/init.sh",
		"lxc.mount.auto = proc:mixed sys:ro",
		"lxc.autodev = 1",
		"lxc.signal.halt = SIGKILL",
		"lxc.tty.max = 0",
		"lxc.pty.max = 4",
		"lxc.mount.entry = " + signalDir + " run/gpb-signal none bind,create=dir 0 0",
		"lxc.cgroup2.devices.deny = a",
		"lxc.cgroup2.devices.allow = c 1:3 rwm",
		"lxc.cgroup2.devices.allow = c 1:5 rwm",
		"lxc.cgroup2.devices.allow = c 1:8 rwm",
		"lxc.cgroup2.devices.allow = c 1:9 rwm",
		"lxc.cgroup2.devices.allow = c 5:* rwm",
		"lxc.cgroup2.devices.allow = c 136:* rwm",
		"",
	}, "\n")
	return os.WriteFile(filepath.Join(lxcpath, name, "config"), []byte(cfg), 0o644)
}

func killContainer(lxcpath, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _ = run(ctx, "lxc-stop", "-P", lxcpath, "-n", name, "-k")
}

// guestPID finds the guest agent among the processes of container name's cgroup.
func guestPID(name string) (int, error) {
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", "lxc.payload."+name, "cgroup.procs"))
	if err != nil {
		return 0, fmt.Errorf("find guest agent of %s: %w", name, err)
	}
	for _, f := range strings.Fields(string(b)) {
		exe, err := os.Readlink(filepath.Join("/proc", f, "exe"))
		if err == nil && filepath.Base(exe) == "gpupass-guest-agent" {
			var pid int
			fmt.Sscan(f, &pid)
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no gpupass-guest-agent process in container %s", name)
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
