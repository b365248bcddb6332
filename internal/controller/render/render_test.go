package render

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/controller"
	"gpupass/internal/fleet"
	pb "gpupass/proto/gpupass/v1"
)

func sample() *controller.Report {
	return &controller.Report{
		Kind: controller.KindStatus,
		Hosts: []controller.Host{
			{Name: "pve1", Reachable: true, Address: "10.0.0.11:7420", GPUs: []controller.GPU{{Index: 0}}, Driver: controller.HostDriver{Loaded: true, Kernel: "580.95.05"}},
			{Name: "sim", Reachable: true, Address: "10.0.0.12:7420", Simulated: true, GPUs: []controller.GPU{}, Driver: controller.HostDriver{Loaded: false}},
			{Name: "pve3", Address: "10.0.0.13:7420", GPUs: []controller.GPU{}, Error: "connection refused"},
		},
		Containers: []controller.Container{
			{Host: "pve1", ID: "901", GPUs: []string{"0"}, State: "ready", Reasons: []string{}, Driver: controller.Driver{Kernel: "580.95.05", Userspace: "580.95.05"}},
			{Host: "sim", ID: "950", GPUs: []string{}, State: "not-ready", Simulated: true, Reasons: []string{"no-driver"}, Warnings: []string{"no libs"}},
			{Host: "pve3", ID: "960", GPUs: []string{"0", "1"}, State: "unreachable", Reasons: []string{"host pve3 unreachable: connection refused"}},
		},
	}
}

func TestReportTable(t *testing.T) {
	var b bytes.Buffer
	Report(&b, sample(), Style{})
	want := `HOST  ADDRESS         REACHABLE  DRIVER      GPUS  NOTE
pve1  10.0.0.11:7420  yes        580.95.05   1
sim   10.0.0.12:7420  yes        not loaded  0     (simulated)
pve3  10.0.0.13:7420  no         -           -     connection refused

CONTAINER            GPUS  STATE        RESTART  DRIVER KERNEL/USER   REASONS
pve1/901             0     ready        no       580.95.05/580.95.05
sim/950 (simulated)  none  not-ready    no       -                    no-driver; warning: no libs
pve3/960             0,1   unreachable  -        -                    host pve3 unreachable: connection refused

Status: 3 containers (1 ready, 1 not-ready, 1 unreachable) on 3 hosts, 1 unreachable.
`
	if diff := cmp.Diff(b.String(), want); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
}

var ansi = strings.NewReplacer("\x1b[0m", "", "\x1b[1m", "", "\x1b[31m", "", "\x1b[32m", "", "\x1b[33m", "", "\x1b[34m", "", "\x1b[90m", "")

func TestColorKeepsAlignment(t *testing.T) {
	var plain, color bytes.Buffer
	Report(&plain, sample(), Style{})
	Report(&color, sample(), Style{Color: true})
	if !strings.Contains(color.String(), "\x1b[32mready\x1b[0m") {
		t.Error("no colour in a colour table")
	}
	if strings.Contains(plain.String(), "\x1b[") {
		t.Error("colour in a plain table")
	}
	if diff := cmp.Diff(ansi.Replace(color.String()), plain.String()); diff != "" {
		t.Errorf("colour changed the layout (-colour +plain)\n%s", diff)
	}
}

func TestProgress(t *testing.T) {
	f := &fleet.Fleet{Hosts: []fleet.Host{{Name: "pve1"}, {Name: "pve2"}},
		Containers: []fleet.Container{{Host: "pve1", ID: "901"}, {Host: "pve2", ID: "950"}}}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	var plain bytes.Buffer
	p := NewProgress(&plain, f, false, Style{})
	p.Update(controller.Progress{Time: at, Host: "pve1", Step: "connect", Message: "10.0.0.11:7420"})
	p.Update(controller.Progress{Time: at, Host: "pve1", Container: "901", Step: "write", Message: "2 line(s)"})
	p.Finish()
	want := "03:04:05 pve1 connect: 10.0.0.11:7420\n03:04:05 pve1/901 write: 2 line(s)\n"
	if diff := cmp.Diff(plain.String(), want); diff != "" {
		t.Errorf("plain (-got +want)\n%s", diff)
	}

	var live bytes.Buffer
	p = NewProgress(&live, f, true, Style{Width: 30})
	p.Update(controller.Progress{Time: at, Host: "pve1", Container: "901", Step: "wait-ready", Message: "waiting up to 2m0s for the guest's report"})
	p.Update(controller.Progress{Time: at, Host: "pve2", Container: "950", Step: "done", Message: "ready"})
	out := live.String()
	frames := strings.Split(out, "\x1b[5A")
	if len(frames) != 2 {
		t.Fatalf("want 2 frames separated by cursor-up 5, got %d: %q", len(frames), out)
	}
	last := strings.Split(strings.TrimSuffix(frames[1], "\n"), "\n")
	for i, l := range last {
		last[i] = strings.TrimPrefix(l, "\x1b[2K")
	}
	last[4] = "ELAPSED"
	wantLast := []string{"pve1        waiting", "  pve1/901  wait-ready waitin" + reset, "pve2        waiting", "  pve2/950  done ready", "ELAPSED"}
	if diff := cmp.Diff(last, wantLast); diff != "" {
		t.Errorf("last frame (-got +want)\n%s", diff)
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"abcdef", 3, "abc" + reset},
		{"abc", 5, "abc"},
		{"\x1b[32mabcdef\x1b[0m", 2, "\x1b[32mab\x1b[0m" + reset},
	}
	for _, tt := range tests {
		if got := truncate(tt.in, tt.n); got != tt.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestWatchOutput(t *testing.T) {
	ev := controller.Event{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Container: controller.Container{
		Host: "pve1", ID: "901", GPUs: []string{"0"}, State: "not-ready", Reasons: []string{"/dev/nvidia0: missing"},
		Devices: []controller.Device{}, Warnings: []string{}, RestartRequired: true}}
	var b bytes.Buffer
	WatchLine(&b, ev, Style{})
	if got, want := b.String(), "2026-01-02T03:04:05Z  pve1/901  not-ready  /dev/nvidia0: missing  (restart required)\n"; got != want {
		t.Errorf("line %q, want %q", got, want)
	}
	b.Reset()
	if err := WatchJSON(&b, ev); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"time":"2026-01-02T03:04:05Z"`, `"host":"pve1"`, `"id":"901"`, `"state":"not-ready"`, `"reasons":["/dev/nvidia0: missing"]`} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("JSON line %s lacks %s", b.String(), s)
		}
	}
}

// TestRepeatedWarningsShortened: a long warning shows in the rows by its head and a note
// number, and in full once under the table however many rows carry it; a short one stays
// as it is; a start is called a start, not a restart.
func TestRepeatedWarningsShortened(t *testing.T) {
	long := "userspace driver not installed: no libnvidia-ml.so.1 in ld.so.cache or the standard library directories (passthrough works)"
	ct := func(id string, warnings ...string) controller.Container {
		return controller.Container{Host: "sim", ID: id, GPUs: []string{"0"}, State: "ready", Reasons: []string{}, Warnings: warnings}
	}
	r := &controller.Report{Kind: controller.KindApply, Hosts: []controller.Host{{Name: "sim", Reachable: true, Address: "a:1", GPUs: []controller.GPU{}}},
		Containers: []controller.Container{ct("1", long), ct("2", long, "short one")}}
	r.Containers[1].Start, r.Containers[1].Started = true, true
	var b bytes.Buffer
	containers(&b, r, Style{})
	want := `CONTAINER  GPUS  STATE  RESTART  WRITTEN  RESTARTED  STARTED  DRIVER KERNEL/USER  REASONS
sim/1      0     ready  no       no       no         no       -                   warning: userspace driver not installed (note 1)
sim/2      0     ready  start    no       no         yes      -                   warning: userspace driver not installed (note 1); warning: short one

note 1: ` + long + "\n"
	if diff := cmp.Diff(b.String(), want); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
}

// TestDoctorNetworkReason: doctor says why the network is not ok, from the guest's report,
// and whether the fleet entry needs it.
func TestDoctorNetworkReason(t *testing.T) {
	report := func(reason string) *pb.GuestReport {
		return &pb.GuestReport{Network: &pb.Network{Reason: reason}}
	}
	tests := []struct {
		name    string
		require bool
		status  *pb.ContainerStatus
		want    string
	}{
		{"ok", false, &pb.ContainerStatus{NetworkOk: true}, "ok"},
		{"reason, not required", false, &pb.ContainerStatus{Report: report("no default route")}, "not ok: no default route (not required: the fleet entry does not set require_network)"},
		{"reason, required", true, &pb.ContainerStatus{Report: report("no network link up")}, "not ok: no network link up"},
		{"no reason reported", true, &pb.ContainerStatus{}, "not ok: no up link with an address and a default route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &controller.Diagnosis{Entry: fleet.Container{RequireNetwork: tt.require}, Status: tt.status}
			if diff := cmp.Diff(network(d), tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

// Device checks that fail alike show as one reason naming their devices in the order the
// guest checked them; different failures and other reasons stay as they are, in place.
func TestDeviceReasonsGrouped(t *testing.T) {
	const hint = "open: operation not permitted: the device cgroup denies it (add the allow rule for this major and restart the container)"
	check := func(dev, got, detail string) controller.ReasonDetail {
		return pb.ReasonToJSON(pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DEVICE_CHECK, Device: dev, Got: got, Detail: detail}))
	}
	ct := controller.Container{Host: "pve1", ID: "951", State: "not-ready", Devices: []controller.Device{
		{Path: "/dev/nvidia1"}, {Path: "/dev/nvidiactl"}, {Path: "/dev/nvidia-uvm"}, {Path: "/dev/nvidia-uvm-tools"}}}
	// As the agent sends them: sorted by text.
	ct.AddReason(pb.ReasonToJSON(pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NETWORK, Detail: "no network link up"})))
	ct.AddReason(check("/dev/nvidia-uvm-tools", "denied", hint))
	ct.AddReason(check("/dev/nvidia-uvm", "missing", "no such file"))
	ct.AddReason(check("/dev/nvidia1", "denied", hint))
	ct.AddReason(check("/dev/nvidiactl", "denied", hint))
	got := reasonTexts(ct)
	want := []string{
		"network: no network link up",
		"/dev/nvidia1, /dev/nvidiactl, /dev/nvidia-uvm-tools: denied: " + hint,
		"/dev/nvidia-uvm: missing: no such file",
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("reasons as shown (-want +got):\n%s", d)
	}
	if len(ct.ReasonsDetail()) != 5 {
		t.Errorf("the data keeps every reason: %d, want 5", len(ct.ReasonsDetail()))
	}
}
