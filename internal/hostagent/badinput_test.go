package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	pb "gpupass/proto/gpupass/v1"
)

// Bad inputs reach the daemon too: each is refused by apply with an error naming what is
// wrong, and nothing is written, backed up or restarted.
func TestApplyRefusesBadConfigs(t *testing.T) {
	tests := []struct {
		name string
		// setup damages the host's 901.conf and returns the file whose bytes must not change
		// and those bytes.
		setup func(t *testing.T, h *faultHost) (string, string)
		want  []string
	}{
		{"a NUL byte", func(t *testing.T, h *faultHost) (string, string) {
			bad := strings.Replace(origConf, "cores: 4\n", "cores: 4\x00lxc.mount.entry: /etc etc none bind\n", 1)
			h.writeConf(bad)
			return h.conf, bad
		}, []string{"line 3", "NUL byte", "left untouched"}},
		{"a link out of the config directory", func(t *testing.T, h *faultHost) (string, string) {
			outside := filepath.Join(h.root, "etc", "elsewhere.conf")
			if err := os.WriteFile(outside, []byte(origConf), 0o640); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(h.conf); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, h.conf); err != nil {
				t.Fatal(err)
			}
			return outside, origConf
		}, []string{"links to", "outside", "replace the link with the file itself"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFaultHost(t, true)
			file, want := tt.setup(t, h)
			res, _ := h.apply(false, time.Second)
			wantContains(t, "error", res.GetError(), tt.want...)
			if b, _ := os.ReadFile(file); string(b) != want {
				t.Errorf("%s changed:\n%q", file, b)
			}
			if a := h.pctActions(); len(a) != 0 {
				t.Errorf("pct was asked to %q, want nothing", a)
			}
			if ents, _ := os.ReadDir(filepath.Join(h.cfg.StateDir, "backups")); len(ents) != 0 {
				t.Errorf("backups written: %v", ents)
			}
		})
	}
}

// style: dev on the lxc runtime is refused at plan time: plain LXC ignores devN keys.
func TestPlanRefusesDevStyleOnLXC(t *testing.T) {
	base := t.TempDir()
	cfg := hostconfig.Default()
	cfg.Runtime = hostconfig.RuntimeLXC
	cfg.StateDir = filepath.Join(base, "state")
	cfg.GuestSocketDir = filepath.Join(base, "g")
	cfg.HostRoot = gputest.SimulatedRoot(t, gpu.SimOptions{GPUs: 1})
	rt := newMemRuntime(filepath.Join(base, "lxc"), "gpu1")
	conf := rt.ConfigPath("gpu1")
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte("lxc.uts.name = gpu1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, Options{Runtime: rt, Guests: guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := a.Plan(ctx, &pb.PlanRequest{Containers: []*pb.ContainerSpec{{Id: "gpu1", Gpus: []string{"0"}, Style: pb.Style_STYLE_DEV}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetContainers()) != 1 {
		t.Fatalf("%d plans", len(resp.GetContainers()))
	}
	wantContains(t, "plan error", resp.GetContainers()[0].GetError(), "style dev", "plain LXC ignores")
}
