package guest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// realReport is the part of the guest's JSON report the real-GPU fixtures are checked on.
type realReport struct {
	Ready   bool     `json:"ready"`
	Reasons []string `json:"reasons"`
	Devices []struct {
		Path, Status string
		Major, Minor uint32
	} `json:"devices"`
	Driver struct{ Kernel, Userspace string } `json:"driver"`
	Smi    struct {
		Ran  bool `json:"ran"`
		GPUs []struct {
			UUID, Name    string
			DriverVersion string `json:"driver_version"`
		} `json:"gpus"`
	} `json:"smi"`
}

// TestRealH100Reports replays what the guest agent reported inside a real LXC container on
// the H100 test host (scripts/real-gpu.sh, docs/real-gpu.md): ready with the real UUID and
// driver version, then denied once the allow rule was removed.
func TestRealH100Reports(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "real-gpu", "h100-1gpu")
	load := func(name string) realReport {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var r realReport
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	var status struct {
		Hosts []struct {
			GPUs []struct{ UUID string } `json:"gpus"`
		} `json:"hosts"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "status-ready-1gpu.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &status); err != nil || len(status.Hosts) != 1 || len(status.Hosts[0].GPUs) != 1 {
		t.Fatalf("status fixture: %v %+v", err, status)
	}
	hostUUID := status.Hosts[0].GPUs[0].UUID

	ready := load("report-ready.json")
	if !ready.Ready || len(ready.Reasons) != 0 {
		t.Errorf("ready report: ready=%v reasons=%v", ready.Ready, ready.Reasons)
	}
	if ready.Driver.Kernel != "580.159.04" || ready.Driver.Userspace != ready.Driver.Kernel {
		t.Errorf("driver = %+v, want kernel = userspace = 580.159.04", ready.Driver)
	}
	if !ready.Smi.Ran || len(ready.Smi.GPUs) != 1 || ready.Smi.GPUs[0].UUID != hostUUID {
		t.Errorf("nvidia-smi inside saw %+v, want exactly the host's GPU %s", ready.Smi, hostUUID)
	}
	for _, d := range ready.Devices {
		if d.Status != "ok" {
			t.Errorf("ready report: %s is %s", d.Path, d.Status)
		}
		if d.Path == "/dev/nvidia-uvm" && d.Major != 238 {
			t.Errorf("uvm major %d, want 238 as that host's /proc/devices said", d.Major)
		}
	}

	denied := load("report-denied.json")
	if denied.Ready {
		t.Error("denied report says ready")
	}
	found := false
	for _, d := range denied.Devices {
		if d.Path == "/dev/nvidia0" {
			found = d.Status == "denied"
		}
	}
	if !found {
		t.Errorf("denied report: /dev/nvidia0 not denied: %+v", denied.Devices)
	}
}

// TestRealTwoGPUIsolation replays the two-GPU run (two H200s, one container each): each
// guest's nvidia-smi saw exactly its own GPU, by the host's UUID.
func TestRealTwoGPUIsolation(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "real-gpu", "h200-2gpu")
	var status struct {
		Hosts []struct {
			GPUs []struct {
				Index int
				UUID  string
			} `json:"gpus"`
		} `json:"hosts"`
		Containers []struct {
			ID    string   `json:"id"`
			State string   `json:"state"`
			GPUs  []string `json:"gpus"`
		} `json:"containers"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "status-ready-2gpu.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &status); err != nil || len(status.Hosts) != 1 || len(status.Hosts[0].GPUs) != 2 {
		t.Fatalf("status fixture: %v", err)
	}
	for _, c := range status.Containers {
		if c.State != "ready" {
			t.Errorf("%s: state %s, want ready", c.ID, c.State)
		}
	}
	for i, g := range status.Hosts[0].GPUs {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("report-2gpu-g%d.json", i)))
		if err != nil {
			t.Fatal(err)
		}
		var r realReport
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		if !r.Ready || len(r.Smi.GPUs) != 1 || r.Smi.GPUs[0].UUID != g.UUID {
			t.Errorf("g%d: ready=%v smi=%+v, want exactly GPU %d (%s)", i, r.Ready, r.Smi.GPUs, g.Index, g.UUID)
		}
	}
}
