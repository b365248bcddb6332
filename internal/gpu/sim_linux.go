package gpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// SimOptions shape a simulated GPU host.
type SimOptions struct {
	// GPUs is the number of GPUs, 1 to 4 (0 means 2).
	GPUs int
	// SwapMinors gives the GPUs their minors in reverse bus order, so index != minor.
	SwapMinors bool
	// MIG adds /dev/nvidia-caps/* nodes and the nvidia-caps major.
	MIG bool
	// RealMajors uses NVIDIA's numbers (nvidia 195, nvidia-uvm 511, nvidia-caps 509): the
	// nodes exist but open() gives ENXIO on a machine without the driver. Use it for the
	// no-driver case; the default stand-ins open.
	RealMajors bool
	// NoDriver writes no /proc/driver/nvidia and no NVIDIA /proc/devices names (and no
	// nodes): a host whose driver is not loaded.
	NoDriver bool
	// SkipNodes are host paths ("/dev/nvidia-uvm") not to create.
	SkipNodes []string
	// DriverVersion is written to /proc/driver/nvidia/version; default "580.159.04".
	DriverVersion string
}

// SimNode is one node a simulated host gets.
type SimNode struct {
	Path         string
	Major, Minor uint32
	Mode         os.FileMode
}

// Stand-in majors of a simulated host: char devices whose drivers exist on any Linux
// machine and that open O_RDWR as root (measured: vcs 7:0,1,64,65,128; misc 10:229 fuse,
// 10:200 tun; mem 1:3 null, 1:5 zero).
var (
	simGPUMinors = []uint32{0, 1, 64, 65}
	simStandIn   = simMajors{nvidia: 7, ctlMinor: 128, uvm: 10, uvmMinor: 229, toolsMinor: 200, caps: 1, capMinors: []uint32{3, 5}}
	simReal      = simMajors{nvidia: 195, ctlMinor: 255, uvm: 511, uvmMinor: 0, toolsMinor: 1, caps: 509, capMinors: []uint32{1, 2}}
)

type simMajors struct {
	nvidia, ctlMinor, uvm, uvmMinor, toolsMinor, caps uint32
	capMinors                                         []uint32
}

// SimulatedNodes lists the nodes WriteSimulatedHost creates for opts.
func SimulatedNodes(opts SimOptions) []SimNode {
	if opts.NoDriver {
		return nil
	}
	m := simStandIn
	if opts.RealMajors {
		m = simReal
	}
	var out []SimNode
	for _, g := range simGPUs(opts) {
		out = append(out, SimNode{fmt.Sprintf("/dev/nvidia%d", g.Minor), m.nvidia, g.Minor, 0o666})
	}
	out = append(out,
		SimNode{PathCtl, m.nvidia, m.ctlMinor, 0o666},
		SimNode{PathUVM, m.uvm, m.uvmMinor, 0o666},
		SimNode{PathUVMTools, m.uvm, m.toolsMinor, 0o666})
	if opts.MIG {
		for _, c := range m.capMinors {
			out = append(out, SimNode{fmt.Sprintf("%s/nvidia-cap%d", DirCaps, c), m.caps, c, 0o444})
		}
	}
	skip := map[string]bool{}
	for _, p := range opts.SkipNodes {
		skip[p] = true
	}
	kept := out[:0]
	for _, n := range out {
		if !skip[n.Path] {
			kept = append(kept, n)
		}
	}
	return kept
}

func simGPUs(opts SimOptions) []GPU {
	n := opts.GPUs
	if n <= 0 {
		n = 2
	}
	if n > len(simGPUMinors) {
		n = len(simGPUMinors)
	}
	gpus := make([]GPU, n)
	for i := range gpus {
		minor := simGPUMinors[i]
		if opts.SwapMinors {
			minor = simGPUMinors[n-1-i]
		}
		gpus[i] = GPU{
			Index: i,
			UUID:  fmt.Sprintf("GPU-5eed0000-0000-4000-8000-%012x", i+1),
			BusID: fmt.Sprintf("0000:%02x:00.0", i+1),
			Model: "Simulated GPU (gpupass)",
			Minor: minor,
		}
	}
	return gpus
}

// WriteSimulatedHost writes a simulated GPU host under root: /proc/driver/nvidia (version,
// gpus/<bus>/information, the SIMULATED marker), /proc/devices naming stand-in majors as
// the NVIDIA ones, and /dev nodes made with mknod (it needs root, and root must not sit
// on a nodev mount for the nodes to open). By default every node opens O_RDWR as root,
// and cgroup allow rules for its numbers are really enforced, so a container can reach
// "ready"; see SimOptions for the other cases. Whatever shows such a host must label it
// simulated (Inventory.Simulated).
func WriteSimulatedHost(root string, opts SimOptions) error {
	m := simStandIn
	if opts.RealMajors {
		m = simReal
	}
	version := opts.DriverVersion
	if version == "" {
		version = "580.159.04"
	}
	write := func(rel, content string) error {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("write simulated host: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("write simulated host: %w", err)
		}
		return nil
	}
	var devices strings.Builder
	devices.WriteString("Character devices:\n  4 /dev/vc/0\n  4 tty\n  5 /dev/tty\n  5 /dev/console\n  5 /dev/ptmx\n")
	if !opts.NoDriver {
		if opts.MIG {
			fmt.Fprintf(&devices, "%3d %s\n", m.caps, MajorCaps)
		}
		fmt.Fprintf(&devices, "%3d %s\n%3d %s\n", m.nvidia, MajorNvidia, m.uvm, MajorUVM)
	}
	devices.WriteString("136 pts\n\nBlock devices:\n  7 loop\n259 blkext\n")
	if err := write("proc/devices", devices.String()); err != nil {
		return err
	}
	if opts.NoDriver {
		return os.MkdirAll(filepath.Join(root, "dev"), 0o755)
	}
	if err := write("proc/driver/nvidia/version", fmt.Sprintf(
		"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  (gpupass simulated host)\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", version)); err != nil {
		return err
	}
	if err := write(strings.TrimPrefix(SimulatedMarker, "/"), "simulated GPU host written by gpupass: the device nodes use stand-in majors\n"); err != nil {
		return err
	}
	for _, g := range simGPUs(opts) {
		info := fmt.Sprintf("Model: \t\t %s\nIRQ:   \t\t 0\nGPU UUID: \t %s\nVideo BIOS: \t 00.00.00.00.00\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n",
			g.Model, g.UUID, g.BusID, g.Minor)
		if err := write("proc/driver/nvidia/gpus/"+g.BusID+"/information", info); err != nil {
			return err
		}
	}
	for _, n := range SimulatedNodes(opts) {
		if err := Mknod(filepath.Join(root, n.Path), n.Major, n.Minor, n.Mode); err != nil {
			return fmt.Errorf("write simulated host: %w", err)
		}
	}
	return nil
}

// Mknod creates (or replaces) the char device node path major:minor with mode perm,
// creating parent directories.
func Mknod(path string, major, minor uint32, perm os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := unix.Mknod(path, unix.S_IFCHR|uint32(perm.Perm()), int(unix.Mkdev(major, minor))); err != nil {
		return fmt.Errorf("mknod %s c %d %d: %w", path, major, minor, err)
	}
	// mknod applies the umask; set the intended bits (this is a test host, not pmxcfs).
	return os.Chmod(path, perm.Perm())
}
