package guest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	pb "gpupass/proto/gpupass/v1"
)

const procDevicesH100 = `Character devices:
  1 mem
  4 /dev/vc/0
 10 misc
195 nvidia-frontend
238 nvidia-uvm
241 nvidia-caps
505 nvidia-caps-imex-channels

Block devices:
  7 loop
238 notachar
`

func TestParseCharMajors(t *testing.T) {
	got := ParseCharMajors([]byte(procDevicesH100))
	want := map[string]uint32{"mem": 1, "/dev/vc/0": 4, "misc": 10, "nvidia-frontend": 195, "nvidia-uvm": 238, "nvidia-caps": 241, "nvidia-caps-imex-channels": 505}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("ParseCharMajors (-got +want):\n%s", diff)
	}
}

func TestDiscover(t *testing.T) {
	requireDevNodesWork(t)
	f := newTree(t)
	f.file("proc/devices", procDevicesH100)
	f.file("proc/driver/nvidia/version", procVersionOpen)
	f.chardev("dev/nvidia1", 195, 1)
	f.chardev("dev/nvidiactl", 195, 255)
	f.chardev("dev/nvidia-uvm", 238, 0)
	f.chardev("dev/nvidia-uvm-tools", 510, 1) // stale major: expected from /proc/devices
	f.file("dev/nvidia0", "")                 // the optional trap: still expected
	f.chardev("dev/nvidia-caps/nvidia-cap2", 241, 2)
	f.chardev("dev/nvidia-nvswitchctl", 509, 0) // unknown: expected as found
	f.chardev("dev/null", 1, 3)
	got := f.paths().Discover()
	want := &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04", Devices: []*pb.ExpectedDevice{
		{Path: "/dev/nvidia-caps/nvidia-cap2", Major: 241, Minor: 2},
		{Path: "/dev/nvidia-nvswitchctl", Major: 509, Minor: 0},
		{Path: "/dev/nvidia-uvm", Major: 238, Minor: 0},
		{Path: "/dev/nvidia-uvm-tools", Major: 238, Minor: 1},
		{Path: "/dev/nvidia0", Major: 195, Minor: 0},
		{Path: "/dev/nvidia1", Major: 195, Minor: 1},
		{Path: "/dev/nvidiactl", Major: 195, Minor: 255},
	}}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Discover (-got +want):\n%s", diff)
	}
}

func TestDiscoverNoDriver(t *testing.T) {
	f := newTree(t)
	f.file("proc/devices", "Character devices:\n  1 mem\n")
	f.file("dev/nvidia0", "")
	got := f.paths().Discover()
	want := &pb.Expectation{Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0"}}}
	if diff := cmp.Diff(got, want, protocmp.Transform()); diff != "" {
		t.Errorf("Discover (-got +want):\n%s", diff)
	}
}
