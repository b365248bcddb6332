package guest

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func sampleReports() map[string]*pb.GuestReport {
	notReady := &pb.GuestReport{
		ContainerId: "901", BootId: "0b5e5a9c-7f1e-4c3e-9d59-1f3f1d2b6a70", AgentBuild: "v0.1.0", Seq: 7,
		TimeUnixNano: 1764100000123456789, Trigger: TriggerChange,
		Devices: []*pb.DeviceCheck{
			{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195, Minor: 0},
			{Path: "/dev/nvidiactl", Status: pb.DeviceStatus_DEVICE_STATUS_DENIED, Major: 195, Minor: 255, Detail: "open: operation not permitted: the device cgroup denies it (add the allow rule for this major and restart the container)"},
			{Path: "/dev/nvidia-uvm", Status: pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, Detail: "empty regular file: an `optional` bind mount whose host node is missing leaves this"},
		},
		Driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.126.09", UserspacePath: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.126.09"},
		Network: &pb.Network{Reason: "no default route", Links: []*pb.NetLink{{Name: "eth0", Up: true, Addresses: []string{"10.0.0.5/24"}}}},
	}
	Assess(&pb.Expectation{DriverLoaded: true, RequireNetwork: true, Devices: make([]*pb.ExpectedDevice, 3)}, notReady, false)
	ready := &pb.GuestReport{
		ContainerId: "901", AgentBuild: "v0.1.0", Seq: 8, TimeUnixNano: 1764100010000000000, Trigger: TriggerHeartbeat, Ready: true,
		Devices: []*pb.DeviceCheck{{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195, Minor: 0}},
		Driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04"},
		Smi:     &pb.SmiResult{Ran: true, DurationMs: 412, Gpus: []*pb.SmiGPU{{Index: 0, Uuid: uuidA, Name: "NVIDIA H100 80GB HBM3", MemoryTotalMib: 81559, DriverVersion: "580.159.04"}}},
		Network: &pb.Network{Ok: true, DefaultRoute: true, Links: []*pb.NetLink{{Name: "eth0", Up: true, Addresses: []string{"10.0.0.5/24"}}}},
	}
	return map[string]*pb.GuestReport{"not-ready": notReady, "ready": ready, "empty": {}}
}

func TestOutputGolden(t *testing.T) {
	for name, r := range sampleReports() {
		for _, format := range []struct {
			ext   string
			write func(*bytes.Buffer, *pb.GuestReport) error
		}{
			{"json", func(b *bytes.Buffer, r *pb.GuestReport) error { return WriteJSON(b, r) }},
			{"txt", func(b *bytes.Buffer, r *pb.GuestReport) error { return WriteTable(b, r) }},
		} {
			t.Run(name+"."+format.ext, func(t *testing.T) {
				var b bytes.Buffer
				if err := format.write(&b, r); err != nil {
					t.Fatal(err)
				}
				golden := filepath.Join("testdata", "report-"+name+"."+format.ext)
				if *update {
					if err := os.MkdirAll("testdata", 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (run with -update to create it)", err)
				}
				if diff := cmp.Diff(b.String(), string(want)); diff != "" {
					t.Errorf("%s (-got +want):\n%s", golden, diff)
				}
			})
		}
	}
}
