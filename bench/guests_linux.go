package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	pb "gpupass/proto/gpupass/v1"
)

// GuestLoad is the host agent with many connected guests.
type GuestLoad struct {
	Guests          int
	AgentRSS        float64 // MiB, after the idle window
	AgentPeakRSS    float64 // MiB, VmHWM
	AgentIdleCPU    float64 // fraction of one core over the idle window
	Window          time.Duration
	GuestCPUPerHour float64 // CPU seconds per guest per hour, at the agent's heartbeat
	GuestRSS        float64 // MiB, mean VmRSS of the guest agents
	Heartbeat       time.Duration
	ConnectTime     time.Duration // all guests started until the agent counts them connected
	AgentCPUConnect time.Duration // the agent's CPU during the connects
	GuestsReady     int
}

// guestID names the benchmark's guest containers (gpb-* like everything it makes).
func guestID(i int) string { return fmt.Sprintf("gpb-g%03d", i) }

// MeasureGuests starts a real host agent managing n stopped containers (configs and
// desired specs on disk, so it opens their guest sockets at start), then n real
// gpupass-guest-agent processes, each placed in the cgroup of its container
// (/sys/fs/cgroup/lxc.payload.<id>, as LXC would) before it execs, so the agent's
// identity check passes as for a guest inside the container. The guests check the
// simulated host tree (--root), so they report ready.
func (e *Env) MeasureGuests(ctx context.Context, n int, window time.Duration) (*GuestLoad, error) {
	dir := filepath.Join(e.Work, "guests")
	lxcpath := filepath.Join(dir, "lxc")
	desired := filepath.Join(dir, "state", "desired")
	for _, d := range []string{lxcpath, desired} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	for i := range n {
		id := guestID(i)
		if err := writeStoppedConfig(lxcpath, id); err != nil {
			return nil, err
		}
		b, err := protojson.Marshal(&pb.ContainerSpec{Id: id, Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW})
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(desired, id+".json"), b, 0o600); err != nil {
			return nil, err
		}
	}
	// Every guest agent holds an inotify instance (it watches /dev). These guests run as
	// the host's root, like privileged containers' guests, and root may have 128 by
	// default: the 129th guest agent exits. Raise it for the run, as such a host must.
	if err := e.raiseSysctl("/proc/sys/fs/inotify/max_user_instances", 4*n+256); err != nil {
		return nil, err
	}
	hb := 10 * time.Second
	agent, err := e.StartHostAgent(ctx, AgentConfig{Dir: dir, Heartbeat: hb, Metrics: true})
	if err != nil {
		return nil, err
	}
	defer e.Stop(agent.Cmd)
	res := &GuestLoad{Guests: n, Heartbeat: hb, Window: window}

	var guests []*exec.Cmd
	cpu0, err := ProcCPU(agent.Pid())
	if err != nil {
		return nil, err
	}
	start := time.Now()
	for i := range n {
		id := guestID(i)
		cg := filepath.Join("/sys/fs/cgroup", "lxc.payload."+id)
		if err := os.Mkdir(cg, 0o755); err != nil && !os.IsExist(err) {
			return nil, fmt.Errorf("make cgroup %s: %w", cg, err)
		}
		e.Defer(func() { _ = os.Remove(cg) })
		sock := filepath.Join(dir, "guests", id, "agent.sock")
		cmd := exec.Command("/bin/sh", "-c", `echo $$ >"$1/cgroup.procs" && exec "$2" --socket "$3" --id "$4" --root "$5"`,
			"sh", cg, filepath.Join(e.Bin, "gpupass-guest-agent"), sock, id, e.HostRoot())
		if i == 0 {
			f, err := os.Create(filepath.Join(dir, "guest0.log"))
			if err != nil {
				return nil, err
			}
			cmd.Stderr = f
			defer f.Close()
		}
		if err := e.start(cmd); err != nil {
			return nil, err
		}
		guests = append(guests, cmd)
	}
	defer func() {
		for _, g := range guests {
			e.Stop(g)
		}
	}()
	// The agent logs every guest session it accepts and every one that ends. (Its
	// gpupass_guests_connected gauge is not used: it counts only guests whose connection
	// came after the agent's metrics loop subscribed, which at start is not all of them.)
	for {
		c := connectedGuests(agent)
		if c == n {
			break
		}
		if time.Since(start) > 60*time.Second {
			return nil, fmt.Errorf("%d of %d guests connected after 60 s:\n%s", c, n, agent.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.ConnectTime = time.Since(start)
	cpu1, _ := ProcCPU(agent.Pid())
	res.AgentCPUConnect = cpu1 - cpu0
	e.Logf("%d guest agents connected in %.1f s", n, res.ConnectTime.Seconds())
	// Let the connect storm's garbage go, then watch it idle: heartbeats only.
	time.Sleep(3 * time.Second)
	a0, err := ProcCPU(agent.Pid())
	if err != nil {
		return nil, err
	}
	g0 := guestsCPU(guests)
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(window):
	}
	a1, err := ProcCPU(agent.Pid())
	if err != nil {
		return nil, err
	}
	g1 := guestsCPU(guests)
	el := time.Since(t0)
	res.AgentIdleCPU = (a1 - a0).Seconds() / el.Seconds()
	res.GuestCPUPerHour = (g1 - g0).Seconds() / float64(n) * (time.Hour.Seconds() / el.Seconds())
	res.AgentRSS, res.AgentPeakRSS, err = ProcMem(agent.Pid())
	if err != nil {
		return nil, err
	}
	var sum float64
	for _, g := range guests {
		rss, _, err := ProcMem(g.Process.Pid)
		if err != nil {
			return nil, err
		}
		sum += rss
	}
	res.GuestRSS = sum / float64(n)
	if c := connectedGuests(agent); c != n {
		return nil, fmt.Errorf("only %d of %d guests still connected after the idle window:\n%s", c, n, agent.LogTail())
	}
	return res, nil
}

func guestsCPU(cmds []*exec.Cmd) time.Duration {
	var sum time.Duration
	for _, c := range cmds {
		d, err := ProcCPU(c.Process.Pid)
		if err == nil {
			sum += d
		}
	}
	return sum
}

// writeStoppedConfig writes the config of a plain LXC container that is never started.
func writeStoppedConfig(lxcpath, id string) error {
	d := filepath.Join(lxcpath, id)
	if err := os.MkdirAll(filepath.Join(d, "rootfs"), 0o755); err != nil {
		return err
	}
	cfg := strings.Join([]string{
		"lxc.uts.name = " + id,
		"lxc.rootfs.path = dir:" + filepath.Join(d, "rootfs"),
		"lxc.net.0.type = empty",
		"lxc.init.cmd = /bin/sh /etc/init.sh",
		"lxc.mount.auto = proc:mixed sys:ro",
		"lxc.autodev = 1",
		"lxc.cgroup2.devices.deny = a",
		"lxc.cgroup2.devices.allow = c 1:3 rwm",
		"lxc.cgroup2.devices.allow = c 1:5 rwm",
		"lxc.cgroup2.devices.allow = c 136:* rwm",
		"",
	}, "\n")
	return os.WriteFile(filepath.Join(d, "config"), []byte(cfg), 0o644)
}

// connectedGuests counts the guest sessions the agent's log shows open.
func connectedGuests(a *HostAgent) int {
	b, err := os.ReadFile(a.Log)
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		switch {
		case strings.Contains(l, `"msg":"guest connected"`):
			n++
		case strings.Contains(l, `"msg":"guest disconnected"`):
			n--
		}
	}
	return n
}

// raiseSysctl sets the integer sysctl at path to at least v, restoring it at Close.
func (e *Env) raiseSysctl(path string, v int) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	old, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || old >= v {
		return err
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return fmt.Errorf("raise %s to %d: %w", path, v, err)
	}
	e.Logf("raised %s from %d to %d for the run", path, old, v)
	e.Defer(func() { _ = os.WriteFile(path, []byte(strconv.Itoa(old)), 0o644) })
	return nil
}
