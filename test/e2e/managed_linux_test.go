package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
)

// hostMajors reads the NVIDIA majors a host's /proc/devices gives now.
func (h *host) hostMajors(t testing.TB) (nvidia, uvm uint32) {
	t.Helper()
	inv, err := gpu.Discover(h.root)
	if err != nil {
		t.Fatalf("e2e: discover %s: %v", h.root, err)
	}
	return inv.Majors[gpu.MajorNvidia], inv.Majors[gpu.MajorUVM]
}

// hostNode stats a node of the simulated host.
func (h *host) hostNode(t testing.TB, p string) (major, minor uint32, ok bool) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(h.root, p), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		return 0, 0, false
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), true
}

// rendered is the managed set gpupass writes (raw style, lxc format) into ct's config
// for the given GPU minors on h, computed here from the host's nodes, independently of
// gpupass: one allow rule per node (major:minor as the host has it), one non-optional
// bind mount per node, and the guest socket directory mount.
func (ct *container) rendered(t testing.TB, minors ...int) []string {
	t.Helper()
	h := ct.h
	nodes := []string{}
	for _, m := range minors {
		nodes = append(nodes, fmt.Sprintf("/dev/nvidia%d", m))
	}
	nodes = append(nodes, gpu.PathCtl, gpu.PathUVM, gpu.PathUVMTools)
	var rules, mounts []string
	for _, n := range nodes {
		maj, min, ok := h.hostNode(t, n)
		if !ok {
			t.Fatalf("e2e: host %s has no node %s", h.name, n)
		}
		rules = append(rules, fmt.Sprintf("lxc.cgroup2.devices.allow = c %d:%d rwm", maj, min))
		mounts = append(mounts, fmt.Sprintf("lxc.mount.entry = %s %s none bind,create=file 0 0", filepath.Join(h.root, n), strings.TrimPrefix(n, "/")))
	}
	if len(minors) == 0 {
		rules, mounts = nil, nil
	}
	out := append(rules, mounts...)
	return append(out, fmt.Sprintf("lxc.mount.entry = %s dev/gpupass none bind,create=dir 0 0", filepath.Join(h.guestDir, ct.name)))
}

// assertManaged checks that ct's config holds exactly the rendered managed set for the
// minors, each line once, no other GPU or guest-socket line, no "optional", and the
// other lines given (an admin's) exactly once each.
func (ct *container) assertManaged(t testing.TB, minors []int, others ...string) {
	t.Helper()
	cfg := ct.readConfig()
	want := ct.rendered(t, minors...)
	wantSet := map[string]bool{}
	for _, l := range want {
		wantSet[l] = true
		if n := countLines(cfg, l); n != 1 {
			t.Errorf("%s: managed line %q appears %d times, want once", ct.name, l, n)
		}
	}
	nv, uvm := ct.h.hostMajors(t)
	for _, l := range strings.Split(cfg, "\n") {
		gpuish := strings.Contains(l, "nvidia") || strings.Contains(l, "/gpupass none") ||
			strings.Contains(l, fmt.Sprintf(" c %d:", nv)) || strings.Contains(l, fmt.Sprintf(" c %d:", uvm))
		if gpuish && !wantSet[l] {
			t.Errorf("%s: unexpected GPU line %q (stale, duplicate or not desired)", ct.name, l)
		}
		if strings.Contains(l, "optional") {
			t.Errorf("%s: %q: required nodes must never be optional", ct.name, l)
		}
	}
	for _, o := range others {
		if n := countLines(cfg, o); n != 1 {
			t.Errorf("%s: line %q appears %d times, want once (nothing lost, nothing duplicated)", ct.name, o, n)
		}
	}
	if t.Failed() {
		t.Logf("%s config:\n%s", ct.name, cfg)
	}
}

// ensureGuestDir creates the guest socket directory a hand-written config mounts (the
// agent creates its socket in it later).
func (ct *container) ensureGuestDir(t testing.TB) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(ct.h.guestDir, ct.name), 0o755); err != nil {
		t.Fatal(err)
	}
}
