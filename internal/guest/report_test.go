package guest

import (
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/runner"
	pb "gpupass/proto/gpupass/v1"
)

const uuidA = "GPU-4c3f2a7e-9b1d-4a58-8e1c-2f0d9a6b7c31"

func TestCheck(t *testing.T) {
	requireDevNodesWork(t)
	lib := "usr/lib/x86_64-linux-gnu/"
	installNVML := func(version string) func(f *tree) {
		return func(f *tree) {
			f.symlink(lib+"libnvidia-ml.so.1", "libnvidia-ml.so."+version)
			f.file(lib+"libnvidia-ml.so."+version, "ELF")
		}
	}
	withSmi := func(f *tree) { f.executable("usr/bin/nvidia-smi", "#!/bin/sh\n") }
	devs := []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}, {Path: "/dev/nvidiactl", Major: 1, Minor: 3}}
	base := func() *pb.Expectation {
		return &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04", Devices: devs, Gpus: []*pb.GPU{{Uuid: uuidA}}}
	}
	badNet := func() *pb.Network { return &pb.Network{Reason: "no default route"} }
	tests := []struct {
		name     string
		setup    []func(f *tree)
		exp      func() *pb.Expectation
		smiOut   *runner.Response
		network  func() *pb.Network
		ready    bool
		reasons  []string
		warnings []string
		driver   *pb.DriverVersions
	}{
		{
			name: "ready", setup: []func(*tree){installNVML("580.159.04")}, exp: base, ready: true,
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			// driver: host: the hook's directory, an old own copy beside it in the image.
			name: "the host's userspace (driver: host) wins over an old own copy",
			setup: []func(*tree){installNVML("570.86.15"), func(f *tree) {
				f.symlink("usr/lib/gpupass-driver/lib/libnvidia-ml.so.1", "libnvidia-ml.so.580.159.04")
				f.file("usr/lib/gpupass-driver/lib/libnvidia-ml.so.580.159.04", "ELF")
			}},
			exp: base, ready: true,
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/usr/lib/gpupass-driver/lib/libnvidia-ml.so.580.159.04", UserspaceSource: "host"},
		},
		{
			name: "version mismatch", setup: []func(*tree){installNVML("580.126.09")}, exp: base,
			reasons: []string{"driver/library version mismatch: kernel 580.159.04, libnvidia-ml 580.126.09"},
			driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.126.09", UserspacePath: "/" + lib + "libnvidia-ml.so.580.126.09", UserspaceSource: "own"},
		},
		{
			name: "userspace not installed is a warning", exp: base, ready: true,
			warnings: []string{"userspace driver not installed: no libnvidia-ml.so.1 in ld.so.cache or the standard library directories (passthrough works; CUDA programs need the driver libraries of version 580.159.04)"},
			driver:   &pb.DriverVersions{Kernel: "580.159.04"},
		},
		{
			// A container with no GPU assigned needs no CUDA libraries: no warning.
			name:  "no GPUs assigned, userspace not installed: no warning",
			exp:   func() *pb.Expectation { return &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04"} },
			ready: true, driver: &pb.DriverVersions{Kernel: "580.159.04"},
		},
		{
			name: "host kernel driver not loaded", setup: []func(*tree){installNVML("580.159.04")},
			exp: func() *pb.Expectation {
				e := base()
				e.DriverLoaded, e.KernelDriverVersion = false, ""
				return e
			},
			reasons: []string{"host kernel driver not loaded"},
			driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "nvidia-smi sees the assigned GPU", setup: []func(*tree){installNVML("580.159.04"), withSmi}, exp: base,
			smiOut: &runner.Response{Stdout: smiH100}, ready: true,
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "nvidia-smi sees another GPU", setup: []func(*tree){installNVML("580.159.04"), withSmi},
			exp:    func() *pb.Expectation { e := base(); e.Gpus = []*pb.GPU{{Uuid: "GPU-other"}}; return e },
			smiOut: &runner.Response{Stdout: smiH100},
			reasons: []string{
				"nvidia-smi sees GPU " + uuidA + " that is not assigned to this container",
				"nvidia-smi does not see assigned GPU GPU-other",
			},
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "nvidia-smi fails", setup: []func(*tree){installNVML("580.159.04"), withSmi}, exp: base,
			smiOut:  &runner.Response{Stdout: "Failed to initialize NVML: Unknown Error\n", ExitCode: 255},
			reasons: []string{"nvidia-smi: exit 255: Failed to initialize NVML: Unknown Error"},
			driver:  &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "network required and down", setup: []func(*tree){installNVML("580.159.04")},
			exp:     func() *pb.Expectation { e := base(); e.RequireNetwork = true; return e },
			network: badNet, reasons: []string{"network: no default route"},
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "network down but not required", setup: []func(*tree){installNVML("580.159.04")}, exp: base, network: badNet, ready: true,
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.159.04", UserspacePath: "/" + lib + "libnvidia-ml.so.580.159.04", UserspaceSource: "own"},
		},
		{
			name: "missing node and wrong device, every reason named", setup: []func(*tree){installNVML("580.126.09")},
			exp: func() *pb.Expectation {
				e := base()
				e.Devices = append(e.Devices, &pb.ExpectedDevice{Path: "/dev/nvidia-uvm", Major: 238, Minor: 0}, &pb.ExpectedDevice{Path: "/dev/nvidia1", Major: 1, Minor: 3})
				return e
			},
			reasons: []string{
				"/dev/nvidia-uvm: missing: no such file",
				"/dev/nvidia1: wrong-device: char device 1:5, want 1:3",
				"driver/library version mismatch: kernel 580.159.04, libnvidia-ml 580.126.09",
			},
			driver: &pb.DriverVersions{Kernel: "580.159.04", Userspace: "580.126.09", UserspacePath: "/" + lib + "libnvidia-ml.so.580.126.09", UserspaceSource: "own"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTree(t)
			f.chardev("dev/nvidia0", 1, 3)
			f.chardev("dev/nvidiactl", 1, 3)
			f.chardev("dev/nvidia1", 1, 5)
			f.file("proc/driver/nvidia/version", procVersionOpen)
			for _, s := range tc.setup {
				s(f)
			}
			fake := &runner.Fake{Responses: map[string][]runner.Response{}}
			if tc.smiOut != nil {
				fake.Responses[f.path("usr/bin/nvidia-smi")+" "+strings.Join(SmiArgs, " ")] = []runner.Response{*tc.smiOut}
			}
			network := tc.network
			if network == nil {
				network = okNetwork
			}
			c := &Checker{Paths: f.paths(), Runner: fake, Network: network}
			r := c.Check(context.Background(), tc.exp())
			if r.Ready != tc.ready {
				t.Errorf("ready = %v, want %v (reasons %q)", r.Ready, tc.ready, r.Reasons)
			}
			if diff := cmp.Diff(r.Reasons, tc.reasons); diff != "" {
				t.Errorf("reasons (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(r.Warnings, tc.warnings); diff != "" {
				t.Errorf("warnings (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(r.Driver.String(), tc.driver.String()); diff != "" {
				t.Errorf("driver (-got +want):\n%s", diff)
			}
			if tc.smiOut != nil && len(fake.Transcript()) != 1 {
				t.Errorf("nvidia-smi ran %d times, want once", len(fake.Transcript()))
			}
		})
	}
}

func TestCheckDiscovered(t *testing.T) {
	f := newTree(t)
	r := (&Checker{Paths: f.paths(), Network: okNetwork}).Check(context.Background(), nil)
	want := []string{"no NVIDIA device nodes found under /dev"}
	if diff := cmp.Diff(r.Reasons, want); r.Ready || diff != "" {
		t.Errorf("Check(no expectation, no nodes): ready %v, reasons (-got +want):\n%s", r.Ready, diff)
	}
}

func TestAssessBounds(t *testing.T) {
	exp := &pb.Expectation{DriverLoaded: true}
	r := &pb.GuestReport{}
	for i := 0; i < MaxDevices+10; i++ {
		exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: "/dev/x"})
		r.Devices = append(r.Devices, &pb.DeviceCheck{Path: "/dev/x" + strings.Repeat("y", 2000), Status: pb.DeviceStatus_DEVICE_STATUS_MISSING})
	}
	Assess(exp, r, false)
	if len(r.Reasons) != MaxReasons || !strings.HasPrefix(r.Reasons[MaxReasons-1], "... and ") {
		t.Errorf("%d reasons, last %q; want %d ending in a count", len(r.Reasons), r.Reasons[len(r.Reasons)-1], MaxReasons)
	}
	for _, s := range r.Reasons {
		if len(s) > maxDetail {
			t.Fatalf("reason of %d bytes", len(s))
		}
	}
	if !strings.Contains(r.Reasons[0], "more than 256") {
		t.Errorf("first reason %q does not say the expectation was cut", r.Reasons[0])
	}
}

// TestDeepFindsNVML: nvidia-smi runs with the directory of the libnvidia-ml the checks
// found first on LD_LIBRARY_PATH, so that an image relying on its own environment (NVIDIA's
// /usr/local/nvidia/lib64) is judged by the GPUs it sees.
func TestDeepFindsNVML(t *testing.T) {
	f := newTree(t)
	lib := f.path("usr/local/nvidia/lib64")
	f.executable("usr/local/nvidia/bin/nvidia-smi", `#!/bin/sh
case ":$LD_LIBRARY_PATH:" in
*":`+lib+`:"*) printf '%s' '`+smiH100+`' ;;
*) echo "NVIDIA-SMI couldn't find libnvidia-ml.so library in your system."; exit 9 ;;
esac
`)
	c := &Checker{Paths: f.paths()}
	got := c.Deep(context.Background(), "/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04")
	if got == nil || got.Error != "" || len(got.Gpus) != 1 || got.Gpus[0].Uuid != uuidA {
		t.Errorf("Deep with the library's directory = %v; want the H100", got)
	}
	got = c.Deep(context.Background(), "")
	if got == nil || !strings.Contains(got.Error, "couldn't find libnvidia-ml") {
		t.Errorf("Deep without a library = %v; want nvidia-smi's complaint", got)
	}
}
