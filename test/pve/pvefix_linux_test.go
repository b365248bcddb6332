package pve

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/pvelab"
	"gpupass/internal/runner"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// countingRunner is the real runner, counting the commands by program.
type countingRunner struct {
	mu    sync.Mutex
	calls []string
}

func (c *countingRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	c.mu.Lock()
	c.calls = append(c.calls, strings.Join(argv, " "))
	c.mu.Unlock()
	return runner.Exec{}.Run(ctx, argv...)
}

// take returns the calls of prog ("" for every call) since the last take, and forgets all.
func (c *countingRunner) take(prog string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.calls {
		if prog == "" || strings.HasPrefix(l, prog+" ") {
			out = append(out, l)
		}
	}
	c.calls = nil
	return out
}

// labAgent is a host agent with the real pct runtime on the simulated GPU host's root
// (pvelab.SimulateGPUHost: its proc/ is the GPU fixture, its etc/pve, var/lib/lxc, dev and
// run lead to the real ones).
type labAgent struct {
	agent    *hostagent.Agent
	run      *countingRunner
	stateDir string
}

func newLabAgent(t *testing.T, hostRoot string) *labAgent {
	t.Helper()
	base := t.TempDir()
	cfg := hostconfig.Default()
	cfg.HostRoot = hostRoot
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "g")
	cfg.Heartbeat = time.Second
	cfg.GuestStaleAfter = 3 * time.Second
	guests := guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Heartbeat: cfg.Heartbeat, Log: log.ForTest(t, "guests"), Build: "lab"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = guests.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	cr := &countingRunner{}
	rt := &runtime.PCT{Runner: cr, HostRoot: hostRoot, ProcRoot: hostagent.ProcRoot(hostRoot), StateDir: filepath.Join(cfg.StateDir, "pct")}
	a, err := hostagent.New(cfg, hostagent.Options{Runtime: rt, Guests: guests, Log: log.ForTest(t, "hostagent"), Name: "pvelab"})
	if err != nil {
		t.Fatal(err)
	}
	return &labAgent{agent: a, run: cr, stateDir: cfg.StateDir}
}

func (l *labAgent) apply(t *testing.T, ct *pvelab.CT, applyPending bool) *pb.ContainerResult {
	t.Helper()
	return l.applySpec(t, &pb.ContainerSpec{Id: fmt.Sprint(ct.ID), Gpus: []string{"0"}}, applyPending)
}

func (l *labAgent) applySpec(t *testing.T, spec *pb.ContainerSpec, applyPending bool) *pb.ContainerResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	resp := l.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec},
		TimeoutMs: 1500, ApplyPending: applyPending}, nil)
	res := resp.GetContainers()[0]
	t.Logf("apply: error=%q written=%v restarted=%v state=%s", res.GetError(), res.GetWritten(), res.GetRestarted(), res.GetStatus().GetState())
	return res
}

func (l *labAgent) plan(t *testing.T, ct *pvelab.CT) *pb.ContainerPlan {
	t.Helper()
	return l.planSpec(t, &pb.ContainerSpec{Id: fmt.Sprint(ct.ID), Gpus: []string{"0"}})
}

func (l *labAgent) planSpec(t *testing.T, spec *pb.ContainerSpec) *pb.ContainerPlan {
	t.Helper()
	resp, err := l.agent.Plan(context.Background(), &pb.PlanRequest{Containers: []*pb.ContainerSpec{spec}})
	if err != nil {
		t.Fatal(err)
	}
	p := resp.GetContainers()[0]
	if p.GetError() != "" {
		t.Fatalf("plan: %s", p.GetError())
	}
	return p
}

// buildGuestAgent builds the static guest agent for bind-mounting into lab containers.
func buildGuestAgent(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pvefix-guest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "gpupass-guest-agent")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	cmd := exec.Command(goBin, "build", "-o", bin, "../../agent-guest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the guest agent: %v\n%s", err, out)
	}
	return bin
}

func mustContain(t *testing.T, what, got string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(got, p) {
			t.Errorf("%s %q does not say %q", what, got, p)
		}
	}
}

// TestLabPVEGuards runs the host agent with the real pct on lab containers (privileged, so
// that the device cgroup is enforced) against a simulated GPU: a locked container is
// neither written nor restarted (pct reboot would not have checked the lock); pending
// changes are listed and refused, then applied by the real reboot with --apply-pending; an
// HA-managed container is written, not restarted, with the ha-manager commands; and after
// `pct set --tags` rewrote /var/lib/lxc/<id>/config of the running container, a new plan
// still finds nothing to restart. A status of them runs no pct.
func TestLabPVEGuards(t *testing.T) {
	sim := pvelab.SimulateGPUHost(t, gpu.SimOptions{GPUs: 1})
	lab := newLabAgent(t, sim.Root)

	t.Run("locked", func(t *testing.T) {
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true})
		ct.Start(t)
		pid := ct.InitPID(t)
		ct.AppendConf(t, "lock: backup")
		before := ct.Conf(t)
		if p := lab.plan(t, ct); p.GetLocked() != "backup" {
			t.Errorf("plan locked = %q, want backup", p.GetLocked())
		}
		lab.run.take("")
		res := lab.apply(t, ct, true)
		mustContain(t, "error", res.GetError(), "locked: backup", "nothing was written or restarted")
		if ct.Conf(t) != before {
			t.Errorf("locked config changed:\n%s", ct.Conf(t))
		}
		if got := ct.InitPID(t); got != pid {
			t.Errorf("init %d -> %d: the locked container was restarted", pid, got)
		}
		if pct := lab.run.take("pct"); len(pct) != 0 {
			t.Errorf("pct ran on a locked container: %q", pct)
		}
	})

	t.Run("pending", func(t *testing.T) {
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true})
		ct.Start(t)
		ct.WriteConf(t, ct.Conf(t)+"\n[PVE:pending]\ncores: 2\n")
		if r := pvelab.MustPct(t, "pending", fmt.Sprint(ct.ID)); !strings.Contains(r.Stdout, "new cores: 2") {
			t.Fatalf("pct pending does not show the pending change:\n%s", r.Stdout)
		}
		p := lab.plan(t, ct)
		if strings.Join(p.GetPending(), ";") != "cores: 2" || !p.GetRestart().GetRequired() {
			t.Errorf("plan pending %q restart %v", p.GetPending(), p.GetRestart().GetRequired())
		}
		before := ct.Conf(t)
		res := lab.apply(t, ct, false)
		mustContain(t, "error", res.GetError(), "1 pending change(s)", "cores: 2", "--apply-pending")
		if ct.Conf(t) != before {
			t.Error("refused apply wrote the config")
		}
		pid := ct.InitPID(t)
		lab.run.take("")
		res = lab.apply(t, ct, true)
		if !res.GetWritten() || !res.GetRestarted() {
			t.Fatalf("with --apply-pending: %q", res.GetError())
		}
		if pct := lab.run.take("pct"); strings.Join(pct, "; ") != fmt.Sprintf("pct reboot %d --timeout 120", ct.ID) {
			t.Errorf("pct calls of the apply: %q, want one reboot", pct)
		}
		if got := ct.InitPID(t); got == pid || got == 0 {
			t.Errorf("init %d -> %d: not rebooted", pid, got)
		}
		conf := ct.Conf(t)
		if strings.Contains(strings.ToLower(conf), "[pve:pending]") || !strings.Contains(conf, "\ncores: 2\n") {
			t.Errorf("PVE did not apply the pending change at the reboot:\n%s", conf)
		}
		pvelab.ParseStrict(t, ct.ConfPath())
	})

	// What the plan warns of, as PVE does it: a pending lxc.* line replaces ALL raw lxc.*
	// lines of the main section at the next start.
	t.Run("pending lxc line replaces the raw lxc lines", func(t *testing.T) {
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: []string{"lxc.cgroup2.devices.allow: c 10:200 rwm"}})
		ct.WriteConf(t, ct.Conf(t)+"\n[pve:pending]\nlxc.cgroup2.devices.allow: c 10:229 rwm\n")
		if p := lab.plan(t, ct); !p.GetPendingReplacesLxc() {
			t.Errorf("plan does not flag the pending lxc line")
		}
		ct.Start(t)
		conf := ct.Conf(t)
		t.Logf("config after the start:\n%s", conf)
		if strings.Contains(conf, "c 10:200 rwm") || !strings.Contains(conf, "lxc.cgroup2.devices.allow: c 10:229 rwm") {
			t.Errorf("PVE's start did not replace the raw lxc lines with the pending one")
		}
	})

	t.Run("ha", func(t *testing.T) {
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true})
		ct.Start(t)
		res := filepath.Join(pvelab.EtcPVE, "ha", "resources.cfg")
		if err := os.MkdirAll(filepath.Dir(res), 0o755); err != nil {
			t.Fatal(err)
		}
		old, _ := os.ReadFile(res)
		if err := os.WriteFile(res, append(old, fmt.Sprintf("ct: %d\n\tstate started\n", ct.ID)...), 0o640); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.WriteFile(res, old, 0o640) }) // before the container is destroyed
		pid := ct.InitPID(t)
		lab.run.take("")
		r := lab.apply(t, ct, false)
		mustContain(t, "error", r.GetError(), fmt.Sprintf("managed by Proxmox HA (ct:%d)", ct.ID), fmt.Sprintf("ha-manager set ct:%d --state stopped", ct.ID))
		if !r.GetWritten() || r.GetRestarted() || ct.InitPID(t) != pid {
			t.Errorf("written=%v restarted=%v init %d -> %d, want written, not restarted", r.GetWritten(), r.GetRestarted(), pid, ct.InitPID(t))
		}
		if pct := lab.run.take("pct"); len(pct) != 0 {
			t.Errorf("pct ran on an HA-managed container: %q", pct)
		}
		pvelab.ParseStrict(t, ct.ConfPath())
	})

	for _, privileged := range []bool{true, false} {
		t.Run(fmt.Sprintf("guest identity from the kernel, hostname differs, privileged %v", privileged), func(t *testing.T) {
			bin := buildGuestAgent(t)
			ct := pvelab.NewCT(t, pvelab.Spec{Privileged: privileged, Conf: []string{
				"lxc.mount.entry: " + bin + " usr/local/bin/gpupass-guest-agent none bind,ro,create=file 0 0"}})
			ct.Start(t)
			if r := lab.apply(t, ct, false); !r.GetRestarted() {
				t.Fatalf("apply did not restart with the guest socket mount: %q", r.GetError())
			}
			// The guest agent claims its hostname, ai-<id>: the host takes the id from the kernel.
			out, code := ct.Exec(t, "/usr/local/bin/gpupass-guest-agent", "--once", "-o", "json")
			t.Logf("guest agent --once in %d (hostname %s): exit %d\n%s", ct.ID, ct.Hostname, code, out)
			if code != 0 && code != 2 {
				t.Fatalf("guest agent --once: exit %d", code)
			}
			st := lab.agent.Status(context.Background(), &pb.StatusRequest{Containers: []*pb.ContainerSpec{{Id: fmt.Sprint(ct.ID), Gpus: []string{"0"}}}})
			cs := st.GetContainers()[0]
			if cs.GetGuestRefused() != "" || cs.GetReport().GetContainerId() != fmt.Sprint(ct.ID) {
				t.Errorf("guest refused %q, report of container %q; want accepted as %d", cs.GetGuestRefused(), cs.GetReport().GetContainerId(), ct.ID)
			}
		})
	}

	t.Run("dev style after PVE rewrote the config", func(t *testing.T) {
		// A devN written by hand with its path key last, and a managed one with deny-write.
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: []string{"dev3: mode=0666,path=/dev/nvidia0", "dev12: /dev/nvidiactl,deny-write=1"}})
		spec := &pb.ContainerSpec{Id: fmt.Sprint(ct.ID), Gpus: []string{"0"}, Style: pb.Style_STYLE_DEV}
		if r := lab.applySpec(t, spec, false); r.GetError() != "" || !r.GetWritten() {
			t.Fatalf("apply: written=%v %q", r.GetWritten(), r.GetError())
		}
		conf := ct.Conf(t)
		for _, want := range []string{"\ndev3: /dev/nvidia0,mode=0666\n", "\ndev12: /dev/nvidiactl,mode=0666\n"} {
			if !strings.Contains(conf, want) {
				t.Errorf("config lacks %q:\n%s", strings.TrimSpace(want), conf)
			}
		}
		pvelab.MustPct(t, "set", fmt.Sprint(ct.ID), "--tags", "gpu") // PVE parses and rewrites the file
		after := ct.Conf(t)
		if after == conf {
			t.Fatalf("pct set did not rewrite the config")
		}
		t.Logf("config as PVE rewrote it:\n%s", after)
		if p := lab.planSpec(t, spec); len(p.GetChanges()) != 0 {
			t.Errorf("plan after PVE's rewrite changes %d line(s):\n%s", len(p.GetChanges()), p.GetDiff())
		}
		ct.Start(t) // PVE accepts the devN entries and starts with them
		pvelab.ParseStrict(t, ct.ConfPath())
	})

	t.Run("pct set rewrites the start config", func(t *testing.T) {
		ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true})
		ct.Start(t)
		if r := lab.apply(t, ct, false); !r.GetRestarted() {
			t.Fatalf("first apply did not restart: %q", r.GetError())
		}
		pid := ct.InitPID(t)
		fi0, err := os.Stat(ct.RenderedPath())
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond) // a rewrite gets a later mtime
		pvelab.MustPct(t, "set", fmt.Sprint(ct.ID), "--tags", "gpu")
		fi1, err := os.Stat(ct.RenderedPath())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: mtime %s -> %s after pct set --tags", ct.RenderedPath(), fi0.ModTime().Format(time.RFC3339Nano), fi1.ModTime().Format(time.RFC3339Nano))
		if !fi1.ModTime().After(fi0.ModTime()) {
			t.Logf("pct set --tags did not rewrite %s here: the record is not what this case proves", ct.RenderedPath())
		}
		if p := lab.plan(t, ct); p.GetRestart().GetRequired() {
			t.Errorf("plan after pct set --tags restarts: %q", p.GetRestart().GetReasons())
		}
		// The record is what settles it: without it the rewritten file proves nothing.
		rec := filepath.Join(lab.stateDir, "pct", "started", fmt.Sprintf("%d.json", ct.ID))
		saved, err := os.ReadFile(rec)
		if err != nil {
			t.Fatalf("no start record: %v", err)
		}
		if err := os.Remove(rec); err != nil {
			t.Fatal(err)
		}
		if p := lab.plan(t, ct); !p.GetRestart().GetRequired() || !strings.Contains(strings.Join(p.GetRestart().GetReasons(), ";"), "no record") {
			t.Errorf("without the record: restart %v %q, want a restart for want of a record", p.GetRestart().GetRequired(), p.GetRestart().GetReasons())
		}
		if err := os.WriteFile(rec, saved, 0o600); err != nil {
			t.Fatal(err)
		}
		if ct.InitPID(t) != pid {
			t.Error("container restarted")
		}
		lab.run.take("")
		st := lab.agent.Status(context.Background(), &pb.StatusRequest{Containers: []*pb.ContainerSpec{{Id: fmt.Sprint(ct.ID), Gpus: []string{"0"}}}})
		if got := st.GetContainers()[0].GetRunState(); got != "running" {
			t.Errorf("status run state %q, want running", got)
		}
		// No pct; the inits' pids (the restart rule's evidence) from one lxc-ls.
		if calls := lab.run.take(""); strings.Join(calls, "; ") != "lxc-ls --active -f -F NAME,PID" {
			t.Errorf("status ran commands %q, want one lxc-ls", calls)
		}
	})
}

// TestLabConftoolGoldens: every config the editor wrote from pve-container's own test
// configs (internal/conftool/testdata/golden/pve-container_*, raw lxc.* lines in front) is
// judged by PVE's parser in strict mode exactly as its input was: accepted, with the GPU's
// raw keys or devN entries added, or (rollback-205 carries a VM's vmstate on purpose)
// refused with the same message.
func TestLabConftoolGoldens(t *testing.T) {
	pvelab.Require(t)
	const rawFirst = "lxc.cgroup2.devices.allow = c 10:200 rwm\nlxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file 0 0\n" // as conftool's test
	files, err := filepath.Glob("../../internal/conftool/testdata/golden/pve-container_*.txt")
	if err != nil || len(files) != 22 {
		t.Fatalf("want 22 goldens, got %d (%v)", len(files), err)
	}
	accepted := 0
	for _, f := range files {
		out, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "pve-container_"), ".txt")
		name = name[:strings.LastIndex(name, "_")]
		src, err := os.ReadFile(filepath.Join("../../internal/conftool/testdata/pve-container", name+".conf"))
		if err != nil {
			t.Fatal(err)
		}
		_, inMsg := pvelab.ParseStrictContent("/etc/pve/lxc/901.conf", append([]byte(rawFirst), src...))
		p, outMsg := pvelab.ParseStrictContent("/etc/pve/lxc/901.conf", out)
		if outMsg != inMsg {
			t.Errorf("%s: PVE's parser says %q of the written config, %q of its input", filepath.Base(f), outMsg, inMsg)
			continue
		}
		if outMsg != "" {
			t.Logf("%s: refused as its input is: %s", filepath.Base(f), outMsg)
			continue
		}
		accepted++
		lxc, _ := p["lxc"].([]any)
		_, dev := p["dev0"]
		if len(lxc) < 2 || strings.HasSuffix(f, "_dev.txt") != dev {
			t.Errorf("%s: PVE sees %d raw lxc keys and dev0 %v", filepath.Base(f), len(lxc), dev)
		}
	}
	t.Logf("%d of %d written configs parsed by PVE (strict), the others refused exactly as their inputs", accepted, len(files))
}

// TestLabPctTimeoutWaitsForTask: pct start is killed at its (3s) deadline while the PVE task
// it started runs on (a pre-start hook that takes 12s), holding the config lock. The runtime
// returns only once the task released the lock, so whatever comes next never races it.
func TestLabPctTimeoutWaitsForTask(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hook := filepath.Join(dir, "slow-hook")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\nsleep 12\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: []string{"lxc.hook.pre-start: " + hook}})
	id := fmt.Sprint(ct.ID)
	rt := &runtime.PCT{Runner: runner.Exec{}, HostRoot: "/", ProcRoot: "/proc", StartTimeout: 3 * time.Second, TaskWait: time.Minute}
	start := time.Now()
	err := rt.Start(context.Background(), id)
	took := time.Since(start)
	t.Logf("Start returned after %v: %v", took.Round(time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "the PVE task ran on after pct was killed") {
		t.Fatalf("error %v, want the timeout and the wait for the task", err)
	}
	if took < 10*time.Second {
		t.Errorf("returned after %v, before the 12s task could have ended", took)
	}
	f, err := os.OpenFile(rt.LockPath(id), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Errorf("config lock still held when Start returned: %v", err)
	}
	t.Logf("after the task: pct status says %s", ct.Status(t))
}
