package guest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"gpupass/internal/devrule"
	"gpupass/internal/gpu"
	"gpupass/internal/pveconf"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

// The real-GPU runs (scripts/real-gpu.sh on the H100 and H200 hosts, docs/real-gpu.md)
// left what the hosts had (proc-devices.txt, the container config gpupass wrote, the host's
// driver in status JSON, the H100 host's /proc/driver/nvidia/version and NVIDIA library
// layout) and what the guest reported. TestRealGPUReplay rebuilds the container's view from
// the captured host data, runs the real checker on it (Observe: stat of every node, kernel
// and userspace driver versions; then Assess) and compares with what the real run reported.
// Only the kernel's answer to open() cannot be replayed on a machine without the driver:
// here open() says ENXIO; the capture's answer (success, or EPERM from the device cgroup)
// is fed to the checker's own classification instead, and its wording must match.

// capturedVersion is the H100 host's /proc/driver/nvidia/version (same driver, 580.159.04).
var capturedVersion = filepath.Join("..", "gpu", "testdata", "h100-capture", "proc", "driver", "nvidia", "version")

func TestRealGPUReplay(t *testing.T) {
	testenv.RequireRoot(t) // mknod of the captured nodes
	for _, run := range []struct {
		dir, report, status string
	}{
		{"h100-1gpu", "report-ready.json", "status-ready-1gpu.json"},
		{"h100-1gpu", "report-denied.json", "status-denied.json"},
		{"h200-2gpu", "report-ready.json", "status-ready-1gpu.json"},
		{"h200-2gpu", "report-denied.json", "status-denied.json"},
	} {
		t.Run(run.dir+"/"+run.report, func(t *testing.T) {
			dir := filepath.Join("..", "..", "testdata", "real-gpu", run.dir)
			captured := loadReport(t, filepath.Join(dir, run.report))
			status := loadStatus(t, filepath.Join(dir, run.status))
			exp := expectationFromHost(t, dir, status)

			root := t.TempDir()
			for _, d := range exp.GetDevices() {
				p := filepath.Join(root, d.GetPath())
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.GetMajor(), d.GetMinor()))); err != nil {
					t.Fatalf("mknod %s: %v", p, err)
				}
			}
			copyFile(t, capturedVersion, filepath.Join(root, "proc/driver/nvidia/version"))
			// The hosts' NVIDIA userspace layout (nvlibs.txt): <lib>.so.<version> with .so.1
			// links under /usr/local/nvidia/lib64, bind-mounted read-only into the container.
			lib := filepath.Join(root, "usr/local/nvidia/lib64")
			if err := os.MkdirAll(lib, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(lib, "libnvidia-ml.so.580.159.04"), []byte("\x7fELF"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("libnvidia-ml.so.580.159.04", filepath.Join(lib, "libnvidia-ml.so.1")); err != nil {
				t.Fatal(err)
			}

			c := &Checker{Paths: Paths{Root: root, Dev: "/dev", Proc: "/proc", LdCache: "/etc/ld.so.cache"},
				Network: func() *pb.Network { return networkOf(captured) }}
			r := c.Observe(exp)

			// The stat-level result is replayed in full: path, char device, major:minor.
			if len(r.GetDevices()) != len(captured.Devices) {
				t.Fatalf("replayed %d devices, the real run %d", len(r.GetDevices()), len(captured.Devices))
			}
			for i, d := range r.GetDevices() {
				want := captured.Devices[i]
				if d.GetPath() != want.Path || d.GetMajor() != want.Major || d.GetMinor() != want.Minor {
					t.Errorf("device %d: replayed %s %d:%d, real run %s %d:%d", i, d.GetPath(), d.GetMajor(), d.GetMinor(), want.Path, want.Major, want.Minor)
				}
				if d.GetStatus() != pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER {
					t.Errorf("%s here: %s (%s), want no-driver (open() on a machine without the driver)", d.GetPath(), StatusName(d.GetStatus()), d.GetDetail())
				}
				// The kernel's answer in the real run, through the checker's classification.
				switch want.Status {
				case "ok":
					d.Status, d.Detail = pb.DeviceStatus_DEVICE_STATUS_OK, ""
				case "denied":
					var st unix.Stat_t
					if err := unix.Stat(filepath.Join(root, d.GetPath()), &st); err != nil {
						t.Fatal(err)
					}
					classifyOpenErr(d, &st, unix.EPERM)
				default:
					t.Fatalf("capture has status %s: extend the replay", want.Status)
				}
			}
			r.Smi = smiOf(captured) // nvidia-smi needs the GPU
			Assess(exp, r, false)

			// Compared in the guest agent's JSON form, minus what belongs to the moment
			// (container id, boot id, build, time, trigger) and nvidia-smi's duration.
			got := ToJSON(r)
			want := captured
			want.ContainerID, want.BootID, want.AgentBuild, want.Time, want.Trigger = "", "", "", "", ""
			if got.Smi != nil && want.Smi != nil {
				got.Smi.DurationMs = want.Smi.DurationMs
			}
			// The captures predate reasons_detail: the reasons' texts are compared.
			got.ReasonsDetail = nil
			if want.Driver.Source == "" && want.Driver.UserspacePath != "" {
				// Captured before reports said where the userspace came from: a template's
				// own (these runs bound /usr/local/nvidia by hand, never by the driver hook).
				want.Driver.Source = "own"
			}
			if diff := cmp.Diff(got, want, cmpEmpty()); diff != "" {
				t.Errorf("replayed report vs the real run's (-replay +real)\n%s", diff)
			}
			// And the host's verdict that the real run's status showed.
			wantState := "not-ready"
			if r.GetReady() {
				wantState = "ready"
			}
			ct := status.Containers[0]
			if diff := cmp.Diff([]any{wantState, r.GetReasons()}, []any{ct.State, ct.Reasons}, cmpEmpty()); diff != "" {
				t.Errorf("state and reasons vs the real run's status (-replay +real)\n%s", diff)
			}
		})
	}
}

type realStatus struct {
	Hosts []struct {
		GPUs []struct {
			Index int    `json:"index"`
			UUID  string `json:"uuid"`
			Minor uint32 `json:"minor"`
		} `json:"gpus"`
		Driver struct {
			Loaded bool   `json:"loaded"`
			Kernel string `json:"kernel"`
		} `json:"driver"`
	} `json:"hosts"`
	Containers []struct {
		ID      string   `json:"id"`
		GPUs    []string `json:"gpus"`
		State   string   `json:"state"`
		Reasons []string `json:"reasons"`
	} `json:"containers"`
}

func loadStatus(t *testing.T, path string) realStatus {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s realStatus
	if err := json.Unmarshal(b, &s); err != nil || len(s.Hosts) != 1 || len(s.Containers) == 0 {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

// loadReport reads a report in the guest agent's JSON form (--once -o json).
func loadReport(t *testing.T, path string) JSONReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r JSONReport
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return r
}

// smiOf and networkOf give back what the real run observed where it cannot be replayed.
func smiOf(j JSONReport) *pb.SmiResult {
	if j.Smi == nil {
		return nil
	}
	s := &pb.SmiResult{Ran: j.Smi.Ran, Error: j.Smi.Error, DurationMs: j.Smi.DurationMs}
	for _, g := range j.Smi.GPUs {
		s.Gpus = append(s.Gpus, &pb.SmiGPU{Index: g.Index, Uuid: g.UUID, Name: g.Name, MemoryTotalMib: g.MemoryTotalMiB, DriverVersion: g.DriverVersion})
	}
	return s
}

func networkOf(j JSONReport) *pb.Network {
	return &pb.Network{Ok: j.Network.OK, DefaultRoute: j.Network.DefaultRoute, Reason: j.Network.Reason}
}

// expectationFromHost is what the host agent expected, rebuilt with the real parsers from
// the captured host data: the config gpupass wrote (its mount entries for NVIDIA nodes and,
// in the same order, their allow rules), /proc/devices (every rule's major must be an
// NVIDIA one there), the GPU and driver the host reported.
func expectationFromHost(t *testing.T, dir string, st realStatus) *pb.Expectation {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "g0-config-after-apply.txt"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pveconf.Parse(b, pveconf.LXC)
	if err != nil {
		t.Fatal(err)
	}
	pd, err := os.ReadFile(filepath.Join(dir, "proc-devices.txt"))
	if err != nil {
		t.Fatal(err)
	}
	majors, err := gpu.ParseDevices(pd)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	var rules []devrule.Rule
	for _, l := range cfg.Main() {
		switch {
		case l.Key == "lxc.mount.entry" && strings.HasPrefix(l.Value, "/dev/nvidia"):
			paths = append(paths, strings.Fields(l.Value)[0])
		case l.Key == "lxc.cgroup2.devices.allow":
			r, err := devrule.Parse(l.Value)
			if err != nil {
				t.Fatal(err)
			}
			if names := majors[uint32(r.Major)]; len(names) > 0 && strings.HasPrefix(names[0], "nvidia") {
				rules = append(rules, r)
			}
		}
	}
	if len(paths) == 0 || len(paths) != len(rules) {
		t.Fatalf("config: %d NVIDIA mounts, %d NVIDIA allow rules", len(paths), len(rules))
	}
	exp := &pb.Expectation{ContainerId: st.Containers[0].ID, DriverLoaded: st.Hosts[0].Driver.Loaded, KernelDriverVersion: st.Hosts[0].Driver.Kernel}
	for i, p := range paths {
		exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: p, Major: uint32(rules[i].Major), Minor: uint32(rules[i].Minor)})
	}
	// The container's GPUs (by index, as the runs' fleets named them).
	for _, sel := range st.Containers[0].GPUs {
		for _, g := range st.Hosts[0].GPUs {
			if strconv.Itoa(g.Index) == sel {
				exp.Gpus = append(exp.Gpus, &pb.GPU{Uuid: g.UUID, Minor: g.Minor})
			}
		}
	}
	if len(exp.Gpus) != len(st.Containers[0].GPUs) {
		t.Fatalf("GPUs %v of %s not all on the host", st.Containers[0].GPUs, st.Containers[0].ID)
	}
	return exp
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o444); err != nil {
		t.Fatal(err)
	}
}

// cmpEmpty treats nil and empty slices alike.
func cmpEmpty() cmp.Option {
	return cmp.FilterValues(func(a, b []string) bool { return len(a) == 0 && len(b) == 0 }, cmp.Comparer(func(_, _ []string) bool { return true }))
}

// TestRealTwoGPUIsolation replays the two-GPU run (two H200s, one container each) through
// the checker's verdict: each guest's nvidia-smi (as captured) passes for the GPU assigned
// to it, by the host's UUID, and the same sighting fails for the other GPU.
func TestRealTwoGPUIsolation(t *testing.T) {
	dir := filepath.Join("..", "..", "testdata", "real-gpu", "h200-2gpu")
	var status struct {
		Hosts []struct {
			GPUs []struct {
				Index int    `json:"index"`
				UUID  string `json:"uuid"`
			} `json:"gpus"`
		} `json:"hosts"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "status-ready-2gpu.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &status); err != nil || len(status.Hosts) != 1 || len(status.Hosts[0].GPUs) != 2 {
		t.Fatalf("status fixture: %v", err)
	}
	gpus := status.Hosts[0].GPUs
	for i := range gpus {
		captured := loadReport(t, filepath.Join(dir, "report-2gpu-g"+strconv.Itoa(i)+".json"))
		for j, assigned := range gpus {
			exp := &pb.Expectation{DriverLoaded: true, Gpus: []*pb.GPU{{Uuid: assigned.UUID}}}
			r := &pb.GuestReport{Driver: &pb.DriverVersions{Kernel: captured.Driver.Kernel, Userspace: captured.Driver.Userspace}, Smi: smiOf(captured)}
			Assess(exp, r, false)
			if want := i == j; r.GetReady() != want {
				t.Errorf("g%d's nvidia-smi with GPU %d (%s) assigned: ready=%v %q, want ready=%v", i, assigned.Index, assigned.UUID, r.GetReady(), r.GetReasons(), want)
			}
		}
	}
}
