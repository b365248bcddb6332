package hostagent

import (
	"context"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"

	guestcheck "gpupass/internal/guest"
	pb "gpupass/proto/gpupass/v1"
)

// reasonSeries are the gpupass_container_not_ready_reason series of container id in the
// agent's registry, as "kind device" (their label names checked on the way).
func reasonSeries(t *testing.T, a *Agent, id string) []string {
	t.Helper()
	mfs, err := a.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != "gpupass_container_not_ready_reason" {
			continue
		}
		for _, m := range mf.GetMetric() {
			ls := map[string]string{}
			var names []string
			for _, l := range m.GetLabel() {
				ls[l.GetName()] = l.GetValue()
				names = append(names, l.GetName())
			}
			if diff := cmp.Diff(names, []string{"container", "device", "kind"}); diff != "" {
				t.Errorf("label names (-got +want):\n%s", diff)
			}
			if ls["container"] == id {
				if v := m.GetGauge().GetValue(); v != 1 {
					t.Errorf("%v = %v, want 1", ls, v)
				}
				out = append(out, ls["kind"]+" "+ls["device"])
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestNotReadyReasonMetricKinds: gpupass_container_not_ready_reason carries each reason's
// kind (the CamelCase name of JSON's reasons_detail) and device, one series per distinct
// kind and device of the last status, never the reason's text. Through the real path: the
// guest's Assess names the reasons of its report, the agent's status judges it and sets
// the metrics, the registry /metrics serves is read.
func TestNotReadyReasonMetricKinds(t *testing.T) {
	tests := []struct {
		name   string
		report func(f *restartFixture) *pb.GuestReport
		want   []string // "kind device" of each series
	}{
		{
			name: "a denied device",
			report: func(f *restartFixture) *pb.GuestReport {
				rep := f.report(pb.DeviceStatus_DEVICE_STATUS_OK)
				rep.Devices[0].Status, rep.Devices[0].Detail = pb.DeviceStatus_DEVICE_STATUS_DENIED, "open: operation not permitted"
				return rep
			},
			want: []string{"DeviceCheck /dev/nvidia1"},
		},
		{
			name: "two denied devices and a driver mismatch",
			report: func(f *restartFixture) *pb.GuestReport {
				f.reportDriver = &pb.DriverVersions{Kernel: "580.159.04", Userspace: "570.1", UserspaceSource: "own"}
				rep := f.report(pb.DeviceStatus_DEVICE_STATUS_OK)
				rep.Devices[0].Status = pb.DeviceStatus_DEVICE_STATUS_DENIED
				rep.Devices[1].Status = pb.DeviceStatus_DEVICE_STATUS_MISSING
				return rep
			},
			want: []string{"DeviceCheck /dev/nvidia1", "DeviceCheck /dev/nvidiactl", "DriverMismatch "},
		},
		{
			name:   "ready: no reason series",
			report: func(f *restartFixture) *pb.GuestReport { return f.report(pb.DeviceStatus_DEVICE_STATUS_OK) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRestartFixture(t)
			f.liveContainer()
			spec := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}}
			// A stale series from an earlier status (one reason text): the last status
			// replaces it.
			f.agent.metrics.setStatus("901", StateError, []*pb.Reason{pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_STATE_UNKNOWN, Detail: "lxc-info: timeout"})})
			rep := tt.report(f)
			exp := &pb.Expectation{DriverLoaded: true}
			for _, d := range rep.GetDevices() {
				exp.Devices = append(exp.Devices, &pb.ExpectedDevice{Path: d.GetPath(), Major: d.GetMajor(), Minor: d.GetMinor()})
			}
			guestcheck.Assess(exp, rep, false)
			f.sendReport(rep)
			cs := f.agent.status(context.Background(), spec)
			got := reasonSeries(t, f.agent, "901")
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("reason series (-got +want):\n%s\nstatus %s, reasons %q", diff, cs.GetState(), cs.GetReasons())
			}
			if len(tt.want) == 0 && cs.GetState() != StateReady {
				t.Errorf("state %s (reasons %q), want %s", cs.GetState(), cs.GetReasons(), StateReady)
			}
		})
	}
}
