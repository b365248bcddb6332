package hostagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/journal"
	"gpupass/internal/log"
	"gpupass/internal/runner"
	"gpupass/internal/runtime"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

// Fault tests: the host agent on a simulated Proxmox host (a fixture root with a
// simulated GPU, /etc/pve/lxc/901.conf and the PVE lock directory), its real PCT runtime
// running a fake `pct` (a shell script: real processes, exit codes, stderr, hangs) and its
// real guest registry. Each fault must leave the config and the container as they were, or
// as desired, and say why.

// fakePCT is the pct the runtime runs: container state in files, faults on request.
const fakePCT = `#!/bin/sh
# fake pct for gpupass fault tests. State: $D/state-<id> (running|stopped); the running
# container's init pid is $D/pid. Faults (and see edit- below): $D/hang-<cmd> makes <cmd> hang; $D/fail-<cmd>
# holds how many more times <cmd> fails, printing $D/stdout-<cmd> first (as pct prints the
# task log on stdout). $D/task-<cmd> (seconds) makes <cmd> start a PVE
# "task" that holds the config lock ($D/lockpath) that long, outlives pct, and ends the hang.
D=$(dirname "$0")
cmd=$1 id=$2
echo "$*" >> "$D/transcript"
if [ -s "$D/task-$cmd" ]; then
  secs=$(cat "$D/task-$cmd"); rm -f "$D/task-$cmd"
  flock "$(cat "$D/lockpath")" sh -c "echo task-start >> '$D/transcript'; sleep $secs; echo running > '$D/state-$id'; rm -f '$D/hang-$cmd'; echo task-done >> '$D/transcript'" >/dev/null 2>&1 &
  while ! grep -q task-start "$D/transcript"; do sleep 0.05; done
fi
if [ -e "$D/hang-$cmd" ]; then exec sleep 60; fi
# $D/edit-<cmd>: someone else appends this line to the config ($D/confpath) during <cmd>.
if [ -s "$D/edit-$cmd" ]; then cat "$D/edit-$cmd" >> "$(cat "$D/confpath")"; rm -f "$D/edit-$cmd"; fi
if [ -s "$D/fail-$cmd" ]; then
  n=$(cat "$D/fail-$cmd")
  if [ "$n" -gt 0 ]; then
    echo $((n - 1)) > "$D/fail-$cmd"
    if [ -e "$D/stdout-$cmd" ]; then cat "$D/stdout-$cmd"; fi
    echo "CT $id: $cmd failed: injected failure" >&2
    exit 1
  fi
fi
case $cmd in
status)
  st=$(cat "$D/state-$id" 2>/dev/null || echo stopped)
  echo "status: $st"
  if [ "$st" = running ]; then echo "pid: $(cat "$D/pid")"; fi
  echo "name: ct$id" ;;
start|reboot) echo running > "$D/state-$id" ;;
stop) echo stopped > "$D/state-$id" ;;
*) echo "fake pct: $cmd not implemented" >&2; exit 2 ;;
esac
`

// origConf is the container's config before any apply: a description, the main section
// and a snapshot section, which no apply may touch.
const origConf = `# GPU worker
arch: amd64
cores: 4
hostname: ct901
memory: 8192
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth
ostype: debian
rootfs: local-lvm:vm-901-disk-0,size=8G
unprivileged: 1

[before-gpu]
arch: amd64
cores: 2
hostname: ct901
rootfs: local-lvm:vm-901-disk-0,size=8G
snaptime: 1700000000
`

// binRunner runs every command from dir (the fake pct) as a real process.
type binRunner struct{ dir string }

func (r binRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	out, err := runner.Exec{}.Run(ctx, append([]string{filepath.Join(r.dir, argv[0])}, argv[1:]...)...)
	var ee *runner.ExitError
	if errors.As(err, &ee) {
		ee.Argv = argv // report the command as the runtime issued it
	}
	return out, err
}

type faultHost struct {
	t      *testing.T
	root   string // the simulated host
	bin    string // fake pct and its state
	conf   string // /etc/pve/lxc/901.conf under root
	cfg    *hostconfig.Config
	agent  *Agent
	guests *guestchan.Registry
	logs   *syncBuffer
}

// newFaultHost builds the host with container 901 running or stopped. PCT deadlines:
// queries 2s, start and stop 1s.
func newFaultHost(t *testing.T, running bool) *faultHost {
	t.Helper()
	testenv.RequireRoot(t)
	h := &faultHost{t: t, root: gputest.SimulatedRoot(t, gpu.SimOptions{GPUs: 1}), bin: t.TempDir()}
	h.conf = filepath.Join(h.root, "etc/pve/lxc/901.conf")
	if err := os.MkdirAll(filepath.Dir(h.conf), 0o755); err != nil {
		t.Fatal(err)
	}
	h.writeConf(origConf)
	if err := os.WriteFile(filepath.Join(h.bin, "pct"), []byte(fakePCT), 0o755); err != nil {
		t.Fatal(err)
	}
	h.setFile("pid", fmt.Sprint(os.Getpid())) // the running container's "init": /proc/<pid>/root/dev has no GPU
	h.setFile("lockpath", pveconfLockPath(h.root, "901"))
	h.setFile("confpath", h.conf)
	state := "stopped"
	if running {
		state = "running"
	}
	h.setFile("state-901", state)
	h.start(t.TempDir())
	return h
}

// reopenFaultHost is a host agent started again over the files of an earlier one (its
// simulated root, fake pct and state directory under base): what a restart of the agent
// after a crash finds.
func reopenFaultHost(t *testing.T, root, bin, base string) *faultHost {
	t.Helper()
	testenv.RequireRoot(t)
	h := &faultHost{t: t, root: root, bin: bin, conf: filepath.Join(root, "etc/pve/lxc/901.conf")}
	h.start(base)
	return h
}

// start starts the agent and its guest registry with state under base.
func (h *faultHost) start(base string) {
	t := h.t
	cfg := hostconfig.Default()
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "g")
	cfg.HostRoot = h.root
	cfg.Heartbeat = time.Second
	cfg.GuestStaleAfter = 3 * time.Second
	h.cfg = cfg
	h.logs = &syncBuffer{}
	h.guests = guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Heartbeat: cfg.Heartbeat, Log: log.ForTest(t, "guests"), Build: "test"})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = h.guests.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	rt := &runtime.PCT{Runner: binRunner{h.bin}, HostRoot: h.root, QueryTimeout: 2 * time.Second, StartTimeout: time.Second, StopTimeout: time.Second}
	l := log.Component(log.New(log.Options{Out: h.logs, Format: "json", Level: "debug"}), "hostagent")
	a, err := New(cfg, Options{Runtime: rt, Guests: h.guests, Log: l, Name: "pve-test"})
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("host agent log:\n%s", h.logs.String())
			t.Logf("pct transcript:\n%s", h.file("transcript"))
		}
	})
}

func (h *faultHost) writeConf(s string) {
	h.t.Helper()
	if err := os.WriteFile(h.conf, []byte(s), 0o640); err != nil {
		h.t.Fatal(err)
	}
}

func (h *faultHost) setFile(name, content string) {
	h.t.Helper()
	if err := os.WriteFile(filepath.Join(h.bin, name), []byte(content+"\n"), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

func (h *faultHost) file(name string) string {
	b, _ := os.ReadFile(filepath.Join(h.bin, name))
	return strings.TrimSpace(string(b))
}

// pctActions is what the agent made pct do to the container (queries left out).
func (h *faultHost) pctActions() []string {
	var out []string
	for _, l := range strings.Split(h.file("transcript"), "\n") {
		if l != "" && !strings.HasPrefix(l, "status ") {
			out = append(out, l)
		}
	}
	return out
}

// apply applies GPU 0 to container 901 (want: running when wantRunning) with the readiness
// wait bounded by wait, and returns the result and how long it took.
func (h *faultHost) apply(wantRunning bool, wait time.Duration) (*pb.ContainerResult, time.Duration) {
	h.t.Helper()
	spec := &pb.ContainerSpec{Id: "901", Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW}
	if wantRunning {
		spec.WantState = "running"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	resp := h.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{spec}, TimeoutMs: wait.Milliseconds()}, nil)
	d := time.Since(start)
	if len(resp.GetContainers()) != 1 {
		h.t.Fatalf("apply answered %d results", len(resp.GetContainers()))
	}
	res := resp.GetContainers()[0]
	h.t.Logf("apply after %v: error=%q state=%s reasons=%q written=%v restarted=%v started=%v rolled_back=%v",
		d.Round(time.Millisecond), res.GetError(), res.GetStatus().GetState(), res.GetStatus().GetReasons(), res.GetWritten(), res.GetRestarted(), res.GetStarted(), res.GetRolledBack())
	return res, d
}

// assertConfAsWas checks that the config is byte-identical to the original and that no
// temp file was left beside it.
func (h *faultHost) assertConfAsWas() {
	h.t.Helper()
	b, err := os.ReadFile(h.conf)
	if err != nil {
		h.t.Fatal(err)
	}
	if string(b) != origConf {
		h.t.Errorf("config changed:\n%s", b)
	}
	left, _ := filepath.Glob(h.conf + ".tmp*")
	if len(left) > 0 {
		h.t.Errorf("temp files left beside the config: %v", left)
	}
}

// assertConfDesired checks that the config holds GPU 0's entries and the original lines.
func (h *faultHost) assertConfDesired() {
	h.t.Helper()
	b, err := os.ReadFile(h.conf)
	if err != nil {
		h.t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{
		"lxc.mount.entry: " + h.root + "/dev/nvidia0 dev/nvidia0 none bind,create=file 0 0\n",
		"/dev/nvidiactl dev/nvidiactl none bind", " dev/gpupass none bind", "lxc.cgroup2.devices.allow: c 7:0 rwm\n",
		"\n[before-gpu]\narch: amd64\ncores: 2\n", "\ncores: 4\n",
	} {
		if !strings.Contains(s, want) {
			h.t.Errorf("config lacks %q:\n%s", want, s)
		}
	}
}

// journalOutcome is the done step of the container's only journaled apply.
func (h *faultHost) journalOutcome() journal.Entry {
	h.t.Helper()
	files, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "journal", "done", "*.jsonl"))
	if open, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "journal", "*.jsonl")); len(open) > 0 {
		h.t.Errorf("unfinished journal entries: %v", open)
	}
	if len(files) != 1 {
		h.t.Fatalf("%d finished journal files, want 1", len(files))
	}
	entries, err := journal.ReadFile(files[0])
	if err != nil || len(entries) == 0 {
		h.t.Fatalf("journal %s: %v", files[0], err)
	}
	last := entries[len(entries)-1]
	if last.Step != journal.StepDone {
		h.t.Fatalf("journal ends with %q, want done", last.Step)
	}
	return last
}

func wantContains(t *testing.T, what, got string, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(got, p) {
			t.Errorf("%s %q does not say %q", what, got, p)
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes on dir until the test ends.
func mountTmpfs(t *testing.T, dir string, size int) {
	t.Helper()
	if err := unix.Mount("gpupass-test", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		testenv.Skip(t, "cannot mount a tmpfs: "+err.Error())
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestFaultDiskFull: the filesystem of /etc/pve/lxc fills up. The config write fails
// before the rename; the config is as it was, nothing is left beside it, the running
// container is not touched, and the error says why.
func TestFaultDiskFull(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	dir := filepath.Dir(h.conf)
	mountTmpfs(t, dir, 64<<10)
	h.writeConf(origConf)
	// Fill the rest: one page at a time until ENOSPC.
	fill, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	page := make([]byte, 4096)
	for {
		if _, err := fill.Write(page); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	fill.Close()

	res, _ := h.apply(false, 2*time.Second)
	wantContains(t, "error", res.GetError(), "write "+h.conf, "no space left on device", "the container and its config are as they were")
	if res.GetWritten() || res.GetRestarted() || res.GetStarted() {
		t.Errorf("written=%v restarted=%v started=%v, want none", res.GetWritten(), res.GetRestarted(), res.GetStarted())
	}
	h.assertConfAsWas()
	if a := h.pctActions(); len(a) != 0 {
		t.Errorf("pct was asked to %q, want nothing", a)
	}
	if h.file("state-901") != "running" {
		t.Errorf("container is %s, want running as it was", h.file("state-901"))
	}
	if o := h.journalOutcome(); o.Outcome != journal.OutcomeAsWas || !strings.Contains(o.Detail, "no space left") {
		t.Errorf("journal outcome %q (%s), want %q naming the full disk", o.Outcome, o.Detail, journal.OutcomeAsWas)
	}
}

// TestFaultReadOnlyConfigDir: /etc/pve/lxc is mounted read-only (as pmxcfs is without
// quorum). Nothing is written, nothing restarted, and the error names the file and why.
func TestFaultReadOnlyConfigDir(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	dir := filepath.Dir(h.conf)
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		testenv.Skip(t, "cannot bind-mount: "+err.Error())
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}

	res, _ := h.apply(false, 2*time.Second)
	wantContains(t, "error", res.GetError(), "write "+h.conf, "read-only file system", "the container and its config are as they were")
	h.assertConfAsWas()
	if a := h.pctActions(); len(a) != 0 {
		t.Errorf("pct was asked to %q, want nothing", a)
	}
	if o := h.journalOutcome(); o.Outcome != journal.OutcomeAsWas {
		t.Errorf("journal outcome %q (%s), want %q", o.Outcome, o.Detail, journal.OutcomeAsWas)
	}
}

// TestFaultConfigLockHeldByAnotherProcess: another process (flock(1), as a running pct
// would) holds /run/lock/lxc/pve-config-901.lock. The agent waits a bounded time (the
// config file's 10 s), then gives up with an error naming the lock file; nothing is
// written or restarted.
func TestFaultConfigLockHeldByAnotherProcess(t *testing.T) {
	t.Parallel()
	testenv.RequireCommands(t, "flock")
	h := newFaultHost(t, true)
	lock := filepath.Join(h.root, "run/lock/lxc/pve-config-901.lock")
	if err := os.MkdirAll(filepath.Dir(lock), 0o755); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("flock", "--exclusive", lock, "sh", "-c", "echo locked; exec sleep 60")
	holder.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // flock and its sleep, killed together
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-holder.Process.Pid, syscall.SIGKILL); _ = holder.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("the lock holder did not start: %q, %v", line, err)
	}

	res, d := h.apply(false, 2*time.Second)
	wantContains(t, "error", res.GetError(), lock, "held by another process", "retry later")
	if d < 9*time.Second || d > 20*time.Second {
		t.Errorf("gave up after %v, want after the 10s lock timeout", d)
	}
	h.assertConfAsWas()
	if a := h.pctActions(); len(a) != 0 {
		t.Errorf("pct was asked to %q, want nothing", a)
	}
	if o := h.journalOutcome(); o.Outcome != journal.OutcomeAsWas {
		t.Errorf("journal outcome %q (%s), want %q", o.Outcome, o.Detail, journal.OutcomeAsWas)
	}
}

// TestFaultPctFails: pct exits non-zero. A failed reboot of a running container rolls
// back (backup restored, container started again from it); a failed start of a stopped
// container restores the config and leaves it stopped. Each error quotes pct.
func TestFaultPctFails(t *testing.T) {
	t.Parallel()
	t.Run("reboot of a running container", func(t *testing.T) {
		t.Parallel()
		h := newFaultHost(t, true)
		h.setFile("fail-reboot", "1")
		res, _ := h.apply(false, 2*time.Second)
		wantContains(t, "error", res.GetError(), "restart container 901", "pct reboot 901", "exit 1", "injected failure", "rolled back: the config and the container are as they were")
		if !res.GetRolledBack() {
			t.Error("not rolled back")
		}
		h.assertConfAsWas()
		if got, want := strings.Join(h.pctActions(), "; "), "reboot 901 --timeout 1; reboot 901 --timeout 1"; got != want {
			t.Errorf("pct actions %q, want %q (the failed reboot, then the one from the restored config)", got, want)
		}
		if h.file("state-901") != "running" {
			t.Errorf("container is %s, want running as it was", h.file("state-901"))
		}
		if o := h.journalOutcome(); o.Outcome != journal.OutcomeAsWas {
			t.Errorf("journal outcome %q (%s), want %q", o.Outcome, o.Detail, journal.OutcomeAsWas)
		}
	})
	t.Run("start of a stopped container", func(t *testing.T) {
		t.Parallel()
		h := newFaultHost(t, false)
		h.setFile("fail-start", "5")
		res, _ := h.apply(true, 2*time.Second)
		wantContains(t, "error", res.GetError(), "start container 901", "pct start 901", "injected failure", "rolled back")
		h.assertConfAsWas()
		if h.file("state-901") != "stopped" {
			t.Errorf("container is %s, want stopped as it was", h.file("state-901"))
		}
		if o := h.journalOutcome(); o.Outcome != journal.OutcomeAsWas {
			t.Errorf("journal outcome %q (%s), want %q", o.Outcome, o.Detail, journal.OutcomeAsWas)
		}
	})
}

// TestFaultPctHangs: pct never answers. The runtime's deadline kills it and says so; a
// hung start rolls back, a hung status stops the apply before anything is written.
func TestFaultPctHangs(t *testing.T) {
	t.Parallel()
	t.Run("start", func(t *testing.T) {
		t.Parallel()
		h := newFaultHost(t, false)
		h.setFile("hang-start", "")
		res, d := h.apply(true, 2*time.Second)
		wantContains(t, "error", res.GetError(), "pct start 901", "no answer after 1s", "rolled back")
		if d > 10*time.Second {
			t.Errorf("apply took %v with a 1s start deadline", d)
		}
		h.assertConfAsWas()
		if h.file("state-901") != "stopped" {
			t.Errorf("container is %s, want stopped as it was", h.file("state-901"))
		}
	})
	t.Run("status", func(t *testing.T) {
		t.Parallel()
		h := newFaultHost(t, true)
		h.setFile("hang-status", "")
		res, d := h.apply(false, 2*time.Second)
		wantContains(t, "error", res.GetError(), "state of container 901", "pct status 901 --verbose", "no answer after 2s")
		if d > 15*time.Second {
			t.Errorf("apply took %v with a 2s query deadline", d)
		}
		h.assertConfAsWas()
		if res.GetWritten() {
			t.Error("written despite the unknown container state")
		}
	})
}

// TestFaultGuestNeverConnects: the container starts with its GPU but no guest agent ever
// connects. Apply returns not-ready within the readiness deadline, with the reason; the
// config and the running container are as desired, and the journal says so.
func TestFaultGuestNeverConnects(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, false)
	const wait = 1500 * time.Millisecond
	res, d := h.apply(true, wait)
	if res.GetError() != "" {
		t.Errorf("error %q, want none: the apply itself worked", res.GetError())
	}
	if got := res.GetStatus().GetState(); got != StateNotReady {
		t.Errorf("state %q, want %q", got, StateNotReady)
	}
	wantContains(t, "reasons", strings.Join(res.GetStatus().GetReasons(), "; "), "guest agent has not connected")
	if d < wait || d > wait+3*time.Second {
		t.Errorf("returned after %v, want just after the %v deadline", d, wait)
	}
	if !res.GetWritten() || !res.GetStarted() || res.GetRestarted() || res.GetRolledBack() {
		t.Errorf("written=%v started=%v restarted=%v rolled_back=%v, want written and started (a stopped container: not a restart), not rolled back",
			res.GetWritten(), res.GetStarted(), res.GetRestarted(), res.GetRolledBack())
	}
	h.assertConfDesired()
	if h.file("state-901") != "running" {
		t.Errorf("container is %s, want running as desired", h.file("state-901"))
	}
	o := h.journalOutcome()
	if o.Outcome != journal.OutcomeDesired || !strings.Contains(o.Detail, "guest agent has not connected") {
		t.Errorf("journal outcome %q (%s), want %q naming the silent guest", o.Outcome, o.Detail, journal.OutcomeDesired)
	}
	// The status query afterwards says the same, from what the agent knows.
	st := h.agent.Status(context.Background(), &pb.StatusRequest{})
	b, _ := json.Marshal(st.GetContainers())
	if len(st.GetContainers()) != 1 || st.GetContainers()[0].GetState() != StateNotReady {
		t.Errorf("status %s, want 901 not-ready", b)
	}
}
