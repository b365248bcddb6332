package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
)

// The lxc runtime's config format has no sections, so the rows that are about the
// Proxmox config format run `gpupass-host-agent conf plan/apply` (the same planner and
// writer the daemon uses) on PVE-format files of a simulated host with NVIDIA's real
// majors (nvidia 195, nvidia-uvm 511): /etc/pve/lxc/<id>.conf under the host root, locked
// with /run/lock/lxc/pve-config-<id>.lock there.

// pveHost is a simulated host root for conf-tool scenarios.
type pveHost struct {
	f    *fabric
	root string
}

func (f *fabric) newPVEHost(t *testing.T, opts gpu.SimOptions) *pveHost {
	t.Helper()
	f.mu.Lock()
	f.hosts++
	n := f.hosts
	f.mu.Unlock()
	root := filepath.Join(f.dir, fmt.Sprintf("pve%d", n), "root")
	if err := gpu.WriteSimulatedHost(root, opts); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc/pve/lxc"), 0o755); err != nil {
		t.Fatal(err)
	}
	return &pveHost{f: f, root: root}
}

// write puts a PVE config for id and returns its path.
func (p *pveHost) write(t testing.TB, id, content string) string {
	t.Helper()
	path := filepath.Join(p.root, "etc/pve/lxc", id+".conf")
	if err := os.WriteFile(path, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	return path
}

// conf runs `gpupass-host-agent conf <sub> --conf path --host-root root args...`.
func (p *pveHost) conf(t testing.TB, sub, path string, args ...string) cmdResult {
	t.Helper()
	argv := append([]string{p.f.bin.HostAgent, "conf", sub, "--conf", path, "--host-root", p.root}, args...)
	if sub == "apply" {
		argv = append(argv, "--state-dir", filepath.Join(filepath.Dir(p.root), "state"))
	}
	res, err := run(context.Background(), 30*time.Second, nil, argv...)
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	return res
}

func readFile(t testing.TB, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sectionsFrom returns the text from the first "[" section header on.
func sectionsFrom(s string) string {
	if i := strings.Index(s, "\n["); i >= 0 {
		return s[i+1:]
	}
	return ""
}

// mainSection returns the text before the first section header.
func mainSection(s string) string {
	if i := strings.Index(s, "\n["); i >= 0 {
		return s[:i+1]
	}
	return s
}

func countLines(s, line string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// renderedRaw195 is what gpupass renders, raw style, for GPU minor m on the real-major
// simulated host (nvidia 195, nvidia-uvm 511), in its order.
func renderedRaw195(root string, minors ...int) []string {
	var out []string
	for _, m := range minors {
		out = append(out, "lxc.cgroup2.devices.allow: c 195:"+strconv.Itoa(m)+" rwm")
	}
	out = append(out, "lxc.cgroup2.devices.allow: c 195:255 rwm", "lxc.cgroup2.devices.allow: c 511:0 rwm", "lxc.cgroup2.devices.allow: c 511:1 rwm")
	for _, m := range minors {
		out = append(out, "lxc.mount.entry: "+root+"/dev/nvidia"+strconv.Itoa(m)+" dev/nvidia"+strconv.Itoa(m)+" none bind,create=file 0 0")
	}
	for _, n := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
		out = append(out, "lxc.mount.entry: "+root+"/dev/"+n+" dev/"+n+" none bind,create=file 0 0")
	}
	return out
}

const pveMain = `#GPU worker, managed by hand until now
arch: amd64
cores: 8
hostname: ai-901
memory: 16384
net0: name=eth0,bridge=vmbr0,ip=dhcp,type=veth
ostype: ubuntu
parent: pre-gpu
rootfs: local-lvm:vm-901-disk-0,size=64G
unprivileged: 0
`

// The bash orchestrator's `echo >>` put its lines at the end of the file, which is the
// last snapshot section; a whole-file grep then finds them "present".
const pveSnapshots = `
[pre-gpu]
arch: amd64
cores: 8
hostname: ai-901
memory: 16384
ostype: ubuntu
rootfs: local-lvm:vm-901-disk-0,size=64G
snaptime: 1700000000
unprivileged: 0
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file

[pve:pending]
memory: 32768
`

// Row 2: lines in a snapshot section never count, and gpupass never writes into one.
func testSnapshotSection(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true})
	path := p.write(t, "901", pveMain+pveSnapshots)
	before := readFile(t, path)

	plan := p.conf(t, "plan", path, "--gpus", "0")
	if plan.Code != 2 {
		t.Fatalf("plan: exit %d, want 2 (the main section has no GPU lines, whatever the snapshot has)\n%s%s", plan.Code, plan.Stdout, plan.Stderr)
	}
	if ap := p.conf(t, "apply", path, "--gpus", "0"); ap.Code != 0 {
		t.Fatalf("apply: exit %d: %s", ap.Code, ap.Stderr)
	}
	after := readFile(t, path)
	if got, want := sectionsFrom(after), sectionsFrom(before); got != want {
		t.Errorf("snapshot and pending sections changed:\n--- got\n%s\n--- want\n%s", got, want)
	}
	main := mainSection(after)
	for _, l := range renderedRaw195(p.root, 0) {
		if countLines(main, l) != 1 {
			t.Errorf("main section has %q %d times, want once:\n%s", l, countLines(main, l), main)
		}
	}
	if !strings.HasPrefix(after, pveMain) {
		t.Errorf("the main section's own lines changed:\n%s", main)
	}
	if again := p.conf(t, "plan", path, "--gpus", "0"); again.Code != 0 {
		t.Errorf("plan after apply: exit %d, want 0:\n%s", again.Code, again.Stdout)
	}
	if got := countLines(after, "lxc.cgroup2.devices.allow: c 195:* rwm"); got != 1 {
		t.Errorf("the snapshot's own rule appears %d times, want once (untouched)", got)
	}
}

// Row 3: duplicate and conflicting GPU rules from two writers (195/243 vs 195/506/509,
// optional and non-optional mounts) are replaced by one rendered set; other devices'
// lines stay.
func testDuplicateRulesPVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true})
	const messy = `arch: amd64
hostname: ai-902
memory: 8192
rootfs: local-lvm:vm-902-disk-0,size=32G
lxc.cgroup2.devices.allow: c 10:200 rwm
lxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.cgroup2.devices.allow: c 243:* rwm
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file
lxc.mount.entry: /dev/nvidiactl dev/nvidiactl none bind,optional,create=file
lxc.mount.entry: /dev/nvidia-uvm dev/nvidia-uvm none bind,optional,create=file
lxc.cgroup2.devices.allow: c 195:* rwm
lxc.cgroup2.devices.allow: c 506:* rwm
lxc.cgroup2.devices.allow: c 509:* rwm
lxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,create=file
lxc.mount.entry: /dev/nvidia-uvm-tools dev/nvidia-uvm-tools none bind,optional,create=file
swap: 512
`
	path := p.write(t, "902", messy)
	if ap := p.conf(t, "apply", path, "--gpus", "0"); ap.Code != 0 {
		t.Fatalf("apply: exit %d: %s", ap.Code, ap.Stderr)
	}
	after := readFile(t, path)
	want := renderedRaw195(p.root, 0)
	for _, l := range want {
		if n := countLines(after, l); n != 1 {
			t.Errorf("%q appears %d times, want once", l, n)
		}
	}
	for _, gone := range []string{"195:*", "243:", "506:", "509:", "optional", " /dev/nvidia0 dev/nvidia0"} {
		if strings.Contains(after, gone) {
			t.Errorf("a duplicate or conflicting GPU line with %q survived:\n%s", gone, after)
		}
	}
	for _, kept := range []string{"lxc.cgroup2.devices.allow: c 10:200 rwm", "lxc.mount.entry: /dev/net/tun dev/net/tun none bind,create=file", "swap: 512", "hostname: ai-902"} {
		if countLines(after, kept) != 1 {
			t.Errorf("a line that is not gpupass's was lost or duplicated: %q\n%s", kept, after)
		}
	}
	if again := p.conf(t, "apply", path, "--gpus", "0"); again.Code != 0 || readFile(t, path) != after {
		t.Errorf("a second apply changed the file (exit %d)", again.Code)
	}
}

// Row 4 (config side): a clone inherits its parent's GPU lines; `--gpus none` removes them
// and nothing else. Shrinking 0,1 to 1 removes every nvidia0 line.
func testShrinkAndClonePVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true})
	parent := p.write(t, "903", pveMain)
	if ap := p.conf(t, "apply", parent, "--gpus", "0,1"); ap.Code != 0 {
		t.Fatalf("apply 0,1: exit %d: %s", ap.Code, ap.Stderr)
	}
	clone := p.write(t, "904", readFile(t, parent))
	if ap := p.conf(t, "apply", parent, "--gpus", "1"); ap.Code != 0 {
		t.Fatalf("apply 1: exit %d: %s", ap.Code, ap.Stderr)
	}
	shrunk := readFile(t, parent)
	if strings.Contains(shrunk, "nvidia0") || strings.Contains(shrunk, "195:0 ") {
		t.Errorf("shrinking 0,1 to 1 kept GPU 0:\n%s", shrunk)
	}
	for _, l := range renderedRaw195(p.root, 1) {
		if countLines(shrunk, l) != 1 {
			t.Errorf("after shrinking, %q appears %d times, want once", l, countLines(shrunk, l))
		}
	}
	if ap := p.conf(t, "apply", clone, "--gpus", "none"); ap.Code != 0 {
		t.Fatalf("apply none to the clone: exit %d: %s", ap.Code, ap.Stderr)
	}
	if got := readFile(t, clone); got != pveMain {
		t.Errorf("clone after --gpus none:\n%s\nwant exactly the parent's non-GPU lines:\n%s", got, pveMain)
	}
}

// Row 5 (config side): a uvm rule with a stale major (a guide's 243, the host now says
// 511) is replaced by the major /proc/devices gives now; the host's majors change and the
// next plan sees the drift.
func testStaleMajorPVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true})
	stale := pveMain + strings.Join([]string{
		"lxc.cgroup2.devices.allow: c 195:0 rwm",
		"lxc.cgroup2.devices.allow: c 195:255 rwm",
		"lxc.cgroup2.devices.allow: c 243:0 rwm",
		"lxc.cgroup2.devices.allow: c 243:1 rwm",
		"lxc.mount.entry: " + p.root + "/dev/nvidia0 dev/nvidia0 none bind,create=file 0 0",
		"lxc.mount.entry: " + p.root + "/dev/nvidiactl dev/nvidiactl none bind,create=file 0 0",
		"lxc.mount.entry: " + p.root + "/dev/nvidia-uvm dev/nvidia-uvm none bind,create=file 0 0",
		"lxc.mount.entry: " + p.root + "/dev/nvidia-uvm-tools dev/nvidia-uvm-tools none bind,create=file 0 0",
	}, "\n") + "\n"
	path := p.write(t, "905", stale)
	plan := p.conf(t, "plan", path, "--gpus", "0")
	if plan.Code != 2 || !strings.Contains(plan.Stdout, "-lxc.cgroup2.devices.allow: c 243:0 rwm") || !strings.Contains(plan.Stdout, "+lxc.cgroup2.devices.allow: c 511:0 rwm") {
		t.Fatalf("plan: exit %d, want 2 replacing 243 by 511:\n%s%s", plan.Code, plan.Stdout, plan.Stderr)
	}
	if ap := p.conf(t, "apply", path, "--gpus", "0"); ap.Code != 0 {
		t.Fatalf("apply: exit %d: %s", ap.Code, ap.Stderr)
	}
	if got := readFile(t, path); strings.Contains(got, "243:") {
		t.Errorf("stale major survived:\n%s", got)
	}
	// A driver update moves nvidia-uvm to 237: /proc/devices and the nodes change.
	devices := readFile(t, filepath.Join(p.root, "proc/devices"))
	if err := os.WriteFile(filepath.Join(p.root, "proc/devices"), []byte(strings.Replace(devices, "511 nvidia-uvm", "237 nvidia-uvm", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, n := range []string{"nvidia-uvm", "nvidia-uvm-tools"} {
		if err := gpu.Mknod(filepath.Join(p.root, "dev", n), 237, uint32(i), 0o666); err != nil {
			t.Fatal(err)
		}
	}
	drift := p.conf(t, "plan", path, "--gpus", "0")
	if drift.Code != 2 || !strings.Contains(drift.Stdout, "-lxc.cgroup2.devices.allow: c 511:0 rwm") || !strings.Contains(drift.Stdout, "+lxc.cgroup2.devices.allow: c 237:0 rwm") {
		t.Errorf("after the major moved, plan: exit %d, want 2 replacing 511 by 237:\n%s%s", drift.Code, drift.Stdout, drift.Stderr)
	}
}

// Row 6 (config side): required nodes are never "optional", and a node missing on the
// host is an error that names it (nothing written) instead of a silently empty file.
func testRequiredNotOptionalPVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true, SkipNodes: []string{"/dev/nvidia1"}})
	path := p.write(t, "906", pveMain)
	if ap := p.conf(t, "apply", path, "--gpus", "0"); ap.Code != 0 {
		t.Fatalf("apply: exit %d: %s", ap.Code, ap.Stderr)
	}
	got := readFile(t, path)
	if strings.Contains(got, "optional") {
		t.Errorf("a required node was written optional:\n%s", got)
	}
	before := got
	ap := p.conf(t, "apply", path, "--gpus", "1")
	if ap.Code != 1 || !strings.Contains(ap.Stderr, "/dev/nvidia1") {
		t.Errorf("apply of a GPU whose node is missing: exit %d, want 1 naming /dev/nvidia1: %s", ap.Code, ap.Stderr)
	}
	if readFile(t, path) != before {
		t.Errorf("a failed apply changed the file")
	}
}

// Row 10 (config side): index, UUID and bus id of GPU 1 all select its minor (64 on a
// host whose minors run in reverse bus order), never /dev/nvidia1.
func testIndexNotMinorPVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true, GPUs: 4, SwapMinors: true})
	for _, sel := range []string{"1", "GPU-5eed0000-0000-4000-8000-000000000002", "0000:02:00.0"} {
		path := p.write(t, "907", pveMain)
		if ap := p.conf(t, "apply", path, "--gpus", sel); ap.Code != 0 {
			t.Fatalf("apply %s: exit %d: %s", sel, ap.Code, ap.Stderr)
		}
		got := readFile(t, path)
		if !strings.Contains(got, "lxc.cgroup2.devices.allow: c 195:64 rwm") || !strings.Contains(got, "dev/nvidia64 none") {
			t.Errorf("GPU %s: want minor 64 passed:\n%s", sel, got)
		}
		if strings.Contains(got, "nvidia1 ") || strings.Contains(got, "195:1 ") {
			t.Errorf("GPU %s: index used as the minor:\n%s", sel, got)
		}
	}
}

// Row 11 (config side): with PVE's config lock held, apply fails at once with an error
// that names the lock, and the file is untouched.
func testLockHeldPVE(t *testing.T, f *fabric) {
	p := f.newPVEHost(t, gpu.SimOptions{RealMajors: true})
	path := p.write(t, "908", pveMain)
	lock := filepath.Join(p.root, "run/lock/lxc/pve-config-908.lock")
	release := holdLock(t, lock)
	ap := p.conf(t, "apply", path, "--gpus", "0", "--lock-timeout", "300ms")
	if ap.Code != 1 || !strings.Contains(strings.ToLower(ap.Stderr), "lock") {
		t.Errorf("apply with the lock held: exit %d, want 1 with an error about the lock: %s", ap.Code, ap.Stderr)
	}
	if readFile(t, path) != pveMain {
		t.Errorf("apply with the lock held changed the file")
	}
	release()
	if ap := p.conf(t, "apply", path, "--gpus", "0"); ap.Code != 0 {
		t.Errorf("apply after the lock was released: exit %d: %s", ap.Code, ap.Stderr)
	}
}

// holdLock takes an exclusive flock on path (as pct does) until release is called or the
// test ends.
func holdLock(t testing.TB, path string) (release func()) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	done := false
	release = func() {
		if !done {
			done = true
			unix.Close(fd)
		}
	}
	t.Cleanup(release)
	return release
}
