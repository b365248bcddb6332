package agenttest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

// stoppedRuntime is a runtime whose containers are all stopped, with PVE-format configs
// under dir; Start, Stop and Restart are recorded, not done.
type stoppedRuntime struct{ dir string }

var _ runtime.Runtime = stoppedRuntime{}

func (stoppedRuntime) Name() string { return "contract" }
func (r stoppedRuntime) State(_ context.Context, id string) (runtime.State, error) {
	if _, err := os.Stat(r.ConfigPath(id)); err != nil {
		return runtime.State{}, fmt.Errorf("%w: %s", runtime.ErrNotFound, id)
	}
	return runtime.State{}, nil
}
func (stoppedRuntime) Start(context.Context, string) error   { return nil }
func (stoppedRuntime) Stop(context.Context, string) error    { return nil }
func (stoppedRuntime) Restart(context.Context, string) error { return nil }
func (r stoppedRuntime) ConfigPath(id string) string         { return filepath.Join(r.dir, id+".conf") }
func (stoppedRuntime) ConfigFormat() runtime.Format          { return runtime.FormatPVE }
func (stoppedRuntime) StartedConfig(context.Context, string, runtime.State) ([]byte, error) {
	return nil, runtime.ErrNoStartedConfig
}
func (r stoppedRuntime) LockPath(id string) string { return filepath.Join(r.dir, id+".lock") }

// contractHost is a real agent on the pve-2gpu fixture host, its containers stopped with
// their configs on disk (stoppedRuntime), beside the model with the agent's own GPUs and
// driver: the setup of the contract tests.
type contractHost struct {
	t     *testing.T
	root  string // the fixture host's root
	cfg   *hostconfig.Config
	rt    stoppedRuntime
	reg   *guestchan.Registry
	real  *hostagent.Agent
	model *Agent
}

func newContractHost(t *testing.T) *contractHost {
	t.Helper()
	root := gputest.MakeRoot(t, "pve-2gpu")
	base := t.TempDir()
	rt := stoppedRuntime{dir: filepath.Join(base, "lxc")}
	if err := os.MkdirAll(rt.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := hostconfig.Default()
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "guests")
	cfg.HostRoot = root
	reg := guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir, Log: log.Discard()})
	t.Cleanup(func() {
		for _, id := range reg.IDs() {
			reg.Remove(id)
		}
	})
	real, err := hostagent.New(cfg, hostagent.Options{Runtime: rt, Guests: reg, Name: "pve1"})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := real.Plan(context.Background(), &pb.PlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	model := New("pve1")
	model.GPUs, model.Driver = inv.GetHost().GetGpus(), inv.GetHost().GetDriver()
	if len(model.GPUs) != 2 {
		t.Fatalf("fixture host has %d GPUs, want 2", len(model.GPUs))
	}
	return &contractHost{t: t, root: root, cfg: cfg, rt: rt, reg: reg, real: real, model: model}
}

// add puts c on the model's host and writes its config where the real agent reads it.
func (h *contractHost) add(c Container) {
	h.t.Helper()
	h.model.Add(c)
	if err := os.WriteFile(h.rt.ConfigPath(c.ID), []byte(h.realConfig(c.ID)), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// realConfig is the model's config of container id with the host's paths: the file the
// real agent has where the model has that config (its bind mounts' sources are under the
// host root; dev style's devN entries name the nodes the container sees).
func (h *contractHost) realConfig(id string) string {
	conf := strings.ReplaceAll(h.model.Config(id), "/run/gpupass/guests", h.cfg.GuestSocketDir)
	return strings.ReplaceAll(conf, "lxc.mount.entry: /dev/", "lxc.mount.entry: "+h.root+"/dev/")
}

// TestModelPlansAsTheAgent is the contract between this model and the real host agent:
// the same containers and specs go through the model's plan and hostagent.Agent.Plan (on
// the pve-2gpu fixture host, with the model's GPUs and majors taken from the agent's own
// inventory), and every field the controller's plan output shows must agree. It is what
// keeps the controller's CLI goldens (internal/controller/cli/testdata) true of the
// real agent.
func TestModelPlansAsTheAgent(t *testing.T) {
	h := newContractHost(t)
	root, cfg, real, model := h.root, h.cfg, h.real, h.model
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		have []string // GPUs the config passes now
		spec *pb.ContainerSpec
	}{
		{"add first GPU", nil, &pb.ContainerSpec{Gpus: []string{"0"}, WantState: "running"}},
		{"add second GPU", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"0", "1"}, WantState: "running"}},
		{"swap GPU", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"1"}}},
		{"drop every GPU", []string{"1"}, &pb.ContainerSpec{Gpus: []string{}}},
		{"managed, no GPUs", []string{}, &pb.ContainerSpec{Gpus: []string{}, WantState: "running"}},
		{"first spec, no GPUs", nil, &pb.ContainerSpec{Gpus: []string{}}},
		{"no change", []string{"1"}, &pb.ContainerSpec{Gpus: []string{"1"}, WantState: "running"}},
		{"by uuid and bus id", nil, &pb.ContainerSpec{Gpus: []string{model.GPUs[1].GetUuid(), model.GPUs[0].GetBusId()}}},
		{"dev style", nil, &pb.ContainerSpec{Gpus: []string{"1"}, Style: pb.Style_STYLE_DEV}},
		{"unknown GPU", nil, &pb.ContainerSpec{Gpus: []string{"7"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprint(900 + len(model.containers))
			tt.spec.Id = id
			h.add(Container{ID: id, RunState: "stopped", GPUs: tt.have})
			if tt.have != nil {
				// The config must be what the agent itself writes for have: it plans no change.
				got, err := real.Plan(ctx, &pb.PlanRequest{Containers: []*pb.ContainerSpec{{Id: id, Gpus: tt.have}}})
				if err != nil {
					t.Fatal(err)
				}
				if d := PlanViewOf(got.GetContainers()[0], root, cfg.GuestSocketDir); len(d.Changes) > 0 || d.Error != "" {
					t.Fatalf("the model's rendering of GPUs %v is not what the agent writes: it would change %v %s", tt.have, d.Changes, d.Error)
				}
			}
			resp, err := real.Plan(ctx, &pb.PlanRequest{Containers: []*pb.ContainerSpec{tt.spec}})
			if err != nil {
				t.Fatal(err)
			}
			got := PlanViewOf(resp.GetContainers()[0], root, cfg.GuestSocketDir)
			want := PlanViewOf(model.plan(tt.spec), "", "/run/gpupass/guests")
			if tt.name == "unknown GPU" {
				// Both refuse; the wording is the agent's (the model's names its GPUs alike).
				if got.Error == "" || want.Error == "" {
					t.Fatalf("unknown GPU: agent error %q, model error %q; want both to refuse", got.Error, want.Error)
				}
				got.Error, want.Error = "", ""
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("model and agent plan differently (-model +agent):\n%s", d)
			}
		})
	}
}

// TestModelStatusAsTheAgent holds the model's status of stopped and unknown containers to
// hostagent.Agent.Status's (a running container's status comes from its guest's report and
// the evidence of its processes, which the model stands for; see restart).
func TestModelStatusAsTheAgent(t *testing.T) {
	h := newContractHost(t)
	real, model := h.real, h.model
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		have   []string // nil: no such container
		fleet  []string
		exists bool
	}{
		{"stopped, as the fleet asks", []string{"0"}, []string{"0"}, true},
		{"stopped, fleet asks for more", []string{"0"}, []string{"0", "1"}, true},
		{"stopped, no GPUs yet", []string{}, []string{"1"}, true},
		{"no such container", nil, []string{"0"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprint(800 + len(model.containers))
			spec := &pb.ContainerSpec{Id: id, Gpus: tt.fleet}
			if tt.exists {
				h.add(Container{ID: id, RunState: "stopped", GPUs: tt.have})
			}
			got := StatusViewOf(real.Status(ctx, &pb.StatusRequest{Containers: []*pb.ContainerSpec{spec}}).GetContainers()[0])
			// The watch judges against the specs it is given, as Status does (the model's
			// watch sends its status of the given spec).
			watched := StatusViewOf(firstWatchStatus(t, real, &pb.WatchRequest{Containers: []*pb.ContainerSpec{spec}}))
			want := StatusViewOf(model.StatusOf(id, spec))
			if !tt.exists {
				// Both say the container is unknown, each in the words of its runtime.
				if len(got.Reasons) != 1 || len(want.Reasons) != 1 || len(watched.Reasons) != 1 {
					t.Fatalf("unknown container: agent reasons %q, its watch's %q, model reasons %q; want one each", got.Reasons, watched.Reasons, want.Reasons)
				}
				got.Reasons, watched.Reasons, want.Reasons = nil, nil, nil
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("model and agent report status differently (-model +agent):\n%s", d)
			}
			if d := cmp.Diff(want, watched); d != "" {
				t.Errorf("model's status and agent's watch differ (-model +agent watch):\n%s", d)
			}
		})
	}
}

// TestModelAppliesAsTheAgent holds the model's apply of stopped containers that are to stay
// stopped to hostagent.Agent.Apply's: the same requests go through both, and what the
// controller shows of each container must agree: written, restarted, started, the error
// (its presence: the wording names the host's paths and digests), the status after, the
// plan's changes, and the steps the progress lines name, in order. The config the agent
// wrote is the model's rendering of the container after the apply.
func TestModelAppliesAsTheAgent(t *testing.T) {
	h := newContractHost(t)
	real, model := h.real, h.model
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		have    []string // GPUs the config passes now; nil: never managed
		spec    *pb.ContainerSpec
		badPlan bool // the request expects a digest the config does not have
		fails   bool
	}{
		{"add first GPU", nil, &pb.ContainerSpec{Gpus: []string{"0"}}, false, false},
		{"add second GPU", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"0", "1"}}, false, false},
		{"swap GPU", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"1"}}, false, false},
		{"drop every GPU", []string{"1"}, &pb.ContainerSpec{Gpus: []string{}}, false, false},
		{"first spec, no GPUs", nil, &pb.ContainerSpec{Gpus: []string{}}, false, false},
		{"no change", []string{"1"}, &pb.ContainerSpec{Gpus: []string{"1"}}, false, false},
		{"dev style", nil, &pb.ContainerSpec{Gpus: []string{"1"}, Style: pb.Style_STYLE_DEV}, false, false},
		{"unknown GPU", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"7"}}, false, true},
		{"config changed since the plan", []string{"0"}, &pb.ContainerSpec{Gpus: []string{"1"}}, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprint(700 + len(model.containers))
			tt.spec.Id = id
			h.add(Container{ID: id, RunState: "stopped", GPUs: tt.have})
			if tt.have != nil {
				// A managed container's guest socket directory is there: the apply that
				// managed it made it.
				if _, err := h.reg.Ensure(id); err != nil {
					t.Fatal(err)
				}
			}
			req := &pb.ApplyRequest{Containers: []*pb.ContainerSpec{tt.spec}, TimeoutMs: 5000}
			if tt.badPlan {
				req.ExpectDigest = map[string]string{id: "0123456789abcdef0123456789abcdef"}
			}
			var mu sync.Mutex
			var gotSteps []string
			got := real.Apply(ctx, req, func(cid, step, _ string) {
				mu.Lock()
				defer mu.Unlock()
				if cid == id {
					gotSteps = append(gotSteps, step)
				}
			}).GetContainers()[0]
			var wantSteps []string
			resp, err := model.Apply(ctx, req, func(p *pb.ApplyProgress) {
				if p.GetContainerId() == id {
					wantSteps = append(wantSteps, p.GetStep())
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			want := resp.GetContainers()[0]

			gotV := ApplyViewOf(got, gotSteps, h.root, h.cfg.GuestSocketDir)
			wantV := ApplyViewOf(want, wantSteps, "", "/run/gpupass/guests")
			if tt.fails {
				// Both refuse, each naming its own paths and digests (the model words its
				// errors alike); the status says the error.
				if len(gotV.Status.Reasons) != 1 || len(wantV.Status.Reasons) != 1 {
					t.Fatalf("agent reasons %q, model reasons %q; want one each", gotV.Status.Reasons, wantV.Status.Reasons)
				}
				gotV.Status.Reasons, wantV.Status.Reasons = nil, nil
			}
			if gotV.Failed != tt.fails {
				t.Errorf("agent error %q; want failed %v", got.GetError(), tt.fails)
			}
			if d := cmp.Diff(wantV, gotV); d != "" {
				t.Errorf("model and agent apply differently (-model +agent):\n%s\nagent error %q, model error %q", d, got.GetError(), want.GetError())
			}
			written, err := os.ReadFile(h.rt.ConfigPath(id))
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(h.realConfig(id), string(written)); d != "" {
				t.Errorf("the agent wrote a config other than the model's rendering (-model +agent):\n%s", d)
			}
		})
	}
}

// firstWatchStatus is the status of the first event a's Watch sends for req.
func firstWatchStatus(t *testing.T, a *hostagent.Agent, req *pb.WatchRequest) *pb.ContainerStatus {
	t.Helper()
	// The deadline only ends a watch that sends nothing (a failure).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var first *pb.ContainerStatus
	err := a.Watch(ctx, req, func(ev *pb.WatchEvent) error {
		if first == nil {
			first = ev.GetStatus()
		}
		cancel() // the first events are sent before Watch waits for any
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
