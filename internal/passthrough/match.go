package passthrough

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"gpupass/internal/devrule"
	"gpupass/internal/gpu"
	"gpupass/internal/pveconf"
)

// Keys of the managed entries.
const (
	KeyAllow   = "lxc.cgroup2.devices.allow"
	KeyAllowV1 = "lxc.cgroup.devices.allow"
	KeyMount   = "lxc.mount.entry"
	// KeyHookMount carries the driver hook (Desired.DriverHook). LXC runs it in the
	// container's mount namespace before pivot_root (lxc-6.0.5:src/lxc/conf.c:3931,
	// run_lxc_hooks "mount"), as "exec <value> <name> lxc mount" through a shell
	// (lxc-6.0.5:src/lxc/utils.c:622); PVE accepts the raw key
	// (pve-container:src/PVE/LXC/Config.pm:768, $valid_lxc_conf_keys).
	KeyHookMount = "lxc.hook.mount"
	// GuestMountTarget is where the guest socket directory appears in the container: under
	// /dev, which LXC mounts (lxc.autodev tmpfs) before the mount entries and which no init
	// mounts over (systemd, OpenRC and busybox init all do mount a tmpfs on /run), as
	// Incus does with /dev/incus.
	GuestMountTarget = "dev/gpupass"
	// LegacyGuestMountTarget is where gpupass mounted it before: systemd's tmpfs on /run
	// hides it. An entry with this target is the managed guest mount, replaced by one at
	// GuestMountTarget.
	LegacyGuestMountTarget = "run/gpupass"
)

var devKey = regexp.MustCompile(`^dev[0-9]+$`)

// Matcher recognises managed entries. The rules (DESIGN.md, "Who owns which lines"):
//
//   - a mount entry whose source or target is an NVIDIA node (/dev/nvidia*,
//     /dev/nvidia-caps/*, also under a test host root), with or without "optional";
//   - a devN entry for such a path;
//   - the guest socket mount (target dev/gpupass, or run/gpupass as written before);
//   - the driver hook (an lxc.hook.mount running "gpupass-host-agent driver hook");
//   - a cgroup allow rule (cgroup2 or the v1 key) for a char major that /proc/devices
//     gives an NVIDIA name now, or that a host /dev/nvidia* node has;
//   - a stale allow rule: a char rule with one major that is NVIDIA's registered 195 or
//     in the kernel's dynamic ranges (234-254, 384-511: where nvidia-uvm and nvidia-caps
//     land, e.g. 234-243 and 506-511 in the field) and that sits in the same unbroken
//     run of entry lines as a managed entry, unless another device this config passes
//     (a non-NVIDIA mount entry or devN, looked up on the host) has that major.
//
// Everything else is never touched: other devices' rules (even for dynamic majors away
// from the GPU block), comments (a commented-out mount entry stays), and every
// [section].
type Matcher struct {
	inv    *gpu.Inventory
	majors map[uint32]bool
	// StatMajor gives the char major of a host path (nil: os.Stat under the inventory's
	// root); used to keep allow rules that belong to other passed-through devices.
	StatMajor func(path string) (uint32, bool)
}

// NewMatcher builds a Matcher for a host; inv may be nil (no driver: only path-based
// entries, the guest mount and adjacent stale rules are recognised).
func NewMatcher(inv *gpu.Inventory) *Matcher {
	m := &Matcher{inv: inv, majors: map[uint32]bool{}}
	if inv != nil {
		for _, maj := range inv.Majors {
			m.majors[maj] = true
		}
		for _, n := range inv.Nodes {
			if n.Char {
				m.majors[n.Major] = true
			}
		}
	}
	return m
}

// IsManaged reports whether an entry is managed on its own merits (see Matcher); the
// stale-rule adjacency needs the whole config, see ManagedLines.
func (m *Matcher) IsManaged(key, value string) bool {
	switch {
	case key == KeyMount:
		src, dst, ok := mountPaths(value)
		return ok && (isNvidiaSource(src) || isNvidiaTarget(dst) || dst == GuestMountTarget || dst == LegacyGuestMountTarget)
	case key == KeyAllow || key == KeyAllowV1:
		r, err := devrule.Parse(value)
		return err == nil && r.Type == 'c' && r.Major != devrule.Wildcard && m.majors[uint32(r.Major)]
	case devKey.MatchString(key):
		return isNvidiaTarget(strings.TrimPrefix(devPath(value), "/"))
	case key == KeyHookMount:
		return IsDriverHook(value)
	}
	return false
}

// IsDriverHook reports whether a hook command line is the host agent's driver hook:
// "<dir>/gpupass-host-agent driver hook [flags]". Other mount hooks are never touched.
func IsDriverHook(value string) bool {
	f := strings.Fields(value)
	return len(f) >= 3 && strings.HasPrefix(filepath.Base(f[0]), "gpupass-host-agent") && f[1] == "driver" && f[2] == "hook"
}

func (m *Matcher) staleCandidate(key, value string, keep map[uint32]bool) bool {
	if key != KeyAllow && key != KeyAllowV1 {
		return false
	}
	r, err := devrule.Parse(value)
	if err != nil || r.Type != 'c' || r.Major == devrule.Wildcard {
		return false
	}
	maj := r.Major
	inRange := maj == 195 || (maj >= 234 && maj <= 254) || (maj >= 384 && maj <= 511)
	return inRange && !keep[uint32(maj)]
}

// ManagedLines returns the line numbers (pveconf.Line.Num) of the main section's managed
// entries, stale rules included.
func (m *Matcher) ManagedLines(cfg *pveconf.Config) map[int]bool {
	main := cfg.Main()
	out := map[int]bool{}
	definite := make([]bool, len(main))
	for i, l := range main {
		if l.Kind == pveconf.KeyValue && m.IsManaged(l.Key, l.Value) {
			definite[i] = true
			out[l.Num] = true
		}
	}
	keep := m.otherDeviceMajors(main, definite)
	// Runs of consecutive entries that are managed or stale candidates.
	for i := 0; i < len(main); {
		j := i
		hasDefinite := false
		for j < len(main) && main[j].Kind == pveconf.KeyValue && (definite[j] || m.staleCandidate(main[j].Key, main[j].Value, keep)) {
			hasDefinite = hasDefinite || definite[j]
			j++
		}
		if hasDefinite {
			for k := i; k < j; k++ {
				out[main[k].Num] = true
			}
		}
		if j == i {
			j++
		}
		i = j
	}
	return out
}

// otherDeviceMajors are the majors of devices the config passes that are not managed.
func (m *Matcher) otherDeviceMajors(main []pveconf.Line, definite []bool) map[uint32]bool {
	keep := map[uint32]bool{}
	stat := m.StatMajor
	if stat == nil {
		stat = m.statHost
	}
	for i, l := range main {
		if l.Kind != pveconf.KeyValue || definite[i] {
			continue
		}
		var p string
		switch {
		case l.Key == KeyMount:
			src, _, ok := mountPaths(l.Value)
			if !ok || !strings.HasPrefix(src, "/dev/") {
				continue
			}
			p = src
		case devKey.MatchString(l.Key):
			p = devPath(l.Value)
		default:
			continue
		}
		if maj, ok := stat(p); ok {
			keep[maj] = true
		}
	}
	return keep
}

func (m *Matcher) statHost(p string) (uint32, bool) {
	root := "/"
	if m.inv != nil && m.inv.Root != "" {
		root = m.inv.Root
	}
	fi, err := os.Stat(filepath.Join(root, p))
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return unix.Major(st.Rdev), true
}

// mountPaths gives the source and target (without a leading '/') of an lxc.mount.entry.
func mountPaths(value string) (src, dst string, ok bool) {
	f := strings.Fields(value)
	if len(f) < 2 {
		return "", "", false
	}
	return filepath.Clean(f[0]), strings.Trim(filepath.Clean(f[1]), "/"), true
}

// devPath is the path of a devN value, a PVE property string whose default key is path
// (pve-container:src/PVE/LXC/Config.pm:1080-1087, $dev_desc): "/dev/x,mode=0666",
// "path=/dev/x,uid=0" or "mode=0666,path=/dev/x" (the keys in any order). "" when it names
// no path.
func devPath(value string) string {
	for _, item := range strings.Split(strings.TrimSpace(value), ",") {
		item = strings.TrimSpace(item)
		k, v, hasKey := strings.Cut(item, "=")
		switch {
		case !hasKey && item != "":
			return filepath.Clean(item)
		case hasKey && strings.TrimSpace(k) == "path":
			return filepath.Clean(strings.TrimSpace(v))
		}
	}
	return ""
}

// isNvidiaTarget: "dev/nvidia0", "dev/nvidiactl", "dev/nvidia-caps/nvidia-cap1", ...
func isNvidiaTarget(p string) bool {
	return strings.HasPrefix(p, "dev/nvidia")
}

// isNvidiaSource: /dev/nvidia*, also under a host root (/srv/sim/dev/nvidia0).
func isNvidiaSource(p string) bool {
	return strings.HasPrefix(p, "/dev/nvidia") || strings.Contains(p, "/dev/nvidia")
}

// ManagedSet is the config's managed entries in a format-independent, normalised form:
// "key=value" with the value's whitespace collapsed, devN keys as "dev", sorted. It
// compares a PVE config with the runtime's LXC-format copy (/var/lib/lxc/<id>/config).
func (m *Matcher) ManagedSet(cfg *pveconf.Config) []string {
	lines := m.ManagedLines(cfg)
	var out []string
	for _, l := range cfg.Main() {
		if lines[l.Num] {
			out = append(out, normEntry(l.Key, l.Value))
		}
	}
	sort.Strings(out)
	return out
}

// EntrySet is (*Matcher).ManagedSet's form of rendered entries.
func EntrySet(entries []pveconf.Entry) []string {
	if len(entries) == 0 {
		return nil
	}
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = normEntry(e.Key, e.Value)
	}
	sort.Strings(out)
	return out
}

func normEntry(key, value string) string {
	if devKey.MatchString(key) {
		key = "dev"
	}
	return key + "=" + strings.Join(strings.Fields(value), " ")
}

var minorRe = regexp.MustCompile(`(?:^|/)dev/nvidia([0-9]+)$`)

// AssignedMinors lists, sorted and without repeats, the GPU minors the config's main
// section passes (mount entries and devN entries for /dev/nvidia<N>).
func AssignedMinors(cfg *pveconf.Config) []uint32 {
	seen := map[uint32]bool{}
	var out []uint32
	for _, l := range cfg.Main() {
		if l.Kind != pveconf.KeyValue {
			continue
		}
		var mm []string
		switch {
		case l.Key == KeyMount:
			// The source decides which device it is; the target names it inside.
			src, dst, ok := mountPaths(l.Value)
			if !ok {
				continue
			}
			if mm = minorRe.FindStringSubmatch(src); mm == nil {
				mm = minorRe.FindStringSubmatch(dst)
			}
		case devKey.MatchString(l.Key):
			mm = minorRe.FindStringSubmatch(devPath(l.Value))
		}
		if mm == nil {
			continue
		}
		n, err := strconv.ParseUint(mm[1], 10, 32)
		if err != nil || seen[uint32(n)] {
			continue
		}
		seen[uint32(n)] = true
		out = append(out, uint32(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// AssignedGPUs maps AssignedMinors to the host's GPUs; minors no GPU has are returned
// apart (a clone from another host, or a GPU that went away).
func AssignedGPUs(cfg *pveconf.Config, inv *gpu.Inventory) (gpus []gpu.GPU, unknown []uint32) {
	for _, minor := range AssignedMinors(cfg) {
		if g, ok := inv.GPUByMinor(minor); ok {
			gpus = append(gpus, g)
		} else {
			unknown = append(unknown, minor)
		}
	}
	return gpus, unknown
}
