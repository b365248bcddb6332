package gpu_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
)

// summary is the part of an Inventory the fixture table pins.
type summary struct {
	Driver string
	Open   bool
	GPUs   []gpu.GPU
	Majors map[string]uint32
	MIG    bool
	Nodes  []string
}

func summarize(inv *gpu.Inventory) summary {
	s := summary{Driver: inv.DriverVersion, Open: inv.OpenKernelModule, GPUs: inv.GPUs, Majors: inv.Majors, MIG: inv.MIG}
	for p, n := range inv.Nodes {
		kind := "other"
		if n.Char {
			kind = "c"
		}
		s.Nodes = append(s.Nodes, p+" "+kind+" "+itoa(n.Major)+":"+itoa(n.Minor)+" "+n.Mode.Perm().String())
	}
	return s
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

var wantFixtures = map[string]summary{
	"pve-2gpu": {
		Driver: "550.144.03",
		GPUs: []gpu.GPU{
			{Index: 0, UUID: "GPU-2b3f7c1e-8d4a-4f6b-9c2e-1a7d5e9f0b31", BusID: "0000:01:00.0", Model: "NVIDIA RTX A5000", Minor: 0},
			{Index: 1, UUID: "GPU-9e4d2a6b-3c1f-4e8a-b7d5-6f2c0a9e8d14", BusID: "0000:41:00.0", Model: "NVIDIA RTX A5000", Minor: 1},
		},
		Majors: map[string]uint32{"nvidia": 195, "nvidiactl": 195, "nvidia-modeset": 195, "nvidia-nvlink": 508, "nvidia-nvswitch": 509, "nvidia-caps-imex-channels": 510, "nvidia-uvm": 511},
		Nodes: []string{"/dev/nvidia0 c 195:0 -rw-rw-rw-", "/dev/nvidia1 c 195:1 -rw-rw-rw-", "/dev/nvidiactl c 195:255 -rw-rw-rw-",
			"/dev/nvidia-modeset c 195:254 -rw-rw-rw-", "/dev/nvidia-uvm c 511:0 -rw-rw-rw-", "/dev/nvidia-uvm-tools c 511:1 -rw-rw-rw-"},
	},
	"index-minor-differ": {
		Driver: "535.183.01",
		GPUs: []gpu.GPU{
			{Index: 0, UUID: "GPU-71c2e0d4-5a9b-4c3e-8f16-2d4b7a9c0e58", BusID: "0000:01:00.0", Model: "NVIDIA GeForce RTX 3090", Minor: 1},
			{Index: 1, UUID: "GPU-0a8f3d6c-2e7b-4d15-9c4a-8b1e6f3d2a70", BusID: "0000:02:00.0", Model: "NVIDIA GeForce RTX 3090", Minor: 0},
		},
		Majors: map[string]uint32{"nvidia": 195, "nvidiactl": 195, "nvidia-modeset": 195, "nvidia-nvswitch": 510, "nvidia-uvm": 509},
		Nodes: []string{"/dev/nvidia0 c 195:0 -rw-rw-rw-", "/dev/nvidia1 c 195:1 -rw-rw-rw-", "/dev/nvidiactl c 195:255 -rw-rw-rw-",
			"/dev/nvidia-uvm c 509:0 -rw-rw-rw-", "/dev/nvidia-uvm-tools c 509:1 -rw-rw-rw-"},
	},
	"mig": {
		Driver: "570.133.20", Open: true, MIG: true,
		GPUs:   []gpu.GPU{{Index: 0, UUID: "GPU-c4a1f5e2-7b3d-4a9c-8e6f-0d2b5a7c9e13", BusID: "0000:07:00.0", Model: "NVIDIA A100-SXM4-40GB", Minor: 0}},
		Majors: map[string]uint32{"nvidia": 195, "nvidiactl": 195, "nvidia-modeset": 195, "nvidia-nvswitch": 509, "nvidia-caps": 508, "nvidia-uvm": 507},
		Nodes: []string{"/dev/nvidia0 c 195:0 -rw-rw-rw-", "/dev/nvidiactl c 195:255 -rw-rw-rw-", "/dev/nvidia-uvm c 507:0 -rw-rw-rw-",
			"/dev/nvidia-uvm-tools c 507:1 -rw-rw-rw-", "/dev/nvidia-caps/nvidia-cap1 c 508:1 -r--------", "/dev/nvidia-caps/nvidia-cap2 c 508:2 -r--r--r--"},
	},
	"h100": {
		Driver: "580.159.04", Open: true, MIG: true,
		GPUs:   []gpu.GPU{{Index: 0, UUID: "GPU-d82c56db-4d07-1592-0f97-2ec890a55c77", BusID: "0000:00:06.0", Model: "NVIDIA H100 80GB HBM3", Minor: 0}},
		Majors: map[string]uint32{"nvidia": 195, "nvidiactl": 195, "nvidia-uvm": 238, "nvidia-nvswitch": 239, "nvidia-nvlink": 240, "nvidia-caps": 241, "nvidia-caps-imex-channels": 242},
		Nodes: []string{"/dev/nvidia0 c 195:0 -rw-rw-rw-", "/dev/nvidiactl c 195:255 -rw-rw-rw-", "/dev/nvidia-uvm c 238:0 -rw-rw-rw-",
			"/dev/nvidia-uvm-tools c 238:1 -rw-rw-rw-", "/dev/nvidia-caps/nvidia-cap1 c 241:1 -r--------", "/dev/nvidia-caps/nvidia-cap2 c 241:2 -r--r--r--"},
	},
}

var sortStrings = cmpopts.SortSlices(func(a, b string) bool { return a < b })

func TestDiscoverFixtures(t *testing.T) {
	for name, want := range wantFixtures {
		t.Run(name, func(t *testing.T) {
			inv := gputest.Inventory(t, name)
			if diff := cmp.Diff(summarize(inv), want, sortStrings); diff != "" {
				t.Errorf("Discover (-got +want):\n%s", diff)
			}
			if inv.Simulated {
				t.Errorf("fixture %s reported as simulated", name)
			}
		})
	}
}

func TestFixtureListComplete(t *testing.T) {
	var got []string
	for _, n := range gputest.Names() {
		if n != "no-driver" {
			got = append(got, n)
		}
	}
	var want []string
	for n := range wantFixtures {
		want = append(want, n)
	}
	if diff := cmp.Diff(got, want, sortStrings); diff != "" {
		t.Errorf("fixtures without a row in wantFixtures (-got +want):\n%s", diff)
	}
}

// TestDiscoverRealNodes materialises each fixture with real device nodes and checks that
// the production /dev scan finds what the manifest says.
func TestDiscoverRealNodes(t *testing.T) {
	for name, want := range wantFixtures {
		t.Run(name, func(t *testing.T) {
			root := gputest.MakeRoot(t, name)
			inv, err := gpu.Discover(root)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(summarize(inv), want, sortStrings); diff != "" {
				t.Errorf("Discover (-got +want):\n%s", diff)
			}
		})
	}
}

func TestDiscoverNoDriver(t *testing.T) {
	_, err := gputest.Discover(t, "no-driver")
	if !errors.Is(err, gpu.ErrNoDriver) {
		t.Fatalf("Discover(no-driver) error = %v, want ErrNoDriver", err)
	}
	if !strings.Contains(err.Error(), "proc/driver/nvidia/version") {
		t.Errorf("error %q does not name /proc/driver/nvidia/version", err)
	}

	// Version file present but "nvidia" missing from /proc/devices.
	root := t.TempDir()
	mustWrite(t, filepath.Join(root, "proc/driver/nvidia/version"), "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n")
	mustWrite(t, filepath.Join(root, "proc/devices"), "Character devices:\n  1 mem\n511 nvidia-uvm\n\nBlock devices:\n  8 sd\n")
	_, err = gpu.Discover(root)
	if !errors.Is(err, gpu.ErrNoDriver) || !strings.Contains(err.Error(), `"nvidia"`) {
		t.Errorf("Discover without nvidia major: %v, want ErrNoDriver naming \"nvidia\"", err)
	}

	// Driver loaded, no GPU directories.
	mustWrite(t, filepath.Join(root, "proc/devices"), "Character devices:\n195 nvidia\n511 nvidia-uvm\n")
	if _, err = gpu.Discover(root); !errors.Is(err, gpu.ErrNoGPUs) {
		t.Errorf("Discover without GPUs: %v, want ErrNoGPUs", err)
	}

	// Two GPUs claiming the same minor.
	info := "Model: \t\t X\nBus Location: \t %s\nDevice Minor: \t 0\n"
	mustWrite(t, filepath.Join(root, "proc/driver/nvidia/gpus/0000:01:00.0/information"), strings.Replace(info, "%s", "0000:01:00.0", 1))
	mustWrite(t, filepath.Join(root, "proc/driver/nvidia/gpus/0000:02:00.0/information"), strings.Replace(info, "%s", "0000:02:00.0", 1))
	if _, err = gpu.Discover(root); err == nil || !strings.Contains(err.Error(), "minor 0") {
		t.Errorf("Discover with duplicate minors: %v, want an error naming minor 0", err)
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestResolve(t *testing.T) {
	inv := gputest.Inventory(t, "index-minor-differ")
	tests := []struct {
		name, sel string
		wantMinor uint32
		wantIndex int
		wantErr   string
	}{
		{"index 0 is minor 1", "0", 1, 0, ""},
		{"index 1 is minor 0", "1", 0, 1, ""},
		{"uuid", "GPU-0a8f3d6c-2e7b-4d15-9c4a-8b1e6f3d2a70", 0, 1, ""},
		{"uuid any case", "gpu-71C2E0D4-5a9b-4c3e-8f16-2d4b7a9c0e58", 1, 0, ""},
		{"bus long", "0000:02:00.0", 0, 1, ""},
		{"bus short upper", "02:00.0", 0, 1, ""},
		{"bus nvidia-smi domain", "00000000:01:00.0", 1, 0, ""},
		{"bus any case", "0000:01:00.0 ", 1, 0, ""},
		{"index out of range", "2", 0, 0, `resolve gpu "2": no such GPU`},
		{"unknown uuid", "GPU-deadbeef", 0, 0, `"GPU-deadbeef"`},
		{"unknown bus", "0000:03:00.0", 0, 0, "0000:03:00.0"},
		{"garbage", "first", 0, 0, "not an index"},
		{"empty", "", 0, 0, "no such GPU"},
		{"negative", "-1", 0, 0, "not an index"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := inv.Resolve(tt.sel)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, gpu.ErrUnknownGPU) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resolve(%q) = %v, %v; want ErrUnknownGPU containing %q", tt.sel, g, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "0000:02:00.0, minor 0") {
					t.Errorf("error %q does not list the host's GPUs", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g.Minor != tt.wantMinor || g.Index != tt.wantIndex {
				t.Errorf("Resolve(%q) = index %d minor %d, want index %d minor %d", tt.sel, g.Index, g.Minor, tt.wantIndex, tt.wantMinor)
			}
		})
	}
	gs, err := inv.ResolveAll([]string{"1", "0000:01:00.0", "0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 2 || gs[0].Index != 0 || gs[1].Index != 1 {
		t.Errorf("ResolveAll dedup/sort = %v", gs)
	}
}

func nodePaths(ns []gpu.Node) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.Path+" "+itoa(n.Major)+":"+itoa(n.Minor))
	}
	return out
}

func TestRequiredNodes(t *testing.T) {
	tests := []struct {
		fixture string
		sel     []string
		want    []string
	}{
		{"pve-2gpu", []string{"1"}, []string{"/dev/nvidia1 195:1", "/dev/nvidiactl 195:255", "/dev/nvidia-uvm 511:0", "/dev/nvidia-uvm-tools 511:1"}},
		{"pve-2gpu", []string{"0", "1"}, []string{"/dev/nvidia0 195:0", "/dev/nvidia1 195:1", "/dev/nvidiactl 195:255", "/dev/nvidia-uvm 511:0", "/dev/nvidia-uvm-tools 511:1"}},
		{"pve-2gpu", nil, nil},
		{"index-minor-differ", []string{"0"}, []string{"/dev/nvidia1 195:1", "/dev/nvidiactl 195:255", "/dev/nvidia-uvm 509:0", "/dev/nvidia-uvm-tools 509:1"}},
		{"mig", []string{"0"}, []string{"/dev/nvidia0 195:0", "/dev/nvidiactl 195:255", "/dev/nvidia-uvm 507:0", "/dev/nvidia-uvm-tools 507:1", "/dev/nvidia-caps/nvidia-cap1 508:1", "/dev/nvidia-caps/nvidia-cap2 508:2"}},
		{"h100", []string{"0000:00:06.0"}, []string{"/dev/nvidia0 195:0", "/dev/nvidiactl 195:255", "/dev/nvidia-uvm 238:0", "/dev/nvidia-uvm-tools 238:1", "/dev/nvidia-caps/nvidia-cap1 241:1", "/dev/nvidia-caps/nvidia-cap2 241:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.fixture+"/"+strings.Join(tt.sel, ","), func(t *testing.T) {
			inv := gputest.Inventory(t, tt.fixture)
			gs, err := inv.ResolveAll(tt.sel)
			if err != nil {
				t.Fatal(err)
			}
			ns, err := inv.RequiredNodes(gs)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(nodePaths(ns), tt.want); diff != "" {
				t.Errorf("RequiredNodes (-got +want):\n%s", diff)
			}
		})
	}
}

func TestRequiredNodesErrors(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(inv *gpu.Inventory)
		wantErr string
	}{
		{"uvm node missing", func(inv *gpu.Inventory) { delete(inv.Nodes, "/dev/nvidia-uvm") }, "/dev/nvidia-uvm does not exist"},
		{"gpu node missing", func(inv *gpu.Inventory) { delete(inv.Nodes, "/dev/nvidia1") }, "/dev/nvidia1 does not exist"},
		{"ctl is a regular file", func(inv *gpu.Inventory) {
			inv.Nodes["/dev/nvidiactl"] = gpu.Node{Path: "/dev/nvidiactl", Mode: 0o644}
		}, "/dev/nvidiactl on the host is not a character device"},
		{"stale uvm major", func(inv *gpu.Inventory) { inv.Majors["nvidia-uvm"] = 238 }, "/dev/nvidia-uvm on the host is 511:0 but /proc/devices gives nvidia-uvm major 238"},
		{"uvm not loaded", func(inv *gpu.Inventory) { delete(inv.Majors, "nvidia-uvm") }, "nvidia-uvm module is not loaded"},
		{"gpu node wrong minor", func(inv *gpu.Inventory) {
			inv.Nodes["/dev/nvidia1"] = gpu.Node{Path: "/dev/nvidia1", Char: true, Major: 195, Minor: 7}
		}, "/dev/nvidia1 on the host is 195:7, want minor 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := gputest.Inventory(t, "pve-2gpu")
			tt.edit(inv)
			_, err := inv.RequiredNodes([]gpu.GPU{inv.GPUs[1]})
			if !errors.Is(err, gpu.ErrMissingNode) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("RequiredNodes error = %v, want ErrMissingNode containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestSimulatedHost proves the simulated host: every node opens O_RDWR (caps O_RDONLY) as
// root, Discover and RequiredNodes are consistent, and RealMajors nodes give ENXIO.
func TestSimulatedHost(t *testing.T) {
	for _, opts := range []gpu.SimOptions{{}, {GPUs: 4, MIG: true}, {GPUs: 2, SwapMinors: true}} {
		root := gputest.SimulatedRoot(t, opts)
		inv, err := gpu.Discover(root)
		if err != nil {
			t.Fatal(err)
		}
		if !inv.Simulated {
			t.Error("simulated host not marked Simulated")
		}
		if inv.Majors["nvidia"] == inv.Majors["nvidia-uvm"] {
			t.Errorf("nvidia and nvidia-uvm share major %d", inv.Majors["nvidia"])
		}
		ns, err := inv.RequiredNodes(inv.GPUs)
		if err != nil {
			t.Fatalf("%+v: %v", opts, err)
		}
		if want := len(gpu.SimulatedNodes(opts)); len(ns) != want {
			t.Errorf("%+v: RequiredNodes gave %d nodes, want %d", opts, len(ns), want)
		}
		for _, n := range ns {
			if err := gputest.CanOpen(inv.HostPath(n.Path)); err != nil {
				t.Errorf("%+v: open %s (%d:%d): %v", opts, n.Path, n.Major, n.Minor, err)
			}
		}
		if opts.SwapMinors && inv.GPUs[0].Minor == 0 {
			t.Errorf("SwapMinors: GPU 0 has minor 0")
		}
	}

	root := gputest.SimulatedRoot(t, gpu.SimOptions{RealMajors: true})
	inv, err := gpu.Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/proc/driver/nvidia"); err == nil {
		t.Log("this machine has an NVIDIA driver: RealMajors nodes open here, ENXIO not checked")
	} else if err := gputest.CanOpen(inv.HostPath("/dev/nvidiactl")); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("RealMajors: open nvidiactl = %v, want ENXIO", err)
	}

	root = gputest.SimulatedRoot(t, gpu.SimOptions{NoDriver: true})
	if _, err := gpu.Discover(root); !errors.Is(err, gpu.ErrNoDriver) {
		t.Errorf("NoDriver: Discover = %v, want ErrNoDriver", err)
	}
	root = gputest.SimulatedRoot(t, gpu.SimOptions{SkipNodes: []string{gpu.PathUVMTools}})
	inv, err = gpu.Discover(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inv.RequiredNodes(inv.GPUs); !errors.Is(err, gpu.ErrMissingNode) {
		t.Errorf("SkipNodes uvm-tools: RequiredNodes = %v, want ErrMissingNode", err)
	}
}

func TestManifestRegularFileSeen(t *testing.T) {
	root := gputest.MakeRoot(t, "no-driver")
	ns, err := gpu.ScanNodes(root)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]gpu.Node{"/dev/nvidia-uvm": {Path: "/dev/nvidia-uvm", Mode: 0o644}}
	if diff := cmp.Diff(ns, want); diff != "" {
		t.Errorf("ScanNodes (-got +want):\n%s", diff)
	}
}

// TestDiscoverLocalHost runs discovery on this machine's real /proc and /dev when it has
// an NVIDIA driver (the GPU test host); elsewhere it skips.
func TestDiscoverLocalHost(t *testing.T) {
	if _, err := os.Stat("/proc/driver/nvidia/version"); err != nil {
		t.Skip("no NVIDIA driver on this machine")
	}
	inv, err := gpu.Discover("/")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("driver %s (open %v), MIG %v, majors %v", inv.DriverVersion, inv.OpenKernelModule, inv.MIG, inv.Majors)
	for _, g := range inv.GPUs {
		t.Logf("gpu %s %s", g, g.Model)
	}
	ns, err := inv.RequiredNodes(inv.GPUs)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		t.Logf("node %s %d:%d %v", n.Path, n.Major, n.Minor, n.Mode)
		if err := gputest.CanOpen(n.Path); err != nil {
			t.Errorf("open %s: %v", n.Path, err)
		}
	}
	if inv.Simulated {
		t.Error("real host reported as simulated")
	}
}
