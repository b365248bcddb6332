package hostagent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/runtime"
	"gpupass/internal/testenv"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// fakeRuntime is a running container whose init is a fixture process tree.
type fakeRuntime struct {
	dir     string
	pid     int
	running bool
	started []byte // nil: ErrNoStartedConfig
	calls   []string
}

func (f *fakeRuntime) Name() string { return "fake" }
func (f *fakeRuntime) State(context.Context, string) (runtime.State, error) {
	if !f.running {
		return runtime.State{}, nil
	}
	return runtime.State{Running: true, InitPID: f.pid}, nil
}
func (f *fakeRuntime) Start(_ context.Context, id string) error {
	f.calls = append(f.calls, "start "+id)
	f.running = true
	return nil
}
func (f *fakeRuntime) Stop(_ context.Context, id string) error {
	f.calls = append(f.calls, "stop "+id)
	f.running = false
	return nil
}
func (f *fakeRuntime) Restart(_ context.Context, id string) error {
	f.calls = append(f.calls, "restart "+id)
	return nil
}
func (f *fakeRuntime) ConfigPath(id string) string  { return filepath.Join(f.dir, id, "config") }
func (f *fakeRuntime) ConfigFormat() runtime.Format { return runtime.FormatLXC }
func (f *fakeRuntime) LockPath(id string) string    { return filepath.Join(f.dir, id+".lock") }
func (f *fakeRuntime) StartedConfig(context.Context, string, runtime.State) ([]byte, error) {
	if f.started == nil {
		return nil, runtime.ErrNoStartedConfig
	}
	return f.started, nil
}

const baseConfig = `lxc.uts.name = 901
lxc.rootfs.path = dir:/var/lib/lxc/901/rootfs
lxc.net.0.type = empty
lxc.cgroup2.devices.deny = a
lxc.cgroup2.devices.allow = c 1:3 rwm
`

type restartFixture struct {
	t      *testing.T
	root   string // simulated host root
	ctRoot string // the container init's root, seen through <proc>/<pid>/root
	rt     *fakeRuntime
	agent  *Agent
	guests *guestchan.Registry
	// reportDriver is what guestReport says about the driver (nil: nothing).
	reportDriver *pb.DriverVersions
}

func newRestartFixture(t *testing.T) *restartFixture {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	host := filepath.Join(dir, "host")
	if err := gpu.WriteSimulatedHost(host, gpu.SimOptions{GPUs: 2}); err != nil {
		t.Fatal(err)
	}
	// A process tree under the host root's proc (its "self" makes ProcRoot use it).
	pid := 4242
	ctRoot := filepath.Join(host, "proc", fmt.Sprint(pid), "root")
	for _, d := range []string{filepath.Join(host, "proc", "self"), filepath.Join(ctRoot, "dev"), filepath.Join(ctRoot, "run")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := hostconfig.Default()
	cfg.HostRoot = host
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.GuestSocketDir = filepath.Join(dir, "guests")
	rt := &fakeRuntime{dir: filepath.Join(dir, "lxc"), pid: pid, running: true}
	reg := guestchan.New(guestchan.Config{
		Dir: cfg.GuestSocketDir, Log: log.ForTest(t, "guests"),
		PeerCgroup: func(int32) (string, error) { return "0::/lxc.payload.901\n", nil },
		PeerRoot:   func(*net.UnixConn, int32, time.Time) error { return nil }, // this process stands for the guest
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- reg.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if _, err := reg.Ensure("901"); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Runtime: rt, Guests: reg, Log: log.ForTest(t, "agent"), Name: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rt.dir, "901"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := &restartFixture{t: t, root: host, ctRoot: ctRoot, rt: rt, agent: a, guests: reg}
	f.mountinfo()
	return f
}

// mountinfo writes the init's mountinfo: the container's root, then the given lines.
func (f *restartFixture) mountinfo(lines ...string) {
	f.t.Helper()
	all := append([]string{"100 90 8:1 /lxc/901/rootfs / rw,relatime - ext4 /dev/sda1 rw"}, lines...)
	p := filepath.Join(filepath.Dir(f.ctRoot), "mountinfo")
	if err := os.WriteFile(p, []byte(strings.Join(all, "\n")+"\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// guestBind is the mountinfo line of the guest directory's bind at dir inside.
func (f *restartFixture) guestBind(id int, dir string) string {
	f.t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(f.agent.guestDir("901"), &st); err != nil {
		f.t.Fatal(err)
	}
	return fmt.Sprintf("%d 100 %d:%d /guests/901 %s rw,relatime - tmpfs tmpfs rw", id, unix.Major(st.Dev), unix.Minor(st.Dev), dir)
}

// guestSocketAt makes the container see the host's socket at dir/agent.sock (a hard
// link: the same inode, as the bind mount gives) with the bind in its mountinfo.
func (f *restartFixture) guestSocketAt(dir string) {
	f.t.Helper()
	inside := filepath.Join(f.ctRoot, dir)
	if err := os.MkdirAll(inside, 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Link(filepath.Join(f.agent.guestDir("901"), guestchan.SocketName), filepath.Join(inside, guestchan.SocketName)); err != nil {
		f.t.Fatal(err)
	}
	f.mountinfo(f.guestBind(110, dir))
}

// desired writes the config as gpupass would render it for GPU 1 and returns its bytes.
func (f *restartFixture) desired() []byte {
	f.t.Helper()
	path := f.rt.ConfigPath("901")
	if err := os.WriteFile(path, []byte(baseConfig), 0o644); err != nil {
		f.t.Fatal(err)
	}
	p, err := f.agent.plan(context.Background(), &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(path, p.res.New, 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p.res.New
}

// node makes a char node inside the container's /dev.
func (f *restartFixture) node(name string, major, minor uint32) {
	f.t.Helper()
	p := filepath.Join(f.ctRoot, "dev", name)
	if err := gpu.Mknod(p, major, minor, 0o666); err != nil {
		f.t.Fatal(err)
	}
}

// liveContainer gives the container everything GPU 1 needs, as a restart would.
func (f *restartFixture) liveContainer() {
	f.node("nvidia1", 7, 1)
	f.node("nvidiactl", 7, 128)
	f.node("nvidia-uvm", 10, 229)
	f.node("nvidia-uvm-tools", 10, 200)
	f.guestSocketAt("/dev/gpupass")
}

// guestReport connects a guest of 901 and pushes a report with the given device statuses.
func (f *restartFixture) guestReport(status pb.DeviceStatus) {
	f.t.Helper()
	f.sendReport(f.report(status))
}

// report is a guest report of GPU 1's devices, each with the given status.
func (f *restartFixture) report(status pb.DeviceStatus) *pb.GuestReport {
	rep := &pb.GuestReport{ContainerId: "901", Ready: status == pb.DeviceStatus_DEVICE_STATUS_OK, Driver: f.reportDriver}
	for _, d := range [][3]any{{"/dev/nvidia1", 7, 1}, {"/dev/nvidiactl", 7, 128}, {"/dev/nvidia-uvm", 10, 229}, {"/dev/nvidia-uvm-tools", 10, 200}} {
		rep.Devices = append(rep.Devices, &pb.DeviceCheck{Path: d[0].(string), Major: uint32(d[1].(int)), Minor: uint32(d[2].(int)), Status: status})
	}
	return rep
}

// sendReport connects a guest of 901, pushes rep and waits until the agent has it.
func (f *restartFixture) sendReport(rep *pb.GuestReport) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := net.Dial("unix", filepath.Join(f.agent.guestDir("901"), "agent.sock"))
	if err != nil {
		f.t.Fatal(err)
	}
	sess, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, ContainerID: "901"}, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { sess.Close() })
	st, err := sess.Open(context.Background(), guestchan.Method)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := st.Send(rep); err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.guests.Wait(ctx, "901", func(s guestchan.Snapshot) bool { return s.Report != nil }); err != nil {
		f.t.Fatal(err)
	}
}

func TestRestartRule(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(f *restartFixture, desired []byte)
		wantReason string // "" means no restart
	}{
		{
			name: "running as desired: no restart, though someone else wrote the lines",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.rt.started = desired
			},
		},
		{
			name:       "seed scenario: lines present, container running without them (FACTS row 1)",
			setup:      func(f *restartFixture, desired []byte) { f.rt.started = []byte(baseConfig) },
			wantReason: "running container has no /dev/nvidia1 (want 7:1)",
		},
		{
			name: "stale uvm major inside (FACTS row 5)",
			setup: func(f *restartFixture, desired []byte) {
				f.node("nvidia1", 7, 1)
				f.node("nvidiactl", 7, 128)
				f.node("nvidia-uvm", 10, 237)
				f.node("nvidia-uvm-tools", 10, 200)
				f.rt.started = desired
			},
			wantReason: "running container's /dev/nvidia-uvm is 10:237, want 10:229",
		},
		{
			name: "a clone still runs with GPU 0 (FACTS row 4)",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.node("nvidia0", 7, 0)
				f.rt.started = desired
			},
			wantReason: "running container still has /dev/nvidia0, which is not assigned",
		},
		{
			name: "still has MIG capability nodes a whole GPU no longer gets",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.node("nvidia-caps/nvidia-cap1", 1, 3)
				f.rt.started = desired
			},
			wantReason: "running container still has /dev/nvidia-caps/nvidia-cap1, which is not assigned",
		},
		{
			name: "started with a stale rule",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.rt.started = []byte(strings.Replace(string(desired), "c 10:229 rwm", "c 10:237 rwm", 1))
			},
			wantReason: "running container was started without lxc.cgroup2.devices.allow=c 10:229 rwm",
		},
		{
			name:       "no start record and no guest: restart and say why",
			setup:      func(f *restartFixture, desired []byte) { f.liveContainer() },
			wantReason: "no record of the device rules the running container was started with",
		},
		{
			name: "no start record but the guest proves the nodes open: no restart",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.guestReport(pb.DeviceStatus_DEVICE_STATUS_OK)
			},
		},
		{
			name: "guest reports denied",
			setup: func(f *restartFixture, desired []byte) {
				f.liveContainer()
				f.guestReport(pb.DeviceStatus_DEVICE_STATUS_DENIED)
			},
			wantReason: "guest reports /dev/nvidia1 denied by the device cgroup",
		},
		{
			name: "guest socket not mounted",
			setup: func(f *restartFixture, desired []byte) {
				f.rt.started = desired
				f.liveContainer()
				os.RemoveAll(filepath.Join(f.ctRoot, "dev", "gpupass"))
				f.mountinfo()
			},
			wantReason: "running container was started without the guest socket mount at /dev/gpupass",
		},
		{
			name: "guest socket at the legacy /run/gpupass (started before the move): no restart",
			setup: func(f *restartFixture, desired []byte) {
				f.rt.started = desired
				f.liveContainer()
				os.RemoveAll(filepath.Join(f.ctRoot, "dev", "gpupass"))
				f.guestSocketAt("/run/gpupass")
			},
		},
		{
			name: "legacy /run/gpupass hidden by systemd's tmpfs on /run",
			setup: func(f *restartFixture, desired []byte) {
				f.rt.started = desired
				f.liveContainer()
				os.RemoveAll(filepath.Join(f.ctRoot, "dev", "gpupass"))
				// The bind is in mountinfo; the tmpfs mounted after it makes /run empty.
				f.mountinfo(f.guestBind(110, "/run/gpupass"), "120 100 0:77 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755")
			},
			wantReason: "guest socket hidden inside the container by a mount on /run",
		},
		{
			name: "a socket of the same name that is not the host's",
			setup: func(f *restartFixture, desired []byte) {
				f.rt.started = desired
				f.liveContainer()
				p := filepath.Join(f.ctRoot, "dev", "gpupass", guestchan.SocketName)
				os.Remove(p)
				if err := os.WriteFile(p, nil, 0o644); err != nil {
					f.t.Fatal(err)
				}
			},
			wantReason: "guest socket at /dev/gpupass inside the container is not the host's",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRestartFixture(t)
			desired := f.desired()
			tc.setup(f, desired)
			p, err := f.agent.plan(context.Background(), &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}})
			if err != nil {
				t.Fatal(err)
			}
			if p.res.Changed {
				t.Errorf("plan changes a config that is already desired:\n%s", p.res.Diff)
			}
			r := p.pb.GetRestart()
			if tc.wantReason == "" {
				if r.GetRequired() {
					t.Errorf("restart required, want none: %v", r.GetReasons())
				}
				return
			}
			if !r.GetRequired() || !strings.Contains(strings.Join(r.GetReasons(), "\n"), tc.wantReason) {
				t.Errorf("restart = %v %q, want a reason containing %q", r.GetRequired(), r.GetReasons(), tc.wantReason)
			}
		})
	}
}

// TestApplyWritesNothingTwice: an apply whose config is already desired and whose
// container runs as desired writes nothing and restarts nothing.
func TestApplyIdempotent(t *testing.T) {
	f := newRestartFixture(t)
	desired := f.desired()
	f.liveContainer()
	f.rt.started = desired
	f.guestReport(pb.DeviceStatus_DEVICE_STATUS_OK)
	resp := f.agent.Apply(context.Background(), &pb.ApplyRequest{Containers: []*pb.ContainerSpec{{Id: "901", Gpus: []string{"1"}}}, TimeoutMs: 2000}, nil)
	res := resp.GetContainers()[0]
	if res.GetWritten() || res.GetRestarted() || res.GetStarted() || res.GetError() != "" {
		t.Errorf("apply: written=%v restarted=%v started=%v err=%q", res.GetWritten(), res.GetRestarted(), res.GetStarted(), res.GetError())
	}
	if len(f.rt.calls) != 0 {
		t.Errorf("runtime calls %v, want none", f.rt.calls)
	}
	got, err := os.ReadFile(f.rt.ConfigPath("901"))
	if err != nil || string(got) != string(desired) {
		t.Errorf("config changed: %v\n%s", err, got)
	}
}

// TestStatusNamesGuestSocket: a running container whose guest has not connected is not
// ready, and status says why from what the container sees.
func TestStatusNamesGuestSocket(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f *restartFixture)
		want  string // a reason status must give; "" means none about the socket
	}{
		{"socket visible: no socket reason", func(f *restartFixture) { f.guestSocketAt("/dev/gpupass") }, ""},
		{"never mounted", func(f *restartFixture) {}, "running container was started without the guest socket mount at /dev/gpupass"},
		{"hidden by a tmpfs on /run", func(f *restartFixture) {
			f.mountinfo(f.guestBind(110, "/run/gpupass"), "120 100 0:77 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755")
		}, "guest socket hidden inside the container by a mount on /run"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRestartFixture(t)
			tc.setup(f)
			cs := f.agent.status(context.Background(), &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}})
			if cs.GetState() != StateNotReady {
				t.Errorf("state %s, want %s", cs.GetState(), StateNotReady)
			}
			got := strings.Join(cs.GetReasons(), "\n")
			if !strings.Contains(got, "guest agent has not connected") {
				t.Errorf("reasons %q lack the not-connected reason", cs.GetReasons())
			}
			// The same reasons as data: one detail per text, the kinds status decided.
			if diff := cmp.Diff(cs.GetReasons(), pb.ReasonTexts(cs.GetDetails())); diff != "" {
				t.Errorf("details' text differs from the reasons (-reasons +details):\n%s", diff)
			}
			kinds := map[pb.ReasonKind]bool{}
			for _, r := range cs.GetDetails() {
				kinds[r.GetKind()] = true
			}
			if !kinds[pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED] {
				t.Errorf("details %v lack the kind GuestNotConnected", cs.GetDetails())
			}
			socketReason := strings.Contains(got, "guest socket") || strings.Contains(got, "socket mount")
			switch {
			case tc.want == "" && socketReason:
				t.Errorf("reasons %q name the socket, which the container sees", cs.GetReasons())
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("reasons %q, want one containing %q", cs.GetReasons(), tc.want)
			}
		})
	}
}
