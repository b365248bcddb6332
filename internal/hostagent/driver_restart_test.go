package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"gpupass/internal/hostdriver"
	pb "gpupass/proto/gpupass/v1"
)

// Driver versions before and after a simulated host driver upgrade.
const (
	drvOld = "580.95.05"
	drvNew = "580.159.04"
)

// hostDriver makes the simulated host's loaded module ver and its userspace libs (of
// libVersions) under /usr/lib/x86_64-linux-gnu, replacing the previous ones: the host
// tree of a driver install or upgrade.
func (f *restartFixture) hostDriver(ver string, libVersions ...string) {
	f.t.Helper()
	dir := filepath.Join(f.root, "usr/lib/x86_64-linux-gnu")
	if err := os.RemoveAll(dir); err != nil {
		f.t.Fatal(err)
	}
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			f.t.Fatal(err)
		}
	}
	write(filepath.Join(f.root, "proc/driver/nvidia/version"), "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "+ver+"  Release Build  (dvs-builder@U22)\n")
	for _, v := range libVersions {
		for _, l := range []string{"libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler"} {
			write(filepath.Join(dir, l+".so."+v), "")
		}
	}
}

// hookRan leaves what the driver hook leaves in the running container: its marker.
func (f *restartFixture) hookRan(ver string) {
	f.t.Helper()
	p := filepath.Join(f.ctRoot, hostdriver.Marker)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("source=host\nversion="+ver+"\nfrom=/usr/lib/x86_64-linux-gnu\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// TestDriverRestartRule: the restart rule and status for `driver: host` around a host
// driver upgrade simulated by changing the host tree (module and libraries v1 -> v2),
// for both modes, on the simulated host with the real agent.
func TestDriverRestartRule(t *testing.T) {
	host := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}, Driver: "host"}
	own := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}}
	tests := []struct {
		name       string
		spec       *pb.ContainerSpec
		setup      func(f *restartFixture)
		wantReason string          // "" means no restart
		wantStatus string          // a reason status gives ("" none about the driver)
		wantKinds  []pb.ReasonKind // the driver kinds of the restart decision, then of the status
		wantErr    string          // plan refuses
	}{
		{
			name:  "host: started with the loaded module's userspace",
			spec:  host,
			setup: func(f *restartFixture) { f.hookRan(drvOld) },
		},
		{
			name: "host: the host driver was upgraded while it ran",
			spec: host,
			setup: func(f *restartFixture) {
				f.hookRan(drvOld)
				f.hostDriver(drvNew, drvNew)
			},
			wantReason: "host driver changed " + drvOld + " -> " + drvNew + ": the running container has the userspace of " + drvOld,
			wantStatus: "restart required: host driver changed " + drvOld + " -> " + drvNew + ": the running container has the userspace of " + drvOld,
			wantKinds:  []pb.ReasonKind{pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED, pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER},
		},
		{
			name:       "host: switched from own, running without the hook",
			spec:       host,
			setup:      func(f *restartFixture) {},
			wantReason: "running container was started without the host's driver",
			wantKinds:  []pb.ReasonKind{pb.ReasonKind_REASON_KIND_HOST_DRIVER_MISSING},
		},
		{
			name:       "own: switched back, still has the host's",
			spec:       own,
			setup:      func(f *restartFixture) { f.hookRan(drvOld) },
			wantReason: "running container still has the host's driver (driver: own now)",
			wantKinds:  []pb.ReasonKind{pb.ReasonKind_REASON_KIND_HOST_DRIVER_UNWANTED},
		},
		{
			name:  "own: the upgrade does not restart it (its guest reports the mismatch)",
			spec:  own,
			setup: func(f *restartFixture) { f.hostDriver(drvNew, drvNew) },
		},
		{
			name: "own: after the upgrade its guest reports the old userspace: status names the fix",
			spec: own,
			setup: func(f *restartFixture) {
				f.hostDriver(drvNew, drvNew)
				f.reportDriver = &pb.DriverVersions{Kernel: drvNew, Userspace: drvOld, UserspaceSource: "own"}
				f.guestReport(pb.DeviceStatus_DEVICE_STATUS_OK)
			},
			wantStatus: "host driver changed to " + drvNew + " but the container's own userspace is " + drvOld + ": install the " + drvNew + " userspace in it, or set driver: host in fleet.yaml (docs/driver.md)",
			wantKinds:  []pb.ReasonKind{pb.ReasonKind_REASON_KIND_OWN_USERSPACE_MISMATCH},
		},
		{
			name:    "host: userspace upgraded, module not reloaded: refused",
			spec:    host,
			setup:   func(f *restartFixture) { f.hostDriver(drvOld, drvNew) },
			wantErr: "container 901 wants driver: host: the host's libnvidia-ml is " + drvNew + " (in /usr/lib/x86_64-linux-gnu) but the loaded kernel module is " + drvOld,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRestartFixture(t)
			f.hostDriver(drvOld, drvOld)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			path := f.rt.ConfigPath("901")
			if err := os.WriteFile(path, []byte(baseConfig), 0o644); err != nil {
				t.Fatal(err)
			}
			p, err := f.agent.plan(ctx, tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, p.res.New, 0o644); err != nil {
				t.Fatal(err)
			}
			if hook := strings.Contains(string(p.res.New), "lxc.hook.mount = "); hook != (tt.spec.GetDriver() == "host") {
				t.Fatalf("driver %q rendered the hook: %v\n%s", tt.spec.GetDriver(), hook, p.res.New)
			}
			f.liveContainer()
			f.rt.started = p.res.New
			tt.setup(f)

			p, err = f.agent.plan(ctx, tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("plan: %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			reasons := p.pb.GetRestart().GetReasons()
			switch {
			case tt.wantReason == "" && len(reasons) > 0:
				t.Errorf("restart: %q, want none", reasons)
			case tt.wantReason != "" && !slices.ContainsFunc(reasons, func(r string) bool { return strings.HasPrefix(r, tt.wantReason) }):
				t.Errorf("restart reasons %q, want one starting %q", reasons, tt.wantReason)
			}
			st := f.agent.Status(ctx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{tt.spec}}).GetContainers()[0]
			if st.GetRestartRequired() != (tt.wantReason != "") {
				t.Errorf("status restart_required %v, want %v", st.GetRestartRequired(), tt.wantReason != "")
			}
			var driverReasons []string
			for _, r := range st.GetReasons() {
				if strings.Contains(r, "host driver changed") {
					driverReasons = append(driverReasons, r)
				}
			}
			if want := []string{tt.wantStatus}; tt.wantStatus != "" && !slices.Equal(driverReasons, want) || tt.wantStatus == "" && len(driverReasons) > 0 {
				t.Errorf("status driver reasons %q, want %q", driverReasons, tt.wantStatus)
			}
			var kinds []pb.ReasonKind
			for _, r := range append(p.pb.GetRestart().GetDetails(), st.GetDetails()...) {
				if driverKinds[r.GetKind()] {
					kinds = append(kinds, r.GetKind())
				}
			}
			if !slices.Equal(kinds, tt.wantKinds) {
				t.Errorf("driver reason kinds (restart, then status) %v, want %v", kinds, tt.wantKinds)
			}
			if tt.wantStatus != "" && st.GetState() != StateNotReady {
				t.Errorf("status state %s, want %s", st.GetState(), StateNotReady)
			}
		})
	}
}

// driverKinds are the reason kinds about the host's driver.
var driverKinds = map[pb.ReasonKind]bool{
	pb.ReasonKind_REASON_KIND_HOST_DRIVER_CHANGED:     true,
	pb.ReasonKind_REASON_KIND_HOST_DRIVER_MISSING:     true,
	pb.ReasonKind_REASON_KIND_HOST_DRIVER_UNWANTED:    true,
	pb.ReasonKind_REASON_KIND_HOST_DRIVER_UNREADABLE:  true,
	pb.ReasonKind_REASON_KIND_RESTART_FOR_HOST_DRIVER: true,
	pb.ReasonKind_REASON_KIND_OWN_USERSPACE_MISMATCH:  true,
}

// TestDriverChangeNoticed: the agent notices a change of the loaded module's version and
// of a device major while running (the next discovery) and across its own restart
// (against <state_dir>/driver.json), and says so in the inventory and the metrics.
func TestDriverChangeNoticed(t *testing.T) {
	f := newRestartFixture(t)
	f.hostDriver(drvOld, drvOld)
	ctx := context.Background()
	if got := f.agent.inventory(ctx, false).GetDriver().GetChange(); got != "" {
		t.Fatalf("first look: change %q, want none", got)
	}
	// Upgrade while running: new version, and nvidia-uvm moves (the sim's stand-in 10 -> 11).
	f.hostDriver(drvNew, drvNew)
	devices := filepath.Join(f.root, "proc/devices")
	b, err := os.ReadFile(devices)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(devices, []byte(strings.Replace(string(b), " 10 nvidia-uvm", " 11 nvidia-uvm", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	want := "host driver changed " + drvOld + " -> " + drvNew + "; device majors changed: nvidia-uvm 10 -> 11 at "
	if got := f.agent.inventory(ctx, false).GetDriver().GetChange(); !strings.HasPrefix(got, want) {
		t.Errorf("while running: change %q, want %q...", got, want)
	}
	if got := testutil.ToFloat64(f.agent.metrics.drv.changes); got != 1 {
		t.Errorf("gpupass_host_driver_changes_total %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.agent.metrics.drv.info.WithLabelValues(drvOld, drvNew)); got != 1 {
		t.Errorf("gpupass_host_driver_changed{from=%s,to=%s} %v, want 1", drvOld, drvNew, got)
	}

	// A new agent (a reboot into another driver) on the same state directory.
	f.hostDriver("590.10.01", "590.10.01")
	a2, err := New(f.agent.cfg, Options{Runtime: f.rt, Guests: f.guests, Log: f.agent.log, Name: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := a2.inventory(ctx, false).GetDriver().GetChange(); !strings.HasPrefix(got, "host driver changed "+drvNew+" -> 590.10.01 at ") {
		t.Errorf("at start: change %q, want host driver changed %s -> 590.10.01", got, drvNew)
	}
}
