package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/guest"
	"gpupass/internal/guest/guesttest"
	"gpupass/internal/lxctest"
	pb "gpupass/proto/gpupass/v1"
)

// The simulated GPU host (FACTS.md §2): char devices whose drivers exist on any Linux
// machine stand in for the NVIDIA nodes, so that open() succeeds once the device cgroup
// allows them. Major 195 stays for "no driver behind the major" (ENXIO).
const (
	simVersion = "580.159.04"
	procDriver = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  " + simVersion + "  Release Build  (simulated GPU host: gpupass tests)\n"
	agentPath  = "/usr/local/bin/gpupass-guest-agent"
)

type node struct {
	name         string // under /dev
	major, minor uint32
}

// simHost is a host directory with the simulated nodes, a /proc/driver fixture, the agent
// binary and expectation files, and the container config that passes them in.
type simHost struct {
	dir     string
	binds   [][2]string
	config  []string
	noDrvMj uint32
}

func newSimHost(t *testing.T, bin string) *simHost {
	t.Helper()
	h := &simHost{dir: lxctest.TempDir(t), noDrvMj: freeMajor(t)}
	mk := func(sub string) string {
		d := filepath.Join(h.dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	devDir, procDir, expDir := mk("dev"), mk("procdriver/nvidia"), mk("exp")
	if err := os.WriteFile(filepath.Join(procDir, "version"), []byte(procDriver), 0o644); err != nil {
		t.Fatal(err)
	}
	nodes := []struct {
		node
		allow bool
	}{
		{node{"nvidia0", 10, 229}, true},      // fuse: opens -> ok
		{node{"nvidiactl", 10, 200}, true},    // tun: opens -> ok
		{node{"nvidia-uvm", 10, 237}, false},  // loop-control without an allow rule -> denied (EPERM)
		{node{"nvidia1", h.noDrvMj, 1}, true}, // no driver behind the major -> no-driver (ENXIO)
		{node{"nvidia4", 1, 5}, true},         // /dev/zero's numbers where 195:4 is expected -> wrong-device
	}
	for _, n := range nodes {
		src := filepath.Join(devDir, n.name)
		lxctest.Mknod(t, src, n.major, n.minor)
		h.binds = append(h.binds, [2]string{src, "/dev/" + n.name})
		if n.allow {
			h.config = append(h.config, fmt.Sprintf("lxc.cgroup2.devices.allow = c %d:%d rwm", n.major, n.minor))
		}
	}
	// The optional trap: a bind of a missing host node leaves an empty regular file.
	h.config = append(h.config, "lxc.mount.entry = "+filepath.Join(devDir, "nvidia3-absent")+" dev/nvidia3 none bind,optional,create=file 0 0")
	h.binds = append(h.binds,
		[2]string{filepath.Join(h.dir, "procdriver"), "/proc/driver"},
		[2]string{bin, agentPath},
		[2]string{expDir, "/gp"},
	)
	h.writeExpectation(t, "ready.json", &pb.Expectation{DriverLoaded: true, KernelDriverVersion: simVersion, Devices: []*pb.ExpectedDevice{
		{Path: "/dev/nvidia0", Major: 10, Minor: 229}, {Path: "/dev/nvidiactl", Major: 10, Minor: 200}}})
	h.writeExpectation(t, "all.json", h.allExpectation())
	return h
}

// allExpectation expects one node of each classification.
func (h *simHost) allExpectation() *pb.Expectation {
	return &pb.Expectation{DriverLoaded: true, KernelDriverVersion: simVersion, Devices: []*pb.ExpectedDevice{
		{Path: "/dev/nvidia0", Major: 10, Minor: 229},
		{Path: "/dev/nvidiactl", Major: 10, Minor: 200},
		{Path: "/dev/nvidia-uvm", Major: 10, Minor: 237},
		{Path: "/dev/nvidia1", Major: h.noDrvMj, Minor: 1},
		{Path: "/dev/nvidia2", Major: 195, Minor: 2},
		{Path: "/dev/nvidia3", Major: 195, Minor: 3},
		{Path: "/dev/nvidia4", Major: 195, Minor: 4},
	}}
}

func (h *simHost) writeExpectation(t *testing.T, name string, exp *pb.Expectation) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"driver_loaded": exp.DriverLoaded, "kernel_driver_version": exp.KernelDriverVersion, "devices": exp.Devices})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "exp", name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func freeMajor(t *testing.T) uint32 {
	t.Helper()
	b, err := os.ReadFile("/proc/devices")
	if err != nil {
		t.Fatal(err)
	}
	used := map[uint32]bool{}
	for _, v := range guestParseMajors(b) {
		used[v] = true
	}
	for _, m := range append([]uint32{195}, 240, 241, 242, 243, 244, 245, 246, 247, 248, 249, 250, 251, 252, 253, 254) {
		if !used[m] {
			return m
		}
	}
	t.Skip("no free char major for the no-driver case")
	return 0
}

var guestParseMajors = guest.ParseCharMajors

// runOnce runs the agent once inside c and decodes its JSON report.
func runOnce(t *testing.T, c *lxctest.Container, args ...string) (guest.JSONReport, int) {
	t.Helper()
	out, code := c.Attach(t, append([]string{agentPath, "--once", "-o", "json"}, args...)...)
	var r guest.JSONReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("agent output is not a JSON report (exit %d): %v\n%s", code, err, out)
	}
	return r, code
}

func statuses(r guest.JSONReport) map[string]string {
	m := map[string]string{}
	for _, d := range r.Devices {
		m[d.Path] = d.Status
	}
	return m
}

// TestLXC runs the real static agent in real busybox containers on pure cgroup2, privileged
// and unprivileged, and shows each classification for real.
func TestLXC(t *testing.T) {
	bin := buildAgent(t)
	for _, unpriv := range []bool{false, true} {
		name := "privileged"
		if unpriv {
			name = "unprivileged"
		}
		t.Run(name, func(t *testing.T) {
			h := newSimHost(t, bin)
			sockDir := lxctest.TempDir(t)
			c := lxctest.NewContainer(t, lxctest.Spec{
				Binds:        append(h.binds, [2]string{sockDir, "/dev/gpupass"}),
				ExtraConfig:  h.config,
				Unprivileged: unpriv,
			})
			c.Start(t)

			t.Run("ready", func(t *testing.T) {
				r, code := runOnce(t, c, "--expect-file", "/gp/ready.json")
				if code != exitReady || !r.Ready || r.State != "ready" {
					t.Fatalf("exit %d, ready %v, reasons %q; want exit 0 and ready", code, r.Ready, r.Reasons)
				}
				if r.Driver.Kernel != simVersion {
					t.Errorf("kernel driver %q, want %q (from the /proc/driver fixture)", r.Driver.Kernel, simVersion)
				}
				if len(r.Warnings) != 1 || !strings.HasPrefix(r.Warnings[0], "userspace driver not installed") {
					t.Errorf("warnings %q; want the missing userspace driver", r.Warnings)
				}
			})

			t.Run("every classification", func(t *testing.T) {
				r, code := runOnce(t, c, "--expect-file", "/gp/all.json")
				want := map[string]string{
					"/dev/nvidia0":    "ok",
					"/dev/nvidiactl":  "ok",
					"/dev/nvidia-uvm": "denied",
					"/dev/nvidia1":    "no-driver",
					"/dev/nvidia2":    "missing",
					"/dev/nvidia3":    "not-char-device",
					"/dev/nvidia4":    "wrong-device",
				}
				if diff := cmp.Diff(statuses(r), want); diff != "" {
					t.Errorf("device statuses (-got +want):\n%s", diff)
				}
				if code != exitNotReady || r.Ready || len(r.Reasons) != 5 {
					t.Errorf("exit %d, ready %v, reasons %q; want exit 2, not ready, 5 reasons", code, r.Ready, r.Reasons)
				}
				for _, d := range r.Devices {
					t.Logf("%-16s %-16s %d:%d %s", d.Path, d.Status, d.Major, d.Minor, d.Detail)
				}
			})

			t.Run("no expectation: what /dev holds", func(t *testing.T) {
				r, code := runOnce(t, c)
				st := statuses(r)
				if code != exitNotReady || st["/dev/nvidia-uvm"] != "denied" || st["/dev/nvidia3"] != "not-char-device" || st["/dev/nvidia0"] != "ok" {
					t.Errorf("exit %d, statuses %v; want exit 2 with nvidia0 ok, nvidia-uvm denied, nvidia3 not-char-device", code, st)
				}
				if !strings.Contains(strings.Join(r.Warnings, "\n"), "no expectation from the host agent") {
					t.Errorf("warnings %q do not say the expectation was guessed", r.Warnings)
				}
			})

			t.Run("session over the bind-mounted socket", func(t *testing.T) {
				exp := h.allExpectation()
				exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: "/dev/nvidia5", Major: 10, Minor: 229})
				host := guesttest.NewHost(t, filepath.Join(sockDir, "agent.sock"), exp)
				out, code := c.Attach(t, "/bin/sh", "-c", agentPath+" --id "+c.Name()+" >/tmp/agent.log 2>&1 &")
				if code != 0 {
					t.Fatalf("start the agent in the container: exit %d: %s", code, out)
				}
				r, err := host.Wait(10*time.Second, func(r *pb.GuestReport) bool { return r.GetTrigger() == guest.TriggerConnect })
				if err != nil {
					log, _ := c.Attach(t, "cat", "/tmp/agent.log")
					t.Fatalf("report on connect: %v\nagent log:\n%s", err, log)
				}
				if r.ContainerId != c.Name() || len(r.Devices) != 8 || r.Ready {
					t.Errorf("connect report: id %q, %d devices, ready %v", r.ContainerId, len(r.Devices), r.Ready)
				}
				if unpriv {
					return // mknod is not allowed in an unprivileged container
				}
				// A node appears inside the running container (as PVE 9 hot-plugs devN
				// entries): the host holds the report a few milliseconds later.
				start := time.Now()
				if out, code := c.Attach(t, "mknod", "-m", "666", "/dev/nvidia5", "c", "10", "229"); code != 0 {
					t.Fatalf("mknod in the container: exit %d: %s", code, out)
				}
				attached := time.Since(start)
				r, err = host.Wait(5*time.Second, func(r *pb.GuestReport) bool {
					for _, d := range r.GetDevices() {
						if d.GetPath() == "/dev/nvidia5" {
							return d.GetStatus() == pb.DeviceStatus_DEVICE_STATUS_OK
						}
					}
					return false
				})
				if err != nil {
					t.Fatalf("report after mknod in the container: %v", err)
				}
				t.Logf("mknod inside (lxc-attach took %v) -> host holds the report %v after the attach began", attached, r.At.Sub(start))
			})
		})
	}
}
