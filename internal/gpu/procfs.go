package gpu

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is the parsed /proc/driver/nvidia/version.
type Version struct {
	// Version is "580.159.04".
	Version string
	// Line is the "NVRM version:" line.
	Line string
	// Open is true for "NVIDIA UNIX Open Kernel Module".
	Open bool
}

// ParseVersion parses /proc/driver/nvidia/version, whose first line reads e.g.
// "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ..."
// or "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 ...".
func ParseVersion(b []byte) (Version, error) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "NVRM version:")
		if !ok {
			continue
		}
		v := Version{Line: strings.TrimSpace(line), Open: strings.Contains(rest, "Open Kernel Module")}
		for _, f := range strings.Fields(rest) {
			if isVersion(f) {
				v.Version = f
				return v, nil
			}
		}
		return Version{}, fmt.Errorf("no version number in %q", v.Line)
	}
	return Version{}, fmt.Errorf("no \"NVRM version:\" line")
}

// isVersion reports whether s looks like 580.159.04: dot-separated decimal fields, two or more.
func isVersion(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 9 {
			return false
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// ParseDevices parses /proc/devices and returns the char majors with their names.
// Block devices are ignored.
func ParseDevices(b []byte) (map[uint32][]string, error) {
	out := map[uint32][]string{}
	section := ""
	for i, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		switch {
		case t == "":
			continue
		case t == "Character devices:":
			section = "char"
			continue
		case t == "Block devices:":
			section = "block"
			continue
		}
		num, name, ok := strings.Cut(t, " ")
		name = strings.TrimSpace(name)
		if !ok || name == "" {
			return nil, fmt.Errorf("line %d: %q is not \"MAJOR NAME\"", i+1, t)
		}
		major, err := strconv.ParseUint(num, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("line %d: %q: major %q is not a number", i+1, t, num)
		}
		switch section {
		case "char":
			out[uint32(major)] = append(out[uint32(major)], name)
		case "block":
		default:
			return nil, fmt.Errorf("line %d: %q before \"Character devices:\"", i+1, t)
		}
	}
	if section == "" {
		return nil, fmt.Errorf("no \"Character devices:\" section")
	}
	return out, nil
}

// ParseInformation parses /proc/driver/nvidia/gpus/<bus>/information ("Key: \t value"
// lines). Index is left 0; Discover numbers GPUs in bus order.
func ParseInformation(b []byte) (GPU, error) {
	var g GPU
	haveMinor := false
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "Model":
			g.Model = v
		case "GPU UUID":
			// An uninitialised GPU may show "GPU-????????-...": unknown.
			if !strings.Contains(v, "?") {
				g.UUID = v
			}
		case "Bus Location":
			if g.BusID = NormalizeBusID(v); g.BusID == "" {
				return GPU{}, fmt.Errorf("\"Bus Location\" %q is not a PCI address", v)
			}
		case "Device Minor":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return GPU{}, fmt.Errorf("\"Device Minor\" %q is not a number", v)
			}
			g.Minor, haveMinor = uint32(n), true
		case "GPU Excluded":
			g.Excluded = strings.EqualFold(v, "yes")
		}
	}
	if !haveMinor {
		return GPU{}, fmt.Errorf("no \"Device Minor\" line")
	}
	return g, nil
}

// NormalizeBusID turns "0000:01:00.0", "00000000:01:00.0" (nvidia-smi) or "01:00.0"
// (any case) into "0000:01:00.0"; it returns "" for anything else.
func NormalizeBusID(s string) string {
	s = strings.ToLower(strings.TrimSpace(s))
	domain := "0000"
	if strings.Count(s, ":") == 2 {
		d, rest, _ := strings.Cut(s, ":")
		n, err := strconv.ParseUint(d, 16, 32)
		if err != nil || len(d) > 8 || n > 0xffff {
			return ""
		}
		domain, s = fmt.Sprintf("%04x", n), rest
	}
	bus, rest, ok := strings.Cut(s, ":")
	if !ok || len(bus) != 2 || !isHex(bus) {
		return ""
	}
	dev, fn, ok := strings.Cut(rest, ".")
	if !ok || len(dev) != 2 || !isHex(dev) || len(fn) != 1 || fn[0] < '0' || fn[0] > '7' {
		return ""
	}
	return domain + ":" + bus + ":" + dev + "." + fn
}

func isHex(s string) bool {
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
