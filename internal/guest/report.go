package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"gpupass/internal/readiness"
	"gpupass/internal/runner"
	pb "gpupass/proto/gpupass/v1"
)

// Checker runs the checks of a report.
type Checker struct {
	Paths      Paths
	Runner     runner.Runner      // runs nvidia-smi; nil: runner.Exec{}
	SmiTimeout time.Duration      // default DefaultSmiTimeout
	Network    func() *pb.Network // nil: CheckNetwork (netlink, this process's network namespace)
}

// Report trigger names (GuestReport.trigger).
const (
	TriggerConnect   = "connect"
	TriggerChange    = "change"
	TriggerHeartbeat = "heartbeat"
	TriggerOnce      = "once"
)

// StatusName is the name a device status has in reports, JSON and tables: ok, missing,
// denied, no-driver, not-char-device, wrong-device.
func StatusName(s pb.DeviceStatus) string { return pb.DeviceStatusName(s) }

// Observe runs the fast checks for exp (device nodes, driver versions, network) and
// returns a report without a verdict: Assess gives it one. Problems met while reading
// (an unreadable version file, an unversioned library) are in Warnings.
func (c *Checker) Observe(exp *pb.Expectation) *pb.GuestReport {
	p := c.Paths.withDefaults()
	r := &pb.GuestReport{Driver: &pb.DriverVersions{}}
	devs := exp.GetDevices()
	if len(devs) > MaxDevices {
		devs = devs[:MaxDevices]
	}
	for _, d := range devs {
		r.Devices = append(r.Devices, p.CheckDevice(d))
	}
	if kv, err := p.KernelVersion(); err == nil {
		r.Driver.Kernel = kv
	} else if exp.GetDriverLoaded() {
		r.Warnings = append(r.Warnings, fmt.Sprintf("read the kernel driver version: %v; using the host's %q", err, exp.GetKernelDriverVersion()))
		r.Driver.Kernel = exp.GetKernelDriverVersion()
	}
	if kv, hv := r.Driver.Kernel, exp.GetKernelDriverVersion(); kv != "" && hv != "" && kv != hv {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the host agent expects kernel driver %s, /proc/driver/nvidia/version says %s", hv, kv))
	}
	switch nvml, err := p.UserspaceDriver(); {
	case err == nil:
		r.Driver.Userspace, r.Driver.UserspacePath = nvml.Version, nvml.Path
		r.Driver.UserspaceSource = UserspaceSource(nvml.Path)
	case errors.Is(err, ErrNVMLNotInstalled) && len(exp.GetDevices()) == 0 && len(exp.GetGpus()) == 0:
		// No GPU assigned: no CUDA program here needs the libraries, nothing to warn about.
	case errors.Is(err, ErrNVMLNotInstalled):
		need := "the driver libraries"
		if r.Driver.Kernel != "" {
			need += " of version " + r.Driver.Kernel
		}
		r.Warnings = append(r.Warnings, "userspace driver not installed: no "+NVMLSoname+" in ld.so.cache or the standard library directories (passthrough works; CUDA programs need "+need+")")
	default:
		r.Warnings = append(r.Warnings, "userspace driver: "+err.Error())
	}
	if c.Network != nil {
		r.Network = c.Network()
	} else {
		r.Network = CheckNetwork()
	}
	return r
}

// Deep runs nvidia-smi when the container has it; nil when it does not. nvmlPath is the
// libnvidia-ml the fast checks found (in the container, "" if none): its directory is put
// first on nvidia-smi's LD_LIBRARY_PATH, so that the deep check tests which GPUs are
// visible, not whether the agent's own environment names /usr/local/nvidia/lib64.
func (c *Checker) Deep(ctx context.Context, nvmlPath string) *pb.SmiResult {
	p := c.Paths.withDefaults()
	path, ok := p.FindSmi()
	if !ok {
		return nil
	}
	r := c.Runner
	if r == nil {
		var env []string
		if nvmlPath != "" {
			ld := p.host(filepath.Dir(nvmlPath))
			if old := os.Getenv("LD_LIBRARY_PATH"); old != "" {
				ld += ":" + old
			}
			env = append(env, "LD_LIBRARY_PATH="+ld)
		}
		r = runner.Exec{Env: env}
	}
	return RunSmi(ctx, r, p.host(path), c.SmiTimeout)
}

// Check runs every check for exp, nvidia-smi included when the fast checks pass, and
// returns the assessed report. A nil exp means no host agent: the checks cover what
// Discover finds, and finding no NVIDIA node at all is a reason.
func (c *Checker) Check(ctx context.Context, exp *pb.Expectation) *pb.GuestReport {
	discovered := exp == nil
	if discovered {
		exp = c.Paths.Discover()
	}
	r := c.Observe(exp)
	if Assess(exp, r, false); r.Ready {
		r.Smi = c.Deep(ctx, r.GetDriver().GetUserspacePath())
	}
	Assess(exp, r, false)
	if discovered && len(exp.GetDevices()) == 0 {
		r.Details = append(pb.DetailsOf(r.Reasons, r.Details), pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NO_DEVICES}))
		r.Reasons = pb.ReasonTexts(r.Details)
		r.Ready = readiness.Guest(r.Details)
	}
	return r
}

// Assess decides r.Ready and names every reason (and warning) from exp and what r
// observed. smiPending says an nvidia-smi run for the current state has not finished: the
// report is then not ready yet. Assess may run again on the same report.
func Assess(exp *pb.Expectation, r *pb.GuestReport, smiPending bool) {
	var reasons []*pb.Reason
	warnings := append([]string(nil), r.GetWarnings()...) // Observe's
	if n := len(exp.GetDevices()); n > MaxDevices {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_EXPECTATION_TRUNCATED, Want: fmt.Sprint(n), Got: fmt.Sprint(MaxDevices)}))
	}
	for _, d := range r.GetDevices() {
		if d.GetStatus() != pb.DeviceStatus_DEVICE_STATUS_OK {
			reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DEVICE_CHECK, Device: d.GetPath(), Got: StatusName(d.GetStatus()), Detail: d.GetDetail()}))
		}
	}
	wantsGPU := len(exp.GetDevices()) > 0 || len(exp.GetGpus()) > 0
	drv := r.GetDriver()
	if wantsGPU && !exp.GetDriverLoaded() {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_HOST_DRIVER_NOT_LOADED}))
	}
	if k, u := drv.GetKernel(), drv.GetUserspace(); k != "" && u != "" && k != u {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DRIVER_MISMATCH, Want: k, Got: u}))
	}
	if smi := r.GetSmi(); smi.GetRan() {
		if smi.GetError() != "" {
			reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_SMI_FAILED, Detail: smi.GetError()}))
		} else {
			reasons = append(reasons, compareGPUs(exp.GetGpus(), smi.GetGpus())...)
		}
	}
	if smiPending {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_SMI_RUNNING}))
	}
	if exp.GetRequireNetwork() && !r.GetNetwork().GetOk() {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_NETWORK, Detail: orUnknown(r.GetNetwork().GetReason())}))
	}
	r.Details = capReasons(reasons, MaxReasons)
	r.Reasons = pb.ReasonTexts(r.Details)
	r.Warnings = capList(warnings, MaxWarnings)
	r.Ready = readiness.Guest(reasons)
}

// compareGPUs names every difference between the assigned GPUs and those nvidia-smi sees,
// by UUID. Without assigned UUIDs (no host expectation) there is nothing to compare.
func compareGPUs(want []*pb.GPU, seen []*pb.SmiGPU) []*pb.Reason {
	wantSet := map[string]bool{}
	for _, g := range want {
		if g.GetUuid() != "" {
			wantSet[g.GetUuid()] = true
		}
	}
	if len(wantSet) == 0 {
		return nil
	}
	seenSet := map[string]bool{}
	var reasons []*pb.Reason
	for _, g := range seen {
		seenSet[g.GetUuid()] = true
		if !wantSet[g.GetUuid()] {
			reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_SMI_UNASSIGNED_GPU, Device: g.GetUuid()}))
		}
	}
	var missing []string
	for u := range wantSet {
		if !seenSet[u] {
			missing = append(missing, u)
		}
	}
	sort.Strings(missing)
	for _, u := range missing {
		reasons = append(reasons, pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_SMI_MISSING_GPU, Device: u}))
	}
	return reasons
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
