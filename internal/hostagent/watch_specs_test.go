package hostagent

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	pb "gpupass/proto/gpupass/v1"
)

// watchView is what the controller's watch keeps of a status: what it prints and tells
// changes by.
type watchView struct {
	Gpus            []string
	State           string
	Reasons         []string
	RestartRequired bool
}

func watchViewOf(cs *pb.ContainerStatus) watchView {
	return watchView{Gpus: cs.GetGpus(), State: cs.GetState(), Reasons: cs.GetReasons(), RestartRequired: cs.GetRestartRequired()}
}

// firstWatchEvent is the first event Watch sends for req.
func firstWatchEvent(t *testing.T, a *Agent, req *pb.WatchRequest) *pb.WatchEvent {
	t.Helper()
	// The deadline only ends a watch that sends nothing (a failure).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var first *pb.WatchEvent
	err := a.Watch(ctx, req, func(ev *pb.WatchEvent) error {
		if first == nil {
			first = ev
		}
		cancel() // the first event is sent before Watch waits for any
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first == nil {
		t.Fatal("watch sent no event")
	}
	return first
}

// TestWatchJudgesAgainstGivenSpecs: a watch that names the specs (the controller sends the
// fleet's) judges its events against them, as Status does with the same specs, not against
// the last applied spec. 901 was applied with GPU 1 and runs as that wants; the fleet now
// asks for GPUs 0 and 1, not applied yet: Status with the fleet's spec says restart
// required, and so must the watch (before, the watch said not required, and `gpupass
// status --watch` printed 901 twice: once from its first Status, once from the watch).
func TestWatchJudgesAgainstGivenSpecs(t *testing.T) {
	f := newRestartFixture(t)
	desired := f.desired()
	f.liveContainer()
	f.rt.started = desired
	f.guestReport(pb.DeviceStatus_DEVICE_STATUS_OK)
	ctx := context.Background()
	applied := &pb.ContainerSpec{Id: "901", Gpus: []string{"1"}}
	res := f.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{applied}, TimeoutMs: 2000}, nil).GetContainers()[0]
	if res.GetError() != "" {
		t.Fatalf("apply: %s", res.GetError())
	}
	if s, ok := f.agent.desiredSpec("901"); !ok || !cmp.Equal(s.GetGpus(), applied.GetGpus()) {
		t.Fatalf("last applied spec %v (known %v), want GPUs %v", s, ok, applied.GetGpus())
	}
	fleet := &pb.ContainerSpec{Id: "901", Gpus: []string{"0", "1"}}
	status := func(spec *pb.ContainerSpec) watchView {
		return watchViewOf(f.agent.Status(ctx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{spec}}).GetContainers()[0])
	}
	want := status(fleet)
	// The two judgements must differ, or this test proves nothing.
	if lastApplied := status(applied); lastApplied.RestartRequired == want.RestartRequired {
		t.Fatalf("status says restart required %v for the fleet's spec and for the last applied one; want them to differ", want.RestartRequired)
	}
	if !want.RestartRequired {
		t.Fatalf("status with the fleet's spec says no restart required: %+v", want)
	}

	t.Run("specs given: judged against them", func(t *testing.T) {
		ev := firstWatchEvent(t, f.agent, &pb.WatchRequest{ContainerIds: []string{"901"}, Containers: []*pb.ContainerSpec{fleet}})
		if diff := cmp.Diff(want, watchViewOf(ev.GetStatus())); diff != "" {
			t.Errorf("watch and status with the same spec disagree (-status +watch):\n%s", diff)
		}
	})
	t.Run("ids only (an older controller): judged against the last applied spec", func(t *testing.T) {
		ev := firstWatchEvent(t, f.agent, &pb.WatchRequest{ContainerIds: []string{"901"}})
		if diff := cmp.Diff(status(applied), watchViewOf(ev.GetStatus())); diff != "" {
			t.Errorf("watch by id and status with the last applied spec disagree (-status +watch):\n%s", diff)
		}
	})
}
