package hostagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/guestchan"
	"gpupass/internal/hostconfig"
	"gpupass/internal/runner"
)

// The persistence mode comes from nvidia-smi on the real host root only, once a minute
// at most, and only when host.Inventory asks (plan, apply and status reuse it).
func TestPersistenceModes(t *testing.T) {
	bin := t.TempDir()
	smi := filepath.Join(bin, "nvidia-smi")
	if err := os.WriteFile(smi, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	query := smi + " " + strings.Join(gpu.PersistenceArgs, " ")
	newAgent := func(root string) (*Agent, *runner.Fake) {
		cfg := hostconfig.Default()
		cfg.HostRoot = root
		cfg.StateDir = filepath.Join(t.TempDir(), "state")
		cfg.GuestSocketDir = filepath.Join(t.TempDir(), "g")
		a, err := New(cfg, Options{Runtime: newMemRuntime(t.TempDir()), Guests: guestchan.New(guestchan.Config{Dir: cfg.GuestSocketDir})})
		if err != nil {
			t.Fatal(err)
		}
		f := &runner.Fake{Responses: map[string][]runner.Response{query: {{Stdout: "0, 00000000:01:00.0, Enabled\n1, 00000000:41:00.0, Disabled\n"}}}}
		a.persist.runner = f
		return a, f
	}
	ctx := context.Background()
	want := map[string]string{"0000:01:00.0": gpu.PersistenceEnabled, "0000:41:00.0": gpu.PersistenceDisabled}

	a, f := newAgent("/")
	if got := a.persistenceModes(ctx, false); got != nil {
		t.Errorf("before any inventory: %v, want unknown", got)
	}
	for i := 0; i < 3; i++ {
		if diff := cmp.Diff(a.persistenceModes(ctx, true), want); diff != "" {
			t.Errorf("read %d (-got +want)\n%s", i, diff)
		}
	}
	if diff := cmp.Diff(a.persistenceModes(ctx, false), want); diff != "" {
		t.Errorf("plan/status reuse (-got +want)\n%s", diff)
	}
	if diff := cmp.Diff(f.Transcript(), []string{query}); diff != "" {
		t.Errorf("nvidia-smi runs (-got +want): once a minute at most\n%s", diff)
	}

	sim, f := newAgent(t.TempDir())
	if got := sim.persistenceModes(ctx, true); got != nil || len(f.Transcript()) != 0 {
		t.Errorf("simulated host root: %v after %q, want unknown without running nvidia-smi", got, f.Transcript())
	}
}
