package runtime

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/lxctest"
	"gpupass/internal/runner"
)

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }

func newLXC(t *testing.T, c *lxctest.Container) *LXC {
	return &LXC{Runner: runner.Exec{}, LXCPath: c.LXCPath(), StateDir: t.TempDir(), StopTimeout: 5 * time.Second}
}

// TestLXCLifecycle runs the lxc runtime against real containers: state, start, the
// start-time record (exact, unaffected by later edits, refused for an init it did not
// start), restart, stop, list.
func TestLXCLifecycle(t *testing.T) {
	for _, unpriv := range []bool{false, true} {
		name := map[bool]string{false: "privileged", true: "unprivileged"}[unpriv]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			c := lxctest.NewContainer(t, lxctest.Spec{Unprivileged: unpriv})
			rt := newLXC(t, c)
			id := c.Name()

			if d := cmp.Diff(rt.ConfigPath(id), c.ConfigPath()); d != "" {
				t.Errorf("ConfigPath (-got +want):\n%s", d)
			}
			mustState(t, rt, id, false)
			if _, err := startedConfig(ctx, rt, id); !errors.Is(err, ErrNoStartedConfig) {
				t.Errorf("StartedConfig of a stopped container: %v, want ErrNoStartedConfig", err)
			}

			if err := rt.Start(ctx, id); err != nil {
				t.Fatal(err)
			}
			st := mustState(t, rt, id, true)
			if pid := c.InitPID(t); st.InitPID != pid {
				t.Errorf("InitPID %d, lxc-info says %d", st.InitPID, pid)
			}
			if err := rt.Start(ctx, id); err != nil {
				t.Errorf("Start of a running container: %v", err)
			}
			before := readFile(t, c.ConfigPath())
			mustStarted(t, rt, id, before)

			// An edit after the start changes the config, not the record.
			c.AppendConfig(t, "lxc.environment = EDITED=1")
			mustStarted(t, rt, id, before)

			if err := rt.Restart(ctx, id); err != nil {
				t.Fatal(err)
			}
			st2 := mustState(t, rt, id, true)
			if st2.InitPID == st.InitPID {
				t.Errorf("restart kept init pid %d", st.InitPID)
			}
			after := readFile(t, c.ConfigPath())
			if !strings.Contains(after, "EDITED=1") {
				t.Fatalf("config lost the edit:\n%s", after)
			}
			mustStarted(t, rt, id, after)

			if err := rt.Stop(ctx, id); err != nil {
				t.Fatal(err)
			}
			mustState(t, rt, id, false)
			if err := rt.Stop(ctx, id); err != nil {
				t.Errorf("Stop of a stopped container: %v", err)
			}

			// Started by someone else: the record names another init.
			c.Start(t)
			if _, err := startedConfig(ctx, rt, id); !errors.Is(err, ErrNoStartedConfig) || !strings.Contains(err.Error(), "not the init") {
				t.Errorf("StartedConfig after a foreign start: %v, want ErrNoStartedConfig (not the init ...)", err)
			}
			// Restart by the runtime makes the record trustworthy again.
			if err := rt.Restart(ctx, id); err != nil {
				t.Fatal(err)
			}
			mustStarted(t, rt, id, after)

			// A rollback's undo of a start forgets its record: no trusted record remains.
			if err := rt.ForgetStart(id); err != nil {
				t.Fatal(err)
			}
			if _, err := startedConfig(ctx, rt, id); !errors.Is(err, ErrNoStartedConfig) {
				t.Errorf("StartedConfig after ForgetStart: %v, want ErrNoStartedConfig", err)
			}
		})
	}
}

// TestLXCStopKillsAfterTimeout: an init that ignores the halt signal is killed once the
// stop timeout passes.
func TestLXCStopKillsAfterTimeout(t *testing.T) {
	ctx := context.Background()
	c := lxctest.NewContainer(t, lxctest.Spec{ExtraConfig: []string{"lxc.signal.halt = SIGPWR"}})
	rt := newLXC(t, c)
	rt.StopTimeout = time.Second
	if err := rt.Start(ctx, c.Name()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := rt.Stop(ctx, c.Name()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Errorf("stop took %v, want about the 1s timeout", d)
	}
	mustState(t, rt, c.Name(), false)
}

func TestLXCErrors(t *testing.T) {
	ctx := context.Background()
	c := lxctest.NewContainer(t, lxctest.Spec{ExtraConfig: []string{"lxc.init.cmd = /bin/does-not-exist"}})
	rt := newLXC(t, c)
	if _, err := rt.State(ctx, "gpupass-no-such-ct"); !errors.Is(err, ErrNotFound) {
		t.Errorf("State of a missing container: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"", "..", "a/b", "a b"} {
		if _, err := rt.State(ctx, id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("State(%q): %v, want ErrInvalidID", id, err)
		}
	}
	err := rt.Start(ctx, c.Name())
	if err == nil {
		t.Fatal("start with a missing init: no error")
	}
	if !strings.Contains(err.Error(), `Failed to exec "/bin/does-not-exist"`) {
		t.Errorf("start error does not name the cause from the LXC log: %v", err)
	}
	if _, serr := os.Stat(rt.startedPath(c.Name())); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("a failed start left a start-time config: %v", serr)
	}
	if _, err := startedConfig(ctx, rt, c.Name()); !errors.Is(err, ErrNoStartedConfig) {
		t.Errorf("StartedConfig after a failed start: %v", err)
	}
}

func mustState(t *testing.T, rt *LXC, id string, running bool) State {
	t.Helper()
	st, err := rt.State(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if st.Running != running || (st.InitPID > 0) != running {
		t.Fatalf("state %+v, want running=%v", st, running)
	}
	return st
}

func mustStarted(t *testing.T, rt *LXC, id, want string) {
	t.Helper()
	got, err := startedConfig(context.Background(), rt, id)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(got), want); d != "" {
		t.Errorf("StartedConfig (-got +want):\n%s", d)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
