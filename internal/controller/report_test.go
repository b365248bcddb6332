package controller

import (
	"encoding/json"
	"strings"
	"testing"

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

func TestSameGPUs(t *testing.T) {
	gpus := []GPU{{Index: 0, UUID: "GPU-aaaa", Bus: "0000:41:00.0"}, {Index: 1, UUID: "GPU-bbbb", Bus: "0000:61:00.0"}}
	tests := []struct {
		name string
		a, b []string
		want bool
	}{
		{"same order", []string{"0", "1"}, []string{"0", "1"}, true},
		{"other order", []string{"1", "0"}, []string{"0", "1"}, true},
		{"index and uuid", []string{"0"}, []string{"gpu-aaaa"}, true},
		{"bus id, short form", []string{"61:00.0"}, []string{"1"}, true},
		{"different", []string{"0"}, []string{"1"}, false},
		{"none and one", nil, []string{"0"}, false},
		{"unknown selectors compare as text", []string{"7"}, []string{"7"}, true},
	}
	for _, tt := range tests {
		if got := sameGPUs(tt.a, tt.b, gpus); got != tt.want {
			t.Errorf("%s: sameGPUs(%v, %v) = %v", tt.name, tt.a, tt.b, got)
		}
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
