package restartrule

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	pb "gpupass/proto/gpupass/v1"
)

// The host of these cases: GPU 1 (195:1), nvidiactl (195:255), nvidia-uvm (510:0).
var inv = &gpu.Inventory{
	Majors:      map[string]uint32{"nvidia": 195, "nvidia-uvm": 510},
	CharDevices: map[uint32][]string{195: {"nvidia"}, 510: {"nvidia-uvm"}},
}

const desiredConfig = `lxc.cgroup2.devices.deny = a
lxc.cgroup2.devices.allow = c 195:* rwm
lxc.cgroup2.devices.allow = c 510:* rwm
lxc.mount.entry = /dev/nvidia1 dev/nvidia1 none bind,create=file 0 0
`

var devices = []passthrough.ExpectedDevice{
	{Path: "/dev/nvidia1", Major: 195, Minor: 1},
	{Path: "/dev/nvidiactl", Major: 195, Minor: 255},
	{Path: "/dev/nvidia-uvm", Major: 510, Minor: 0},
}

func managed(t *testing.T, text string) []string {
	t.Helper()
	cfg, err := pveconf.Parse([]byte(text), pveconf.FormatLXC)
	if err != nil {
		t.Fatal(err)
	}
	return passthrough.NewMatcher(inv).ManagedSet(cfg)
}

// asDesired is the evidence of a container running exactly as desired: every node, the
// socket at /dev/gpupass, started with the desired rules, no guest.
func asDesired() Evidence {
	ev := Evidence{
		Nodes:    map[string]observe.Node{},
		GPUNodes: []string{"/dev/nvidia1"},
		Socket:   Socket{HostDir: "/run/gpupass/guests/901", View: observe.SocketView{Visible: "/dev/gpupass"}},
		Started:  Started{Config: []byte(desiredConfig)},
	}
	for _, d := range devices {
		ev.Nodes[d.Path] = observe.Node{Exists: true, Char: true, Major: d.Major, Minor: d.Minor}
	}
	return ev
}

func report(status pb.DeviceStatus) *pb.GuestReport {
	rep := &pb.GuestReport{Ready: status == pb.DeviceStatus_DEVICE_STATUS_OK}
	for _, d := range devices {
		rep.Devices = append(rep.Devices, &pb.DeviceCheck{Path: d.Path, Major: d.Major, Minor: d.Minor, Status: status})
	}
	return rep
}

type want struct {
	Kinds []string // the reasons' kinds (ReasonKindName), in the decision's order
	Texts []string
}

// TestDecide is docs/host-agent.md's rule, case by case: evidence in, the decision and
// its reasons out.
func TestDecide(t *testing.T) {
	tests := []struct {
		name   string
		style  pb.Style
		edit   func(ev *Evidence)
		desire func(d *Desired) // nil: as desired, driver: own
		want   want             // no reasons: no restart
	}{
		{name: "running as desired: no restart", edit: func(ev *Evidence) {}},
		{
			name: "seed scenario: started without the lines (FACTS row 1)",
			edit: func(ev *Evidence) {
				ev.Nodes = map[string]observe.Node{}
				ev.GPUNodes = nil
				ev.Started.Config = []byte("lxc.cgroup2.devices.deny = a\n")
			},
			want: want{
				Kinds: []string{"NodeMissing", "NodeMissing", "NodeMissing", "StartedWithoutRule", "StartedWithoutRule"},
				Texts: []string{
					"running container has no /dev/nvidia-uvm (want 510:0)",
					"running container has no /dev/nvidia1 (want 195:1)",
					"running container has no /dev/nvidiactl (want 195:255)",
					"running container was started without lxc.cgroup2.devices.allow=c 195:* rwm",
					"running container was started without lxc.cgroup2.devices.allow=c 510:* rwm",
				},
			},
		},
		{
			name: "stale uvm major inside (FACTS row 5)",
			edit: func(ev *Evidence) {
				ev.Nodes["/dev/nvidia-uvm"] = observe.Node{Exists: true, Char: true, Major: 509, Minor: 0}
			},
			want: want{Kinds: []string{"NodeWrong"}, Texts: []string{"running container's /dev/nvidia-uvm is 509:0, want 510:0"}},
		},
		{
			name: "an optional bind left an empty file",
			edit: func(ev *Evidence) { ev.Nodes["/dev/nvidia-uvm"] = observe.Node{Exists: true} },
			want: want{Kinds: []string{"NodeNotChar"}, Texts: []string{"running container's /dev/nvidia-uvm is not a character device (an optional bind left an empty file); want 510:0"}},
		},
		{
			name: "the /dev cannot be inspected: restart to be sure",
			edit: func(ev *Evidence) {
				ev.Nodes, ev.NodesErr = nil, errors.New("open /proc/4242/root: no such file or directory")
			},
			want: want{Kinds: []string{"NodesUnreadable"}, Texts: []string{"cannot inspect the running container's /dev (open /proc/4242/root: no such file or directory); restarting to be sure"}},
		},
		{
			name: "a clone still runs with GPU 0 (FACTS row 4)",
			edit: func(ev *Evidence) { ev.GPUNodes = append(ev.GPUNodes, "/dev/nvidia0") },
			want: want{Kinds: []string{"NodeUnassigned"}, Texts: []string{"running container still has /dev/nvidia0, which is not assigned"}},
		},
		{
			name: "still has MIG capability nodes a whole GPU no longer gets",
			edit: func(ev *Evidence) { ev.GPUNodes = append(ev.GPUNodes, "/dev/nvidia-caps/nvidia-cap1") },
			want: want{Kinds: []string{"NodeUnassigned"}, Texts: []string{"running container still has /dev/nvidia-caps/nvidia-cap1, which is not assigned"}},
		},
		{
			name: "started with a stale rule",
			edit: func(ev *Evidence) {
				ev.Started.Config = []byte(strings.Replace(desiredConfig, "c 510:* rwm", "c 509:* rwm", 1))
			},
			want: want{
				Kinds: []string{"StartedWithRule", "StartedWithoutRule"},
				Texts: []string{
					"running container was started with lxc.cgroup2.devices.allow=c 509:* rwm, which is not desired",
					"running container was started without lxc.cgroup2.devices.allow=c 510:* rwm",
				},
			},
		},
		{
			name: "the start-time config cannot be read: restart to be sure",
			edit: func(ev *Evidence) { ev.Started = Started{Err: errors.New("permission denied")} },
			want: want{Kinds: []string{"StartedConfigUnreadable"}, Texts: []string{"cannot read the config the container was started with (permission denied); restarting to be sure"}},
		},
		{
			name:  "dev style: the start-time config is not compared",
			style: pb.Style_STYLE_DEV,
			edit:  func(ev *Evidence) { ev.Started = Started{None: true} },
		},
		{
			name: "no start record and no guest: restart and say why",
			edit: func(ev *Evidence) { ev.Started = Started{None: true} },
			want: want{Kinds: []string{"Unsettled"}, Texts: []string{"no record of the device rules the running container was started with, and no guest report proves them; restarting to be sure"}},
		},
		{
			name: "no start record but the guest proves the nodes open: no restart",
			edit: func(ev *Evidence) {
				ev.Started = Started{None: true}
				ev.Guest = report(pb.DeviceStatus_DEVICE_STATUS_OK)
			},
		},
		{
			name: "no start record, a guest report of other nodes proves nothing",
			edit: func(ev *Evidence) {
				ev.Started = Started{None: true}
				ev.Guest = report(pb.DeviceStatus_DEVICE_STATUS_OK)
				ev.Guest.Devices[0].Minor = 0
			},
			want: want{Kinds: []string{"Unsettled"}, Texts: []string{"no record of the device rules the running container was started with, and no guest report proves them; restarting to be sure"}},
		},
		{
			name: "guest reports denied",
			edit: func(ev *Evidence) { ev.Guest = report(pb.DeviceStatus_DEVICE_STATUS_DENIED) },
			want: want{
				Kinds: []string{"GuestDenied", "GuestDenied", "GuestDenied"},
				Texts: []string{
					"guest reports /dev/nvidia-uvm denied by the device cgroup: the running rules do not allow it",
					"guest reports /dev/nvidia1 denied by the device cgroup: the running rules do not allow it",
					"guest reports /dev/nvidiactl denied by the device cgroup: the running rules do not allow it",
				},
			},
		},
		{
			name: "guest socket not mounted",
			edit: func(ev *Evidence) { ev.Socket.View = observe.SocketView{} },
			want: want{Kinds: []string{"GuestSocketUnmounted"}, Texts: []string{"running container was started without the guest socket mount at /dev/gpupass"}},
		},
		{
			name: "guest socket at the legacy /run/gpupass (started before the move): no restart",
			edit: func(ev *Evidence) { ev.Socket.View = observe.SocketView{Visible: "/run/gpupass"} },
		},
		{
			name: "legacy /run/gpupass hidden by systemd's tmpfs on /run",
			edit: func(ev *Evidence) { ev.Socket.View = observe.SocketView{Hidden: "/run/gpupass", Cover: "/run"} },
			want: want{Kinds: []string{"GuestSocketHidden"}, Texts: []string{"guest socket hidden inside the container by a mount on /run"}},
		},
		{
			name: "a socket of the same name that is not the host's",
			edit: func(ev *Evidence) { ev.Socket.View = observe.SocketView{Mounted: "/dev/gpupass"} },
			want: want{Kinds: []string{"GuestSocketForeign"}, Texts: []string{"guest socket at /dev/gpupass inside the container is not the host's /run/gpupass/guests/901/agent.sock"}},
		},
		{
			name:   "driver: host, started with the loaded driver: no restart",
			desire: func(d *Desired) { d.DriverHost, d.Driver = true, "580.159.04" },
			edit:   func(ev *Evidence) { ev.Driver = Driver{Present: true, Version: "580.159.04"} },
		},
		{
			name:   "driver: host after a host driver upgrade",
			desire: func(d *Desired) { d.DriverHost, d.Driver = true, "580.159.04" },
			edit:   func(ev *Evidence) { ev.Driver = Driver{Present: true, Version: "570.133.20"} },
			want:   want{Kinds: []string{"HostDriverChanged"}, Texts: []string{"host driver changed 570.133.20 -> 580.159.04: the running container has the userspace of 570.133.20"}},
		},
		{
			name:   "driver: host, the loaded module unknown: the started one stands",
			desire: func(d *Desired) { d.DriverHost = true },
			edit:   func(ev *Evidence) { ev.Driver = Driver{Present: true, Version: "570.133.20"} },
		},
		{
			name:   "driver: host, started without the hook",
			desire: func(d *Desired) { d.DriverHost, d.Driver = true, "580.159.04" },
			edit:   func(ev *Evidence) {},
			want:   want{Kinds: []string{"HostDriverMissing"}, Texts: []string{"running container was started without the host's driver (driver: host provides it at start)"}},
		},
		{
			name: "driver: own, still has the host's",
			edit: func(ev *Evidence) { ev.Driver = Driver{Present: true, Version: "580.159.04"} },
			want: want{Kinds: []string{"HostDriverUnwanted"}, Texts: []string{"running container still has the host's driver (driver: own now)"}},
		},
		{
			name: "the driver marker cannot be read: restart to be sure",
			edit: func(ev *Evidence) {
				ev.Driver = Driver{Err: errors.New("read /usr/lib/gpupass-driver/source of the running container: permission denied")}
			},
			want: want{Kinds: []string{"HostDriverUnreadable"}, Texts: []string{"read /usr/lib/gpupass-driver/source of the running container: permission denied; restarting to be sure"}},
		},
		{
			name: "the host's socket directory is gone",
			edit: func(ev *Evidence) { ev.Socket = Socket{HostDir: "/run/gpupass/guests/901", HostDirMissing: true} },
			want: want{Kinds: []string{"GuestSocketDirMissing"}, Texts: []string{"guest socket directory /run/gpupass/guests/901 is missing on the host"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ev := asDesired()
			tc.edit(&ev)
			desired := Desired{Devices: devices, Rules: managed(t, desiredConfig), Inventory: inv, Style: tc.style}
			if tc.desire != nil {
				tc.desire(&desired)
			}
			d := Decide(ev, desired)
			var got want
			for _, r := range d.GetDetails() {
				got.Kinds = append(got.Kinds, pb.ReasonKindName(r.GetKind()))
				got.Texts = append(got.Texts, pb.ReasonText(r))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("reasons (-want +got):\n%s", diff)
			}
			if d.GetRequired() != (len(tc.want.Texts) > 0) {
				t.Errorf("required = %v with reasons %q", d.GetRequired(), d.GetReasons())
			}
			if diff := cmp.Diff(got.Texts, d.GetReasons()); diff != "" {
				t.Errorf("reasons' text differs from the details' (-details +reasons):\n%s", diff)
			}
		})
	}
}

// TestReasonTextFromData: a reason that crossed the wire without text (a peer that sends
// only the data) renders as the deciding side would have.
func TestReasonTextFromData(t *testing.T) {
	d := Decide(Evidence{Nodes: map[string]observe.Node{}, Socket: Socket{View: observe.SocketView{Visible: "/dev/gpupass"}}}, Desired{Devices: devices[:1], Inventory: inv, Style: pb.Style_STYLE_DEV})
	for _, r := range d.GetDetails() {
		bare := &pb.Reason{Kind: r.GetKind(), Device: r.GetDevice(), Want: r.GetWant(), Got: r.GetGot(), Detail: r.GetDetail()}
		if got := pb.ReasonText(bare); got != r.GetText() {
			t.Errorf("rendered %q, decided %q", got, r.GetText())
		}
	}
	if len(d.GetDetails()) != 1 {
		t.Errorf("details %v, want one missing node", d.GetDetails())
	}
}
