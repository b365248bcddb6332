package gpu

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Resolve finds the GPU a selector names: an index ("1"), a UUID ("GPU-...", any case)
// or a PCI bus id ("0000:01:00.0", "01:00.0", any case).
func (inv *Inventory) Resolve(selector string) (GPU, error) {
	s := strings.TrimSpace(selector)
	switch {
	case s == "":
	case isDigits(s):
		if i, err := strconv.Atoi(s); err == nil && i >= 0 && i < len(inv.GPUs) {
			return inv.GPUs[i], nil
		}
	case len(s) > 4 && (strings.EqualFold(s[:4], "GPU-") || strings.EqualFold(s[:4], "MIG-")):
		for _, g := range inv.GPUs {
			if g.UUID != "" && strings.EqualFold(g.UUID, s) {
				return g, nil
			}
		}
	default:
		if bus := NormalizeBusID(s); bus != "" {
			for _, g := range inv.GPUs {
				if g.BusID == bus {
					return g, nil
				}
			}
		} else {
			return GPU{}, fmt.Errorf("resolve gpu %q: not an index, a GPU-... UUID or a PCI bus id; this host has %s: %w", selector, inv.describeGPUs(), ErrUnknownGPU)
		}
	}
	return GPU{}, fmt.Errorf("resolve gpu %q: no such GPU on this host, which has %s: %w", selector, inv.describeGPUs(), ErrUnknownGPU)
}

// ResolveAll resolves each selector and returns the GPUs without duplicates, sorted by
// index.
func (inv *Inventory) ResolveAll(selectors []string) ([]GPU, error) {
	seen := map[int]bool{}
	var out []GPU
	for _, s := range selectors {
		g, err := inv.Resolve(s)
		if err != nil {
			return nil, err
		}
		if !seen[g.Index] {
			seen[g.Index] = true
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out, nil
}

func (inv *Inventory) describeGPUs() string {
	if len(inv.GPUs) == 0 {
		return "no GPUs"
	}
	parts := make([]string, len(inv.GPUs))
	for i, g := range inv.GPUs {
		parts[i] = g.String()
	}
	return strings.Join(parts, "; ")
}

// GPUByMinor finds the GPU whose device minor is minor.
func (inv *Inventory) GPUByMinor(minor uint32) (GPU, bool) {
	for _, g := range inv.GPUs {
		if g.Minor == minor {
			return g, true
		}
	}
	return GPU{}, false
}

func isDigits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

// RequiredNodes lists the host nodes a container needs for gpus, in a stable order:
// /dev/nvidia<minor> for each GPU (in the order given), /dev/nvidiactl, /dev/nvidia-uvm,
// /dev/nvidia-uvm-tools, then /dev/nvidia-caps/* (by minor) when MIG. Each must exist on
// the host as a char device whose major is the one /proc/devices gives now; otherwise the
// error (wrapping ErrMissingNode) names the node and what to do. No GPUs need no nodes.
func (inv *Inventory) RequiredNodes(gpus []GPU) ([]Node, error) {
	if len(gpus) == 0 {
		return nil, nil
	}
	gpuMajor, ok := inv.GPUMajor()
	if !ok {
		return nil, fmt.Errorf("list required nodes: no \"nvidia\" major in /proc/devices: %w", ErrNoDriver)
	}
	var out []Node
	add := func(path, majorName string, major uint32, wantMinor int64) error {
		n, ok := inv.Nodes[path]
		switch {
		case !ok:
			return fmt.Errorf("required node %s does not exist on the host (create it: nvidia-modprobe, or mknod with the %s major %d from /proc/devices): %w", path, majorName, major, ErrMissingNode)
		case !n.Char:
			return fmt.Errorf("required node %s on the host is not a character device (mode %v; remove it and create the node): %w", path, n.Mode, ErrMissingNode)
		case n.Major != major:
			return fmt.Errorf("required node %s on the host is %d:%d but /proc/devices gives %s major %d (stale node: recreate it): %w", path, n.Major, n.Minor, majorName, major, ErrMissingNode)
		case wantMinor >= 0 && int64(n.Minor) != wantMinor:
			return fmt.Errorf("required node %s on the host is %d:%d, want minor %d: %w", path, n.Major, n.Minor, wantMinor, ErrMissingNode)
		}
		out = append(out, n)
		return nil
	}
	for _, g := range gpus {
		if err := add(g.DevPath(), MajorNvidia, gpuMajor, int64(g.Minor)); err != nil {
			return nil, err
		}
	}
	if err := add(PathCtl, MajorNvidia, gpuMajor, -1); err != nil {
		return nil, err
	}
	uvm, ok := inv.Majors[MajorUVM]
	if !ok {
		return nil, fmt.Errorf("list required nodes: no \"nvidia-uvm\" major in /proc/devices: the nvidia-uvm module is not loaded (modprobe nvidia-uvm or nvidia-modprobe -u -c=0): %w", ErrMissingNode)
	}
	for _, p := range []string{PathUVM, PathUVMTools} {
		if err := add(p, MajorUVM, uvm, -1); err != nil {
			return nil, err
		}
	}
	if inv.MIG {
		var caps []Node
		for p, n := range inv.Nodes {
			if strings.HasPrefix(p, DirCaps+"/") && n.Char {
				caps = append(caps, n)
			}
		}
		sort.Slice(caps, func(i, j int) bool {
			if caps[i].Minor != caps[j].Minor {
				return caps[i].Minor < caps[j].Minor
			}
			return caps[i].Path < caps[j].Path
		})
		capsMajor, ok := inv.Majors[MajorCaps]
		for _, n := range caps {
			if ok && n.Major != capsMajor {
				return nil, fmt.Errorf("required node %s on the host is %d:%d but /proc/devices gives %s major %d (stale node: recreate it): %w", n.Path, n.Major, n.Minor, MajorCaps, capsMajor, ErrMissingNode)
			}
			out = append(out, n)
		}
	}
	return out, nil
}
