package guest

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	pb "gpupass/proto/gpupass/v1"
)

// ParseCharMajors reads the "Character devices:" section of /proc/devices into name ->
// major (the first major of a name wins).
func ParseCharMajors(b []byte) map[string]uint32 {
	m := map[string]uint32{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	inChar := false
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "Character devices:":
			inChar = true
			continue
		case strings.HasSuffix(line, "devices:"):
			inChar = false
			continue
		case !inChar:
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		major, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			continue
		}
		if _, dup := m[f[1]]; !dup {
			m[f[1]] = uint32(major)
		}
	}
	return m
}

var (
	gpuNodeRE = regexp.MustCompile(`^nvidia([0-9]+)$`)
	capNodeRE = regexp.MustCompile(`^nvidia-cap([0-9]+)$`)
)

// Discover builds an expectation without a host agent: every /dev/nvidia* node found (and
// /dev/nvidia-caps/*), each expected with the major the driver registered in /proc/devices
// and the minor its name implies (nvidia<N>: N, nvidiactl: 255, nvidia-modeset: 254,
// nvidia-uvm: 0, nvidia-uvm-tools: 1, nvidia-cap<N>: N); a node the rules do not cover, or
// whose driver name /proc/devices lacks, is expected as found. The driver counts as loaded when /proc/driver/nvidia/version reads.
func (p Paths) Discover() *pb.Expectation {
	p = p.withDefaults()
	exp := &pb.Expectation{}
	if v, err := p.KernelVersion(); err == nil {
		exp.DriverLoaded = true
		exp.KernelDriverVersion = v
	}
	majors := map[string]uint32{}
	if b, err := readLimited(p.host(p.Proc+"/devices"), maxSmallFile); err == nil {
		majors = ParseCharMajors(b)
	}
	frontend, ok := majors["nvidia-frontend"]
	if !ok {
		frontend, ok = majors["nvidia"]
	}
	add := func(path string, major uint32, majorKnown bool, minor uint32, minorKnown bool) {
		var st unix.Stat_t
		if err := unix.Stat(p.host(filepath.Join(p.Dev, strings.TrimPrefix(path, "/dev/"))), &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFCHR {
			if !majorKnown || !minorKnown {
				// The driver did not register this name: nothing to hold the node against.
				major, minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
			}
		}
		exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: path, Major: major, Minor: minor})
	}
	uvm, uvmOK := majors["nvidia-uvm"]
	caps, capsOK := majors["nvidia-caps"]
	for _, name := range listDir(p.host(p.Dev)) {
		path := "/dev/" + name
		switch m := gpuNodeRE.FindStringSubmatch(name); {
		case m != nil:
			minor, _ := strconv.ParseUint(m[1], 10, 32)
			add(path, frontend, ok, uint32(minor), true)
		case name == "nvidiactl":
			add(path, frontend, ok, 255, true)
		case name == "nvidia-modeset":
			add(path, frontend, ok, 254, true)
		case name == "nvidia-uvm":
			add(path, uvm, uvmOK, 0, true)
		case name == "nvidia-uvm-tools":
			add(path, uvm, uvmOK, 1, true)
		case name == "nvidia-caps":
			for _, c := range listDir(p.host(filepath.Join(p.Dev, "nvidia-caps"))) {
				if m := capNodeRE.FindStringSubmatch(c); m != nil {
					minor, _ := strconv.ParseUint(m[1], 10, 32)
					add(path+"/"+c, caps, capsOK, uint32(minor), true)
				}
			}
		case strings.HasPrefix(name, "nvidia"):
			add(path, 0, false, 0, false)
		}
	}
	if len(exp.Devices) > MaxDevices {
		exp.Devices = exp.Devices[:MaxDevices]
	}
	return exp
}

// listDir returns the sorted names in dir (none when it cannot be read).
func listDir(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}
