// Package gpu discovers a host's NVIDIA GPUs from /proc and /dev under a configurable
// root: the kernel driver version, the GPUs with their index, UUID, PCI bus id, model and
// device minor (the index is the position in PCI bus order, not the minor), the majors of
// the NVIDIA char devices as /proc/devices names them now, the device nodes present and
// whether MIG capability nodes exist. It also resolves a GPU selector (index, UUID or bus
// id) and lists the nodes a container needs for a set of GPUs.
//
// Majors are never assumed: nvidia-uvm and nvidia-caps majors are dynamic (234-243 and
// 507-511 are common, 238 on the H100 test host).
package gpu

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Sentinel errors; the returned errors wrap them with the file or GPU they concern.
var (
	// ErrNoDriver means the NVIDIA kernel driver is not loaded under this root.
	ErrNoDriver = errors.New("nvidia driver not loaded")
	// ErrNoGPUs means the driver is loaded but lists no GPU.
	ErrNoGPUs = errors.New("no nvidia gpu found")
	// ErrUnknownGPU means a selector matches no GPU of this host.
	ErrUnknownGPU = errors.New("unknown gpu")
	// ErrMissingNode means a required device node is absent or wrong on the host.
	ErrMissingNode = errors.New("required device node missing or wrong")
)

// Well-known /proc/devices names.
const (
	MajorNvidia         = "nvidia"
	MajorNvidiaFrontend = "nvidia-frontend"
	MajorUVM            = "nvidia-uvm"
	MajorCaps           = "nvidia-caps"
	MajorModeset        = "nvidia-modeset"
	MajorNVLink         = "nvidia-nvlink"
)

// Paths of the shared nodes, as seen on the host (relative to the root).
const (
	PathCtl      = "/dev/nvidiactl"
	PathUVM      = "/dev/nvidia-uvm"
	PathUVMTools = "/dev/nvidia-uvm-tools"
	DirCaps      = "/dev/nvidia-caps"
	// SimulatedMarker is the file, relative to the root, that marks a simulated host.
	SimulatedMarker = "/proc/driver/nvidia/SIMULATED"
)

// GPU is one GPU as the driver lists it.
type GPU struct {
	// Index is the position in PCI bus order (what nvidia-smi calls the index).
	Index int
	// UUID is "GPU-..." ("" when the driver does not show it yet).
	UUID string
	// BusID is the normalised PCI address, "0000:01:00.0" (lower case).
	BusID string
	// Model is the marketing name, "NVIDIA H100 80GB HBM3".
	Model string
	// Minor is the "Device Minor": /dev/nvidia<Minor>.
	Minor uint32
	// Excluded is "GPU Excluded: Yes" in the information file.
	Excluded bool
}

// DevPath is the GPU's own node, /dev/nvidia<minor>.
func (g GPU) DevPath() string { return fmt.Sprintf("/dev/nvidia%d", g.Minor) }

// String names the GPU for messages.
func (g GPU) String() string {
	return fmt.Sprintf("%d (%s, %s, minor %d)", g.Index, orUnknown(g.UUID), g.BusID, g.Minor)
}

func orUnknown(s string) string {
	if s == "" {
		return "uuid unknown"
	}
	return s
}

// Node is a device node found on the host.
type Node struct {
	// Path is the host path, "/dev/nvidia0" (without the discovery root).
	Path string
	// Char is true for a character device; anything else (a regular file left by an
	// optional bind mount, a directory, a symlink) is false.
	Char         bool
	Major, Minor uint32
	// Mode is the node's mode as os.Lstat gives it (type and permission bits).
	Mode os.FileMode
}

// Inventory is what Discover found.
type Inventory struct {
	// Root is the discovery root ("/" on a real host).
	Root string
	// DriverVersion is the kernel module version, "580.159.04".
	DriverVersion string
	// DriverLine is the first line of /proc/driver/nvidia/version.
	DriverLine string
	// OpenKernelModule is true for the open GPU kernel modules.
	OpenKernelModule bool
	// GPUs in PCI bus order (GPUs[i].Index == i).
	GPUs []GPU
	// Majors maps the NVIDIA names of /proc/devices (nvidia, nvidia-uvm, ...) to majors.
	Majors map[string]uint32
	// CharDevices maps every char major of /proc/devices to its names.
	CharDevices map[uint32][]string
	// Nodes are the host's /dev/nvidia* and /dev/nvidia-caps/* entries, by Path.
	Nodes map[string]Node
	// MIG is true when MIG capability nodes (/dev/nvidia-caps/*) exist.
	MIG bool
	// Simulated is true for a simulated host (see WriteSimulatedHost).
	Simulated bool
}

// GPUMajor is the major of /dev/nvidia<N> and /dev/nvidiactl ("nvidia", or
// "nvidia-frontend" on drivers that register that name).
func (inv *Inventory) GPUMajor() (uint32, bool) {
	if m, ok := inv.Majors[MajorNvidia]; ok {
		return m, true
	}
	m, ok := inv.Majors[MajorNvidiaFrontend]
	return m, ok
}

// HostPath is p (a host path such as /dev/nvidia0) under the discovery root.
func (inv *Inventory) HostPath(p string) string {
	if inv.Root == "" || inv.Root == "/" {
		return p
	}
	return filepath.Join(inv.Root, p)
}

// Discover reads the host under root ("/" or a fixture tree).
func Discover(root string) (*Inventory, error) {
	return Discoverer{Root: root}.Discover()
}

// Discoverer is Discover with seams: ListNodes replaces the /dev scan (tests use a
// manifest, see package gputest); nil scans Root/dev.
type Discoverer struct {
	Root      string
	ListNodes func(root string) (map[string]Node, error)
}

// Discover reads the driver version, /proc/devices, the GPUs and the nodes.
func (d Discoverer) Discover() (*Inventory, error) {
	root := d.Root
	if root == "" {
		root = "/"
	}
	inv := &Inventory{Root: root}
	vpath := filepath.Join(root, "proc/driver/nvidia/version")
	vb, err := readCapped(vpath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: no such file (load the NVIDIA kernel module: modprobe nvidia): %w", vpath, ErrNoDriver)
	}
	if err != nil {
		return nil, fmt.Errorf("read driver version: %w", err)
	}
	v, err := ParseVersion(vb)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", vpath, err)
	}
	inv.DriverVersion, inv.DriverLine, inv.OpenKernelModule = v.Version, v.Line, v.Open

	dpath := filepath.Join(root, "proc/devices")
	db, err := readCapped(dpath)
	if err != nil {
		return nil, fmt.Errorf("read device majors: %w", err)
	}
	chars, err := ParseDevices(db)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", dpath, err)
	}
	inv.CharDevices = chars
	inv.Majors = map[string]uint32{}
	for major, names := range chars {
		for _, n := range names {
			if strings.HasPrefix(n, MajorNvidia) {
				inv.Majors[n] = major
			}
		}
	}
	if _, ok := inv.GPUMajor(); !ok {
		return nil, fmt.Errorf("parse %s: no \"nvidia\" char device registered (load the NVIDIA kernel module: modprobe nvidia): %w", dpath, ErrNoDriver)
	}

	if inv.GPUs, err = readGPUs(root); err != nil {
		return nil, err
	}

	list := d.ListNodes
	if list == nil {
		list = ScanNodes
	}
	if inv.Nodes, err = list(root); err != nil {
		return nil, fmt.Errorf("list device nodes: %w", err)
	}
	for p, n := range inv.Nodes {
		if strings.HasPrefix(p, DirCaps+"/") && n.Char {
			inv.MIG = true
		}
	}
	if _, err := os.Stat(filepath.Join(root, SimulatedMarker)); err == nil {
		inv.Simulated = true
	}
	return inv, nil
}

// maxProcFile caps what is read from a /proc file.
const maxProcFile = 1 << 20

func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxProcFile+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxProcFile {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, maxProcFile)
	}
	return b, nil
}

func readGPUs(root string) ([]GPU, error) {
	dir := filepath.Join(root, "proc/driver/nvidia/gpus")
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list gpus: %w", err)
	}
	var gpus []GPU
	minors := map[uint32]string{}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name(), "information")
		b, err := readCapped(p)
		if err != nil {
			return nil, fmt.Errorf("read gpu information: %w", err)
		}
		g, err := ParseInformation(b)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", p, err)
		}
		if g.BusID == "" {
			if g.BusID = NormalizeBusID(e.Name()); g.BusID == "" {
				return nil, fmt.Errorf("parse %s: no \"Bus Location\" and directory name %q is not a PCI address", p, e.Name())
			}
		}
		if other, dup := minors[g.Minor]; dup {
			return nil, fmt.Errorf("parse %s: device minor %d is also the minor of %s", p, g.Minor, other)
		}
		minors[g.Minor] = g.BusID
		gpus = append(gpus, g)
	}
	if len(gpus) == 0 {
		return nil, fmt.Errorf("list %s: driver loaded but no GPU directories: %w", dir, ErrNoGPUs)
	}
	sort.Slice(gpus, func(i, j int) bool { return gpus[i].BusID < gpus[j].BusID })
	for i := range gpus {
		gpus[i].Index = i
	}
	return gpus, nil
}
