// Package passthrough turns desired GPUs plus host discovery into the managed entries of
// a container config, and plans the edit: it recognises every managed entry already
// present (stale majors, "optional" variants, duplicates, other tools' entries for
// /dev/nvidia* paths, GPUs a clone inherited; see Matcher), removes them from the main
// section and renders the whole managed set from desired state where the first of them
// was. Everything else stays byte-identical, sections included; applying a plan twice
// changes nothing.
//
// Two styles: Raw renders "lxc.cgroup2.devices.allow: c MAJ:MIN rwm" and
// "lxc.mount.entry: SRC dev/X none bind,create=file 0 0" (never "optional": a required
// node that is missing must fail the start) for each required node; Dev renders PVE 8.1+
// "devN: /dev/X,mode=0666" entries with free N (PVE then checks the node at start and
// emits the cgroup rule). Dev style is for PVE hosts whose root is "/".
package passthrough

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"gpupass/internal/devrule"
	"gpupass/internal/gpu"
	"gpupass/internal/pveconf"
)

// Style is how the managed entries are written.
type Style int

const (
	// StyleRaw writes lxc.cgroup2.devices.allow and lxc.mount.entry keys.
	StyleRaw Style = iota
	// StyleDev writes PVE devN entries.
	StyleDev
)

// Short names of the styles.
const (
	Raw = StyleRaw
	Dev = StyleDev
)

func (s Style) String() string {
	if s == Dev {
		return "dev"
	}
	return "raw"
}

// ParseStyle parses "raw" or "dev".
func ParseStyle(s string) (Style, error) {
	switch s {
	case "raw", "":
		return Raw, nil
	case "dev":
		return Dev, nil
	}
	return Raw, fmt.Errorf("parse style %q: want raw or dev", s)
}

// maxDevN is PVE's number of devN slots (dev0..dev255).
const maxDevN = 256

// ErrInvalid is wrapped by errors about the desired state itself.
var ErrInvalid = errors.New("invalid desired state")

// Desired is what the container should get.
type Desired struct {
	// GPUs are selectors (index, UUID or PCI bus id); empty means none.
	GPUs  []string
	Style Style
	// GuestSocketDir is the host directory for this container, bind-mounted at
	// /dev/gpupass inside (GuestMountTarget); "" renders no guest mount (and removes an
	// existing one, at either target).
	GuestSocketDir string
	// Label names the config in the diff (default "config").
	Label string
	// MIGCaps passes the host's /dev/nvidia-caps/* nodes (MIG config and monitor) too.
	// Without it whole GPUs get none, whether or not they exist on the host (as NVIDIA's
	// container toolkit does): they let a container reconfigure or watch MIG. A plan
	// without it removes caps entries a config already has.
	MIGCaps bool
	// DriverHook, when set, is the command line of the host agent's driver hook
	// ("/usr/bin/gpupass-host-agent driver hook"): the plan renders it as an
	// lxc.hook.mount entry, which provides the host's userspace driver at every start
	// (fleet.yaml `driver: host`; package hostdriver). "" (driver: own) renders none and
	// removes an existing one.
	DriverHook string
}

// Op is the kind of a Change.
type Op int

const (
	// OpAdd is a line the plan adds.
	OpAdd Op = iota + 1
	// OpRemove is a line the plan removes.
	OpRemove
)

// Short names of the ops.
const (
	Add    = OpAdd
	Remove = OpRemove
)

func (o Op) String() string {
	if o == Add {
		return "add"
	}
	return "remove"
}

// Change is one added or removed line; LineNumber is in the new config for Add and in
// the old one for Remove.
type Change struct {
	Op         Op
	Line       string
	LineNumber int
}

// ExpectedDevice is a node the container must have, at Path inside it.
type ExpectedDevice struct {
	Path         string
	Major, Minor uint32
}

// Result is a plan.
type Result struct {
	// Config is the edited copy; New its bytes, Old the input's.
	Config   *pveconf.Config
	Old, New []byte
	Changes  []Change
	// Diff is a unified diff of Old and New ("" when unchanged).
	Diff string
	// Entries are the rendered managed entries; Set is their EntrySet form.
	Entries []pveconf.Entry
	Set     []string
	// Devices the container will have, and the GPUs they belong to.
	Devices []ExpectedDevice
	GPUs    []gpu.GPU
	Changed bool
	// Warnings are things the plan cannot fix but a person should know.
	Warnings []string
	// DriverHost is true when the plan renders the driver hook (Desired.DriverHook).
	DriverHost bool
}

// Plan renders the desired managed entries and edits a copy of cfg (which it does not
// modify). Unknown GPUs (gpu.ErrUnknownGPU), missing or stale host nodes
// (gpu.ErrMissingNode) and a driver that is not loaded (gpu.ErrNoDriver, inv nil with
// GPUs desired) are errors. inv may be nil when no GPU is desired.
func Plan(cfg *pveconf.Config, inv *gpu.Inventory, d Desired) (*Result, error) {
	if d.GuestSocketDir != "" && (!strings.HasPrefix(d.GuestSocketDir, "/") || strings.ContainsAny(d.GuestSocketDir, " \t\n\\")) {
		return nil, fmt.Errorf("guest socket dir %q must be an absolute path without whitespace or backslashes: %w", d.GuestSocketDir, ErrInvalid)
	}
	if d.Style == Dev && cfg.Format == pveconf.LXC && len(d.GPUs) > 0 {
		// Only PVE turns devN keys into device nodes and cgroup rules; plain LXC ignores
		// them, and the container would start without its GPUs.
		return nil, fmt.Errorf("style dev writes PVE devN entries, which plain LXC ignores (the container would start without its GPUs): use style raw for an LXC config: %w", ErrInvalid)
	}
	if len(d.GPUs) > 0 && inv == nil {
		return nil, fmt.Errorf("GPUs %s desired but no driver inventory: %w", strings.Join(d.GPUs, ","), gpu.ErrNoDriver)
	}
	res := &Result{Old: cfg.Bytes(), DriverHost: d.DriverHook != ""}
	var nodes []gpu.Node
	if len(d.GPUs) > 0 {
		gpus, err := inv.ResolveAll(d.GPUs)
		if err != nil {
			return nil, err
		}
		if nodes, err = inv.RequiredNodes(gpus); err != nil {
			return nil, err
		}
		if !d.MIGCaps {
			nodes = withoutCaps(nodes)
		}
		res.GPUs = gpus
	}
	m := NewMatcher(inv)
	managed := m.ManagedLines(cfg)
	var err error
	if res.Entries, err = render(cfg, inv, nodes, d, managed); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		res.Devices = append(res.Devices, ExpectedDevice{Path: n.Path, Major: n.Major, Minor: n.Minor})
	}
	res.Set = EntrySet(res.Entries)
	if sameLines(cfg, managed, res.Entries) {
		// The managed lines are already exactly the desired ones, in another order: PVE
		// rewrites a config with its keys sorted (dev10 before dev2) and every raw lxc.*
		// line last (pve-container:src/PVE/LXC/Config.pm:1254-1280, write_pct_config). Order
		// means nothing to LXC or PVE here, so there is nothing to change.
		res.Config = cfg.Clone()
		res.New = res.Old
		res.Warnings = warnings(cfg, m)
		return res, nil
	}
	// Rendered entries can land next to a stale-looking rule that was alone before, which
	// a second plan would then claim: grow the managed set to a fixpoint so that applying
	// twice changes nothing.
	for {
		res.Config = cfg.Clone()
		res.Config.ReplaceManaged(func(l pveconf.Line) bool { return managed[l.Num] }, res.Entries)
		grown := false
		for num := range m.ManagedLines(res.Config) {
			if num != 0 && !managed[num] {
				managed[num], grown = true, true
			}
		}
		if !grown {
			break
		}
	}
	res.New = res.Config.Bytes()
	res.Changed = string(res.New) != string(res.Old)
	if res.Changed {
		edits := pveconf.Edits(res.Old, res.New)
		for _, e := range edits {
			switch e.Op {
			case pveconf.Delete:
				res.Changes = append(res.Changes, Change{Op: Remove, Line: e.Text, LineNumber: e.OldLine})
			case pveconf.Insert:
				res.Changes = append(res.Changes, Change{Op: Add, Line: e.Text, LineNumber: e.NewLine})
			}
		}
		label := d.Label
		if label == "" {
			label = "config"
		}
		res.Diff = pveconf.UnifiedEdits(label, label+" (planned)", edits)
	}
	res.Warnings = warnings(cfg, m)
	return res, nil
}

// withoutCaps drops the /dev/nvidia-caps/* nodes.
func withoutCaps(nodes []gpu.Node) []gpu.Node {
	out := nodes[:0:0]
	for _, n := range nodes {
		if !strings.HasPrefix(n.Path, gpu.DirCaps+"/") {
			out = append(out, n)
		}
	}
	return out
}

// sameLines reports whether the main section's managed lines are, as a multiset of key
// and value, the entries.
func sameLines(cfg *pveconf.Config, managed map[int]bool, entries []pveconf.Entry) bool {
	var have, want []string
	for _, l := range cfg.Main() {
		if l.Kind == pveconf.KeyValue && managed[l.Num] {
			have = append(have, l.Key+"\x00"+l.Value)
		}
	}
	for _, e := range entries {
		want = append(want, e.Key+"\x00"+strings.TrimSpace(e.Value))
	}
	sort.Strings(have)
	sort.Strings(want)
	return slices.Equal(have, want)
}

func render(cfg *pveconf.Config, inv *gpu.Inventory, nodes []gpu.Node, d Desired, managed map[int]bool) ([]pveconf.Entry, error) {
	var out []pveconf.Entry
	switch d.Style {
	case Raw:
		for _, n := range nodes {
			out = append(out, pveconf.Entry{Key: KeyAllow, Value: devrule.Char(n.Major, n.Minor, "rwm").String()})
		}
		for _, n := range nodes {
			src := inv.HostPath(n.Path)
			if strings.ContainsAny(src, " \t\\") {
				return nil, fmt.Errorf("host path %q has whitespace; a mount entry cannot carry it: %w", src, ErrInvalid)
			}
			out = append(out, pveconf.Entry{Key: KeyMount, Value: src + " " + strings.TrimPrefix(n.Path, "/") + " none bind,create=file 0 0"})
		}
	case Dev:
		devs, err := renderDev(cfg, nodes, managed)
		if err != nil {
			return nil, err
		}
		out = append(out, devs...)
	default:
		return nil, fmt.Errorf("unknown style %d: %w", d.Style, ErrInvalid)
	}
	if d.GuestSocketDir != "" {
		out = append(out, pveconf.Entry{Key: KeyMount, Value: d.GuestSocketDir + " " + GuestMountTarget + " none bind,create=dir 0 0"})
	}
	if d.DriverHook != "" {
		if !IsDriverHook(d.DriverHook) {
			return nil, fmt.Errorf("driver hook %q: want \"<path>/gpupass-host-agent driver hook [flags]\": %w", d.DriverHook, ErrInvalid)
		}
		out = append(out, pveconf.Entry{Key: KeyHookMount, Value: d.DriverHook})
	}
	return out, nil
}

// renderDev gives each node a devN entry: an existing managed devN for the same path
// keeps its N (whatever N is: dev10 and up too) and gets the managed value (its old
// options, e.g. deny-write=1, are replaced: the host agent owns the GPU's entries); others
// get the lowest N that no kept devN (main section) uses and that [pve:pending] neither
// sets nor deletes.
func renderDev(cfg *pveconf.Config, nodes []gpu.Node, managed map[int]bool) ([]pveconf.Entry, error) {
	used := map[int]bool{}
	type prev struct {
		n     int
		value string
	}
	existing := map[string]prev{}
	for _, s := range cfg.Sections() {
		if s.Name != "" && s.Name != pveconf.PendingSection {
			continue
		}
		for _, l := range s.Lines {
			if s.Name == pveconf.PendingSection && l.Kind == pveconf.KeyValue && l.Key == "delete" {
				// A pending "delete: devN" would remove a slot we fill now.
				for _, k := range strings.Split(l.Value, ",") {
					if k = strings.TrimSpace(k); devKey.MatchString(k) {
						n, _ := strconv.Atoi(strings.TrimPrefix(k, "dev"))
						used[n] = true
					}
				}
				continue
			}
			if l.Kind != pveconf.KeyValue || !devKey.MatchString(l.Key) {
				continue
			}
			n, _ := strconv.Atoi(strings.TrimPrefix(l.Key, "dev"))
			if s.Name == "" && managed[l.Num] {
				p := devPath(l.Value)
				if _, dup := existing[p]; !dup {
					existing[p] = prev{n, l.Value}
				}
				continue
			}
			used[n] = true
		}
	}
	var out []pveconf.Entry
	var fresh []int
	for i, nd := range nodes {
		value := fmt.Sprintf("%s,mode=%04o", nd.Path, uint32(nd.Mode.Perm()))
		if p, ok := existing[nd.Path]; ok && !used[p.n] {
			used[p.n] = true
			out = append(out, pveconf.Entry{Key: "dev" + strconv.Itoa(p.n), Value: value})
			continue
		}
		out = append(out, pveconf.Entry{Value: value})
		fresh = append(fresh, i)
	}
	next := 0
	for _, i := range fresh {
		for next < maxDevN && used[next] {
			next++
		}
		if next >= maxDevN {
			return nil, fmt.Errorf("no free devN slot (dev0..dev%d all used): %w", maxDevN-1, ErrInvalid)
		}
		used[next] = true
		out[i].Key = "dev" + strconv.Itoa(next)
	}
	return out, nil
}

func warnings(cfg *pveconf.Config, m *Matcher) []string {
	var out []string
	for _, s := range cfg.Sections() {
		if s.Name != "pve:pending" {
			continue
		}
		var lines []string
		for _, l := range s.Lines {
			if l.Kind != pveconf.KeyValue {
				continue
			}
			if m.IsManaged(l.Key, l.Value) {
				lines = append(lines, strconv.Itoa(l.Num))
			}
			if l.Key == "delete" {
				for _, k := range strings.Split(l.Value, ",") {
					if devKey.MatchString(strings.TrimSpace(k)) {
						lines = append(lines, strconv.Itoa(l.Num))
						break
					}
				}
			}
		}
		if len(lines) > 0 {
			sort.Strings(lines)
			out = append(out, fmt.Sprintf("the [pve:pending] section (line %s) holds device changes that PVE applies at the next start; review them with `pct pending`", strings.Join(lines, ", ")))
		}
	}
	return out
}
