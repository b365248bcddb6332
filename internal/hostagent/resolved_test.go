package hostagent

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

// TestPlanAndStatusResolveGPUs: the host answers with the GPUs it resolved from the spec's
// selectors and those the config passes now (index, uuid, minor, bus id), so the controller
// never resolves selectors itself.
func TestPlanAndStatusResolveGPUs(t *testing.T) {
	f := newRestartFixture(t)
	f.desired() // the config passes GPU 1
	f.liveContainer()
	inv, err := f.agent.discover()
	if err != nil {
		t.Fatal(err)
	}
	key := func(set *pb.GPUSet) []string {
		if set == nil {
			return nil
		}
		out := []string{}
		for _, g := range set.GetGpus() {
			out = append(out, g.GetUuid()+" "+g.GetBusId())
		}
		return out
	}
	gpu := func(i int) string { return inv.GPUs[i].UUID + " " + inv.GPUs[i].BusID }
	tests := []struct {
		name                 string
		selectors            []string
		resolved, configured []string
	}{
		{"as configured, by index", []string{"1"}, []string{gpu(1)}, []string{gpu(1)}},
		{"as configured, by uuid", []string{inv.GPUs[1].UUID}, []string{gpu(1)}, []string{gpu(1)}},
		{"another GPU by bus id", []string{inv.GPUs[0].BusID}, []string{gpu(0)}, []string{gpu(1)}},
		{"none", nil, []string{}, []string{gpu(1)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			spec := &pb.ContainerSpec{Id: "901", Gpus: tc.selectors}
			p, err := f.agent.plan(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			cs := f.agent.status(context.Background(), spec)
			for _, got := range []struct {
				what                 string
				resolved, configured *pb.GPUSet
			}{{"plan", p.pb.GetResolved(), p.pb.GetConfigured()}, {"status", cs.GetResolved(), cs.GetConfigured()}} {
				if diff := cmp.Diff(tc.resolved, key(got.resolved)); diff != "" {
					t.Errorf("%s: resolved (-want +got):\n%s", got.what, diff)
				}
				if diff := cmp.Diff(tc.configured, key(got.configured)); diff != "" {
					t.Errorf("%s: configured (-want +got):\n%s", got.what, diff)
				}
			}
		})
	}
}
