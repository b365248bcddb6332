package guest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	pb "gpupass/proto/gpupass/v1"
)

// JSONReport is the stable JSON form of a report (`gpupass-guest-agent --once -o json`):
// snake_case keys, device statuses by name (ok, missing, denied, no-driver,
// not-char-device, wrong-device), lists never null.
type JSONReport struct {
	ContainerID string       `json:"container_id"`
	BootID      string       `json:"boot_id"`
	AgentBuild  string       `json:"agent_build"`
	Time        string       `json:"time"`
	Trigger     string       `json:"trigger"`
	Ready       bool         `json:"ready"`
	State       string       `json:"state"` // ready | not-ready
	Reasons     []string     `json:"reasons"`
	Warnings    []string     `json:"warnings"`
	Devices     []JSONDevice `json:"devices"`
	Driver      JSONDriver   `json:"driver"`
	Smi         *JSONSmi     `json:"smi,omitempty"` // absent when nvidia-smi is not installed or did not run
	Network     JSONNetwork  `json:"network"`

	// ReasonsDetail gives each reason as data, one per reason in the same order (the
	// controller's reasons_detail: a stable CamelCase kind beside the text).
	ReasonsDetail []pb.ReasonJSON `json:"reasons_detail"`
}

// JSONDevice is one device check.
type JSONDevice struct {
	Path   string `json:"path"`
	Status string `json:"status"`
	Major  uint32 `json:"major"`
	Minor  uint32 `json:"minor"`
	Detail string `json:"detail,omitempty"`
}

// JSONDriver holds the kernel module's and the userspace library's versions.
type JSONDriver struct {
	Kernel        string `json:"kernel"`
	Userspace     string `json:"userspace"`
	UserspacePath string `json:"userspace_path,omitempty"`
	// Source is "host" (driver: host, bound in at start) or "own" (the template's).
	Source string `json:"source,omitempty"`
}

// JSONSmi is the nvidia-smi deep check.
type JSONSmi struct {
	Ran        bool         `json:"ran"`
	GPUs       []JSONSmiGPU `json:"gpus"`
	Error      string       `json:"error,omitempty"`
	DurationMs int64        `json:"duration_ms"`
}

// JSONSmiGPU is one GPU nvidia-smi sees.
type JSONSmiGPU struct {
	Index          uint32 `json:"index"`
	UUID           string `json:"uuid"`
	Name           string `json:"name"`
	MemoryTotalMiB uint64 `json:"memory_total_mib"`
	DriverVersion  string `json:"driver_version"`
}

// JSONNetwork is the network check.
type JSONNetwork struct {
	OK           bool       `json:"ok"`
	DefaultRoute bool       `json:"default_route"`
	Reason       string     `json:"reason,omitempty"`
	Links        []JSONLink `json:"links"`
}

// JSONLink is one non-loopback link.
type JSONLink struct {
	Name      string   `json:"name"`
	Up        bool     `json:"up"`
	Addresses []string `json:"addresses"`
}

// ToJSON converts a report to its stable JSON form.
func ToJSON(r *pb.GuestReport) JSONReport {
	j := JSONReport{
		ContainerID: r.GetContainerId(), BootID: r.GetBootId(), AgentBuild: r.GetAgentBuild(),
		Trigger: r.GetTrigger(), Ready: r.GetReady(), State: "not-ready",
		Reasons: nonNil(r.GetReasons()), Warnings: nonNil(r.GetWarnings()), Devices: []JSONDevice{},
		Driver:  JSONDriver{Kernel: r.GetDriver().GetKernel(), Userspace: r.GetDriver().GetUserspace(), UserspacePath: r.GetDriver().GetUserspacePath(), Source: r.GetDriver().GetUserspaceSource()},
		Network: JSONNetwork{OK: r.GetNetwork().GetOk(), DefaultRoute: r.GetNetwork().GetDefaultRoute(), Reason: r.GetNetwork().GetReason(), Links: []JSONLink{}},
	}
	if r.GetReady() {
		j.State = "ready"
	}
	j.ReasonsDetail = []pb.ReasonJSON{}
	for _, d := range pb.DetailsOf(r.GetReasons(), r.GetDetails()) {
		j.ReasonsDetail = append(j.ReasonsDetail, pb.ReasonToJSON(d))
	}
	if ns := r.GetTimeUnixNano(); ns != 0 {
		j.Time = time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
	}
	for _, d := range r.GetDevices() {
		j.Devices = append(j.Devices, JSONDevice{Path: d.GetPath(), Status: StatusName(d.GetStatus()), Major: d.GetMajor(), Minor: d.GetMinor(), Detail: d.GetDetail()})
	}
	if s := r.GetSmi(); s != nil {
		j.Smi = &JSONSmi{Ran: s.GetRan(), Error: s.GetError(), DurationMs: s.GetDurationMs(), GPUs: []JSONSmiGPU{}}
		for _, g := range s.GetGpus() {
			j.Smi.GPUs = append(j.Smi.GPUs, JSONSmiGPU{Index: g.GetIndex(), UUID: g.GetUuid(), Name: g.GetName(), MemoryTotalMiB: g.GetMemoryTotalMib(), DriverVersion: g.GetDriverVersion()})
		}
	}
	for _, l := range r.GetNetwork().GetLinks() {
		j.Network.Links = append(j.Network.Links, JSONLink{Name: l.GetName(), Up: l.GetUp(), Addresses: nonNil(l.GetAddresses())})
	}
	return j
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// WriteJSON writes the report's stable JSON form, indented, with a final newline.
func WriteJSON(w io.Writer, r *pb.GuestReport) error { return WriteJSONReport(w, ToJSON(r)) }

// WriteJSONReport writes j indented, with a final newline.
func WriteJSONReport(w io.Writer, j JSONReport) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(j); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// WriteTable writes the report for a person: a verdict line, the devices, the driver,
// nvidia-smi, the network, then every reason and warning.
func WriteTable(w io.Writer, r *pb.GuestReport) error { return ToJSON(r).WriteTable(w) }

// WriteTable writes the report for a person, as the package's WriteTable does.
func (j JSONReport) WriteTable(w io.Writer) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "STATE\t%s\n", strings.ToUpper(j.State))
	if j.ContainerID != "" {
		fmt.Fprintf(tw, "CONTAINER\t%s\n", j.ContainerID)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "DEVICE\tSTATUS\tMAJOR:MINOR\tDETAIL")
	for _, d := range j.Devices {
		mm := "-"
		if d.Major != 0 || d.Minor != 0 {
			mm = fmt.Sprintf("%d:%d", d.Major, d.Minor)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Path, d.Status, mm, d.Detail)
	}
	fmt.Fprintln(tw)
	from := ""
	if j.Driver.Source == "host" {
		from = " (the host's, driver: host)"
	}
	fmt.Fprintf(tw, "DRIVER\tkernel %s\tuserspace %s\t%s%s\n", orDash(j.Driver.Kernel), orDash(j.Driver.Userspace), j.Driver.UserspacePath, from)
	switch s := j.Smi; {
	case s == nil:
		fmt.Fprintf(tw, "NVIDIA-SMI\tnot run\n")
	case s.Error != "":
		fmt.Fprintf(tw, "NVIDIA-SMI\tfailed\t%s\n", s.Error)
	default:
		for _, g := range s.GPUs {
			fmt.Fprintf(tw, "NVIDIA-SMI\tGPU %d\t%s\t%s, %d MiB, driver %s\n", g.Index, g.UUID, g.Name, g.MemoryTotalMiB, g.DriverVersion)
		}
	}
	net := "ok"
	if !j.Network.OK {
		net = "not ok: " + j.Network.Reason
	}
	fmt.Fprintf(tw, "NETWORK\t%s\n", net)
	for _, s := range j.Reasons {
		fmt.Fprintf(tw, "REASON\t%s\n", s)
	}
	for _, s := range j.Warnings {
		fmt.Fprintf(tw, "WARNING\t%s\n", s)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	for _, line := range strings.SplitAfter(buf.String(), "\n") {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+strings.Repeat("\n", strings.Count(line, "\n"))); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
