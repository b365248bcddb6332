package readiness

import (
	"testing"

	pb "gpupass/proto/gpupass/v1"
)

func TestReadiness(t *testing.T) {
	denied := pb.NewReason(&pb.Reason{Kind: pb.ReasonKind_REASON_KIND_DEVICE_CHECK, Device: "/dev/nvidia0", Got: "denied"})
	ready, notReady := &pb.GuestReport{Ready: true}, &pb.GuestReport{}
	t.Run("guest", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			reasons []*pb.Reason
			want    bool
		}{{"no reason", nil, true}, {"a reason", []*pb.Reason{denied}, false}} {
			if got := Guest(tc.reasons); got != tc.want {
				t.Errorf("%s: Guest = %v, want %v", tc.name, got, tc.want)
			}
		}
	})
	t.Run("host state", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			reasons []*pb.Reason
			rep     *pb.GuestReport
			want    string
		}{
			{"ready report, no reason", nil, ready, pb.StateReady},
			{"ready report, the host's reason against it", []*pb.Reason{denied}, ready, pb.StateNotReady},
			{"no report", nil, nil, pb.StateNotReady},
			{"a report not ready", nil, notReady, pb.StateNotReady},
		} {
			if got := State(tc.reasons, tc.rep); got != tc.want {
				t.Errorf("%s: State = %q, want %q", tc.name, got, tc.want)
			}
		}
	})
	t.Run("reported", func(t *testing.T) {
		for _, tc := range []struct {
			name             string
			connected, stale bool
			rep              *pb.GuestReport
			want             bool
		}{
			{"connected, fresh, ready", true, false, ready, true},
			{"silent", true, true, ready, false},
			{"gone", false, false, ready, false},
			{"not ready", true, false, notReady, false},
			{"no report", true, false, nil, false},
		} {
			if got := Reported(tc.connected, tc.stale, tc.rep); got != tc.want {
				t.Errorf("%s: Reported = %v, want %v", tc.name, got, tc.want)
			}
		}
	})
	t.Run("controller counts", func(t *testing.T) {
		for _, tc := range []struct {
			state       string
			wantRunning bool
			want        bool
		}{
			{pb.StateReady, true, true},
			{pb.StateStopped, false, true},
			{pb.StateStopped, true, false},
			{pb.StateNotReady, false, false},
			{pb.StatePending, false, false},
			{pb.StateError, false, false},
		} {
			if got := Counts(tc.state, tc.wantRunning); got != tc.want {
				t.Errorf("Counts(%q, want running %v) = %v, want %v", tc.state, tc.wantRunning, got, tc.want)
			}
		}
	})
}
