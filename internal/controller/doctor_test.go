package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/controller/agenttest"
	"gpupass/internal/fleet"
	pb "gpupass/proto/gpupass/v1"
)

func TestExplain(t *testing.T) {
	loaded := &pb.HostInventory{Driver: &pb.Driver{Loaded: true, KernelVersion: "580.95.05"}}
	host := Host{Name: "pve1", Address: "10.0.0.11:7420", Reachable: true, Runtime: "pct", Driver: HostDriver{Loaded: true, Kernel: "580.95.05", Majors: map[string]uint32{"nvidia-uvm": 238}}}
	entry := fleet.Container{Host: "pve1", ID: "901", GPUs: []string{"0"}, Style: "raw"}
	dev := func(path string, st pb.DeviceStatus, major, minor uint32) *pb.DeviceCheck {
		return &pb.DeviceCheck{Path: path, Status: st, Major: major, Minor: minor}
	}
	startedWith := pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STARTED_WITH_RULE, Got: "lxc.cgroup2.devices.allow=c 195:1 rwm"})
	running := func(devs ...*pb.DeviceCheck) *pb.ContainerStatus {
		return &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", GuestConnected: true, NetworkOk: true,
			Devices: devs, Driver: &pb.DriverVersions{Kernel: "580.95.05", Userspace: "580.95.05"}}
	}
	tests := []struct {
		name  string
		d     Diagnosis
		wants []string // each finding's problem, in order (prefixes)
		fixes []string // substrings of the fixes, in order
	}{
		{"unreachable", Diagnosis{Host: Host{Name: "pve1", Address: "10.0.0.11:7420", Error: "connection refused"}, Entry: entry, InFleet: true},
			[]string{"host pve1 could not be asked: connection refused"}, []string{"systemctl status gpupass-host-agent"}},
		{"driver not loaded", Diagnosis{Host: Host{Name: "pve1", Reachable: true, Driver: HostDriver{Error: "module nvidia not found"}}, Inventory: &pb.HostInventory{}, Entry: entry, InFleet: true,
			Status: running(dev("/dev/nvidia0", pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, 195, 0))},
			[]string{"the NVIDIA kernel driver is not loaded on pve1: module nvidia not found", "/dev/nvidia0 (195:0) is present but no driver answers"},
			[]string{"load the driver", "load the NVIDIA driver"}},
		{"persistence off", Diagnosis{Host: host, Inventory: &pb.HostInventory{Driver: &pb.Driver{Loaded: true, KernelVersion: "580.95.05"}, Gpus: []*pb.GPU{
			{Index: 0, BusId: "0000:01:00.0", PersistenceMode: "enabled"}, {Index: 1, BusId: "0000:41:00.0", PersistenceMode: "disabled"}, {Index: 2, BusId: "0000:61:00.0"}}},
			Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{}, Status: running(dev("/dev/nvidia0", pb.DeviceStatus_DEVICE_STATUS_OK, 195, 0))},
			[]string{"persistence mode is off on GPU 1 (0000:41:00.0)"}, []string{"systemctl enable --now nvidia-persistenced"}},
		{"not in fleet", Diagnosis{Host: host, Inventory: loaded, Entry: fleet.Container{Host: "pve1", ID: "777"},
			Status: &pb.ContainerStatus{Id: "777", State: "ready", RunState: "running"}},
			[]string{"pve1/777 is not in fleet.yaml"}, []string{`add {host: pve1, id: "777"`}},
		{"plan error", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{Error: `GPU "5" not found`}},
			[]string{`the host cannot make a plan: GPU "5" not found`}, []string{"fix the entry for pve1/901"}},
		{"restart without changes", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true,
			Plan:   &pb.ContainerPlan{Restart: &pb.RestartDecision{Required: true, Reasons: []string{"the running container lacks /dev/nvidia0"}}},
			Status: running(dev("/dev/nvidia0", pb.DeviceStatus_DEVICE_STATUS_MISSING, 0, 0))},
			[]string{"the running container does not have what its config now says", "/dev/nvidia0 is missing in the container"},
			[]string{"gpupass apply -f fleet.yaml (it restarts the container)", "gpupass apply"}},
		// The status repeats the plan's restart reasons (same kinds): one finding, by kind.
		{"restart reasons in the status", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true,
			Plan:   &pb.ContainerPlan{Restart: &pb.RestartDecision{Required: true, Reasons: pb.ReasonTexts([]*pb.Reason{startedWith}), Details: []*pb.Reason{startedWith}}},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", GuestConnected: true, RestartRequired: true, Details: []*pb.Reason{startedWith}}},
			[]string{"the running container does not have what its config now says: running container was started with"}, []string{"it restarts the container"}},
		{"stopped", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "stopped", RunState: "stopped"}},
			[]string{"the container is stopped"}, []string{"pct start 901 on pve1"}},
		// pct is suggested only on a pct host.
		{"stopped on a plain lxc host", Diagnosis{Host: Host{Name: "lxc1", Reachable: true, Runtime: "lxc", Driver: host.Driver}, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "stopped", RunState: "stopped"}},
			[]string{"the container is stopped"}, []string{"lxc-start -n 901 on lxc1"}},
		{"locked, pending, HA", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true,
			Plan: &pb.ContainerPlan{Locked: "backup", Pending: []string{"cores: 8"}, Ha: "ct:901", HaCommand: "ha-manager set ct:901 --state stopped; ...",
				Changes: []*pb.ConfigChange{{Op: pb.ConfigChange_OP_ADD, Line: "dev0: /dev/nvidia0"}}, Restart: &pb.RestartDecision{Required: true, Reasons: []string{"r"}}},
			Status: &pb.ContainerStatus{Id: "901", State: "ready", RunState: "running", GuestConnected: true}},
			[]string{"the container config", "locked: backup", "the restart would also apply 1 pending change(s): cores: 8", "the container is managed by Proxmox HA (ct:901)"},
			[]string{"gpupass apply", "pct unlock 901", "--apply-pending", "ha-manager set ct:901 --state stopped"}},
		{"guest refused", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", GuestRefused: "peer pid 7 is in container 902",
				Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_REFUSED, Got: "2026-12-02T07:00:00Z", Detail: "peer pid 7 is in container 902"})}}},
			[]string{"guest agent connected but was refused: peer pid 7 is in container 902"}, []string{"journalctl -u gpupass-host-agent"}},
		{"no guest", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED})}}},
			[]string{"no report from the guest agent"}, []string{"install gpupass-guest-agent"}},
		{"guest socket hidden by systemd's /run", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running",
				Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED}), pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_GUEST_SOCKET_HIDDEN, Device: "/run/gpupass", Detail: "/run"})}}},
			[]string{"the guest agent cannot reach its socket: guest socket hidden inside the container by a mount on /run"}, []string{"it moves the mount entry to dev/gpupass and restarts the container"}},
		{"optional trap and wrong device", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: running(dev("/dev/nvidia-uvm", pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, 0, 0),
				dev("/dev/nvidia-uvm-tools", pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, 0, 0),
				dev("/dev/nvidia0", pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE, 195, 1))},
			[]string{"/dev/nvidia-uvm, /dev/nvidia-uvm-tools are not a character device", "/dev/nvidia0 (195:1) is the wrong device"},
			[]string{"without optional", "gpupass apply"}},
		{"journal conflict on a stopped container", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "stopped", RunState: "stopped", Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_CONTAINER_STOPPED}), pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_JOURNAL_CONFLICT, Want: "1-901-a", Detail: "config.bak"})}}},
			[]string{"journal conflict: apply 1-901-a could not be undone", "the container is stopped"}, []string{"compare pct config 901", "pct start 901"}},
		{"forged ready report", Diagnosis{Host: host, Inventory: loaded, Entry: entry, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", GuestConnected: true,
				Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_OBSERVATION, Device: "/dev/nvidia0", Want: "195:0"}), pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_JOURNAL_QUARANTINED, Device: "/s/j/q/x.jsonl", Detail: "unexpected EOF"})}}},
			[]string{"host observation: the guest reports ready, but the host sees no /dev/nvidia0", "journal quarantined: /s/j/q/x.jsonl"},
			[]string{"talks on /dev/gpupass/agent.sock", "its .why says why"}},
		{"no userspace driver, no network", Diagnosis{Host: host, Inventory: loaded, Entry: fleet.Container{Host: "pve1", ID: "901", GPUs: []string{"0"}, RequireNetwork: true}, InFleet: true, Plan: &pb.ContainerPlan{},
			Status: &pb.ContainerStatus{Id: "901", State: "not-ready", RunState: "running", GuestConnected: true,
				Devices: []*pb.DeviceCheck{dev("/dev/nvidia0", pb.DeviceStatus_DEVICE_STATUS_OK, 195, 0)}, Driver: &pb.DriverVersions{Kernel: "580.95.05"},
				Details: []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NETWORK, Detail: "no default route"}), pb.OtherReason("something new")}}},
			[]string{"the container has no userspace driver", "the container has no working network", "something new"},
			[]string{"install libnvidia-ml 580.95.05 in the template", "pct config 901 on pve1", "-o json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			if st := d.Status; st != nil && len(st.Details) > 0 {
				st.Reasons = pb.ReasonTexts(st.Details) // as the agent sends them: text beside the data
			}
			d.Container = newContainer(d.Entry)
			fs := explain(&d)
			var problems, fixes []string
			for i, f := range fs {
				problems = append(problems, f.Problem)
				fixes = append(fixes, f.Fix)
				if i < len(tt.wants) && strings.HasPrefix(f.Problem, tt.wants[i]) {
					problems[i] = tt.wants[i]
				}
				if i < len(tt.fixes) && strings.Contains(f.Fix, tt.fixes[i]) {
					fixes[i] = tt.fixes[i]
				}
				if f.Cause == "" || f.Fix == "" {
					t.Errorf("finding %d has no cause or fix: %+v", i, f)
				}
			}
			if diff := cmp.Diff(problems, tt.wants); diff != "" {
				t.Errorf("problems (-got +want)\n%s", diff)
			}
			if diff := cmp.Diff(fixes, tt.fixes); diff != "" {
				t.Errorf("fixes (-got +want)\n%s", diff)
			}
		})
	}
}

func TestDoctorAgainstHosts(t *testing.T) {
	e := newEnv(t)
	a := e.host(t, agenttest.New("pve1"))
	a.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: "550.54.14"})
	e.deadHost("pve2", agenttest.Silent(t))
	e.container("pve1", "901", "0")
	e.container("pve2", "950", "0")
	c := e.controller(t, 500*time.Millisecond)

	d, err := c.Doctor(context.Background(), "pve1", "901")
	if err != nil {
		t.Fatal(err)
	}
	// The version mismatch, then the warning that GPU 1's persistence mode is off.
	if d.ExitCode() != ExitPending || len(d.Problems()) != 1 || len(d.Findings) != 2 || !strings.Contains(d.Findings[0].Fix, "install libnvidia-ml 580.95.05") ||
		!d.Findings[1].Warning || !strings.HasPrefix(d.Findings[1].Problem, "persistence mode is off on GPU 1") {
		t.Errorf("pve1/901: exit %d, findings %+v", d.ExitCode(), d.Findings)
	}
	for _, m := range []string{MethodInventory, MethodStatus, MethodPlan} {
		if a.Calls(m) != 1 {
			t.Errorf("%s called %d times, want 1", m, a.Calls(m))
		}
	}
	start := time.Now()
	d, err = c.Doctor(context.Background(), "pve2", "950")
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 2*time.Second || d.ExitCode() != ExitError || !strings.HasPrefix(d.Findings[0].Problem, "host pve2 could not be asked: no answer within 500ms") {
		t.Errorf("pve2/950 took %s: exit %d, findings %+v", time.Since(start), d.ExitCode(), d.Findings)
	}
	if _, err := c.Doctor(context.Background(), "pve9", "1"); err == nil || !strings.Contains(err.Error(), `unknown host "pve9"`) {
		t.Errorf("unknown host: %v", err)
	}
}

// TestDoctorExitAgreesWithStatus: doctor's exit code says what its verdict shows, and
// agrees with status about readiness: a warning (no userspace driver, a stopped container
// nobody asks to run) leaves both at 0; doctor adds 2 for changes pending
// (docs/controller.md, "Exit codes").
func TestDoctorExitAgreesWithStatus(t *testing.T) {
	host := Host{Name: "pve1", Address: "10.0.0.11:7420", Reachable: true, Driver: HostDriver{Loaded: true, Kernel: "580.95.05"}}
	inv := &pb.HostInventory{Driver: &pb.Driver{Loaded: true, KernelVersion: "580.95.05"}}
	entry := fleet.Container{Host: "pve1", ID: "901", GPUs: []string{"0"}, Style: "raw"}
	wantRunning := entry
	wantRunning.State = fleet.StateRunning
	ok := []*pb.DeviceCheck{{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195}}
	noLibs := &pb.ContainerStatus{Id: "901", State: StateReady, RunState: "running", GuestConnected: true, NetworkOk: true, Devices: ok,
		Driver: &pb.DriverVersions{Kernel: "580.95.05"}, Warnings: []string{"userspace driver not installed: no libnvidia-ml.so.1"}}
	stopped := &pb.ContainerStatus{Id: "901", State: StateStopped, RunState: "stopped", Reasons: []string{"container is stopped"}}
	mismatch := &pb.ContainerStatus{Id: "901", State: StateNotReady, RunState: "running", GuestConnected: true, NetworkOk: true, Devices: ok,
		Driver: &pb.DriverVersions{Kernel: "580.95.05", Userspace: "550.54.14"}, Reasons: []string{"userspace driver 550.54.14 does not match"}}
	tests := []struct {
		name                   string
		entry                  fleet.Container
		status                 *pb.ContainerStatus
		plan                   *pb.ContainerPlan
		wantDoctor, wantStatus int
	}{
		{"ready without userspace driver", entry, noLibs, &pb.ContainerPlan{}, ExitOK, ExitOK},
		{"stopped, not asked to run", entry, stopped, &pb.ContainerPlan{}, ExitOK, ExitOK},
		{"stopped, asked to run", wantRunning, stopped, &pb.ContainerPlan{Start: true}, ExitPending, ExitPending},
		{"ready with changes pending", entry, noLibs, &pb.ContainerPlan{Changes: []*pb.ConfigChange{{Line: "x"}}}, ExitPending, ExitOK},
		{"version mismatch", entry, mismatch, &pb.ContainerPlan{}, ExitPending, ExitPending},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Diagnosis{Host: host, Inventory: inv, Entry: tt.entry, InFleet: true, Status: tt.status, Plan: tt.plan, Container: newContainer(tt.entry)}
			applyStatus(&d.Container, tt.status)
			st := &Report{Kind: KindStatus, Hosts: []Host{host}, Containers: []Container{d.Container}}
			applyPlan(&d.Container, tt.plan)
			d.Findings = explain(&d)
			got := []int{d.ExitCode(), st.ExitCode()}
			if diff := cmp.Diff(got, []int{tt.wantDoctor, tt.wantStatus}); diff != "" {
				t.Errorf("exit codes [doctor status] (-got +want)\n%s\nfindings %+v", diff, d.Findings)
			}
		})
	}
}
