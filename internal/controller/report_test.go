package controller

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

func TestExitCode(t *testing.T) {
	up := []Host{{Name: "pve1", Reachable: true}}
	tests := []struct {
		name   string
		kind   string
		hosts  []Host
		states []string
		want   int
	}{
		{"status all ready", KindStatus, up, []string{"ready", "ready"}, 0},
		{"status stopped, not asked to run", KindStatus, up, []string{"ready", "stopped"}, 0},
		{"status not ready", KindStatus, up, []string{"ready", "not-ready"}, 2},
		{"status pending", KindStatus, up, []string{"pending"}, 2},
		{"status error wins", KindStatus, up, []string{"not-ready", "error"}, 1},
		{"status host down", KindStatus, []Host{{Name: "pve1", Reachable: true}, {Name: "pve2"}}, []string{"ready"}, 1},
		{"plan nothing to change, not ready", KindPlan, up, []string{"not-ready", "ready", "stopped"}, 0},
		{"plan pending", KindPlan, up, []string{"ready", "pending"}, 2},
		{"plan unreachable", KindPlan, up, []string{"pending", "unreachable"}, 1},
		{"apply ready", KindApply, up, []string{"ready"}, 0},
		{"apply not ready", KindApply, up, []string{"ready", "not-ready"}, 2},
		{"no containers", KindStatus, up, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Report{Kind: tt.kind, Hosts: tt.hosts}
			for _, s := range tt.states {
				r.Containers = append(r.Containers, Container{State: s})
			}
			if got := r.ExitCode(); got != tt.want {
				t.Errorf("ExitCode() = %d, want %d", got, tt.want)
			}
		})
	}
	stoppedButWanted := &Report{Kind: KindStatus, Hosts: up, Containers: []Container{{State: "stopped", WantState: "running"}}}
	if got := stoppedButWanted.ExitCode(); got != 2 {
		t.Errorf("stopped container the fleet wants running: exit %d, want 2", got)
	}
}

// TestMarkGPUsDiffer: the controller compares the GPU sets the host resolved (the fleet's
// selectors, the config's GPUs now), never selectors itself.
func TestMarkGPUsDiffer(t *testing.T) {
	g0 := &pb.GPU{Index: 0, Uuid: "GPU-aaaa", Minor: 1, BusId: "0000:41:00.0"}
	g1 := &pb.GPU{Index: 1, Uuid: "GPU-bbbb", Minor: 0, BusId: "0000:61:00.0"}
	set := func(gs ...*pb.GPU) *pb.GPUSet { return &pb.GPUSet{Gpus: gs} }
	tests := []struct {
		name                 string
		resolved, configured *pb.GPUSet
		differ               bool
		shown                []string // configured_gpus
	}{
		{"same GPUs, another order", set(g0, g1), set(g1, g0), false, []string{"1", "0"}},
		{"different", set(g0), set(g1), true, []string{"1"}},
		{"none configured, one wanted", set(g0), set(), true, []string{}},
		{"a minor the host has no GPU for", set(g0), set(g0, &pb.GPU{Minor: 7}), true, []string{"0", "minor 7"}},
		{"an older host says neither", nil, nil, false, []string{"0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Container{GPUs: []string{"0"}}
			applyStatus(&c, &pb.ContainerStatus{State: StateReady, Gpus: []string{"0"}, Resolved: tt.resolved, Configured: tt.configured})
			markGPUsDiffer(&c, true)
			if c.GPUsDiffer != tt.differ || (len(c.Warnings) > 0) != tt.differ {
				t.Errorf("GPUsDiffer = %v, warnings %q; want differ %v", c.GPUsDiffer, c.Warnings, tt.differ)
			}
			if diff := cmp.Diff(tt.shown, c.ConfiguredGPUs); diff != "" {
				t.Errorf("configured GPUs (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeviceStatusString(t *testing.T) {
	want := map[pb.DeviceStatus]string{
		pb.DeviceStatus_DEVICE_STATUS_OK: "ok", pb.DeviceStatus_DEVICE_STATUS_MISSING: "missing",
		pb.DeviceStatus_DEVICE_STATUS_DENIED: "denied", pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER: "no-driver",
		pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE: "not-char-device", pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE: "wrong-device",
		pb.DeviceStatus_DEVICE_STATUS_UNSPECIFIED: "unknown",
	}
	for s, w := range want {
		if got := DeviceStatusString(s); got != w {
			t.Errorf("%v -> %q, want %q", s, got, w)
		}
	}
}

func TestApplyResultAndUnknownState(t *testing.T) {
	c := Container{Reasons: []string{}, Devices: []Device{}, Warnings: []string{}}
	applyResult(&c, &pb.ContainerResult{
		Plan:       &pb.ContainerPlan{Id: "901", Changes: []*pb.ConfigChange{{Op: pb.ConfigChange_OP_ADD, Line: "x"}}, Restart: &pb.RestartDecision{Required: true}},
		Written:    true,
		RolledBack: true,
		Error:      "guest not ready within 2m0s",
	})
	if c.State != StateError || !c.RolledBack || !c.Written || c.Reasons[0] != "apply failed: guest not ready within 2m0s (rolled back: the config and the container are as they were)" {
		t.Errorf("rolled back result: %+v", c)
	}
	c = Container{Reasons: []string{}}
	applyStatus(&c, &pb.ContainerStatus{State: "melting"})
	if c.State != StateError || len(c.Reasons) != 1 {
		t.Errorf("unknown state: %+v", c)
	}
}

// TestPlanPVEFacts: a plan's Proxmox facts reach the JSON (additive keys) and the reasons.
func TestPlanPVEFacts(t *testing.T) {
	c := &Container{Host: "pve1", ID: "901"}
	applyPlan(c, &pb.ContainerPlan{Id: "901", RunState: "running", Locked: "backup",
		Restart: &pb.RestartDecision{Required: true, Reasons: []string{"running container has no /dev/nvidia0"}},
		Pending: []string{"memory: 4096", "lxc.apparmor.profile: unconfined"}, PendingReplacesLxc: true,
		Ha: "ct:901", HaCommand: "ha-manager set ct:901 --state stopped; ..."})
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"locked":"backup"`, `"pending":["memory: 4096","lxc.apparmor.profile: unconfined"]`, `"pending_replaces_lxc":true`, `"ha":"ct:901"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("JSON lacks %s: %s", want, b)
		}
	}
	got := strings.Join(c.Reasons, "\n")
	for _, want := range []string{"locked: backup", "would apply 2 pending change(s)", "--apply-pending", "replaces ALL raw lxc.* lines", "managed by HA (ct:901)"} {
		if !strings.Contains(got, want) {
			t.Errorf("reasons lack %q:\n%s", want, got)
		}
	}
}
