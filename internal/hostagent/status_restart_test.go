package hostagent

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

// status says restart_required exactly as plan does (same evidence, same rule): container
// 901 runs without GPUs and without the guest socket mount, so both wishes need a restart
// (before, status always said false).
func TestStatusRestartRequiredAsPlan(t *testing.T) {
	h := newFaultHost(t, true)
	if _, err := h.guests.Ensure("901"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name string
		spec *pb.ContainerSpec
		want bool
	}{
		{"gpu 0 wanted, running without", &pb.ContainerSpec{Id: "901", Gpus: []string{"0"}, Style: pb.Style_STYLE_RAW}, true},
		{"none wanted, running without the guest mount", &pb.ContainerSpec{Id: "901"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := h.agent.Plan(ctx, &pb.PlanRequest{Containers: []*pb.ContainerSpec{tt.spec}})
			if err != nil {
				t.Fatal(err)
			}
			st := h.agent.Status(ctx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{tt.spec}})
			got := []bool{plan.GetContainers()[0].GetRestart().GetRequired(), st.GetContainers()[0].GetRestartRequired()}
			if diff := cmp.Diff(got, []bool{tt.want, tt.want}); diff != "" {
				t.Errorf("plan, status restart required (-got +want)\n%s\nplan reasons: %q", diff, plan.GetContainers()[0].GetRestart().GetReasons())
			}
		})
	}
}
