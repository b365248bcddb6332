package hostagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/journal"
	"gpupass/internal/pveconf"
)

// The crash property: the host agent is SIGKILLed at every step of an apply and of its
// rollback (a real process: this test binary run again as the agent, killing itself at
// the named point), then a new agent starts over the same files and reconciles. Whatever
// the step, the config is byte-identical to either the version before the apply or the
// version it wrote, the journal says which (as-it-was or as-desired), the container's run
// state matches (as it was, or as desired), and nothing is left unfinished.

const (
	envCrashPoint = "GPUPASS_TEST_CRASH_POINT"
	envCrashDirs  = "GPUPASS_TEST_CRASH_DIRS" // root, bin, base: the fault host's files
	envCrashWant  = "GPUPASS_TEST_CRASH_WANT_RUNNING"
)

// crashScenario is one apply and the points it passes.
type crashScenario struct {
	name    string
	running bool              // container 901 runs before the apply
	faults  map[string]string // fake pct fault files
	points  []string
}

var crashScenarios = []crashScenario{
	{name: "RestartRunning", running: true,
		points: []string{"begin", "written-unjournaled", "written", "restart-journaled", "restarted", "not-ready"}},
	{name: "StartStopped", running: false,
		points: []string{"begin", "written-unjournaled", "written", "restart-journaled", "restarted", "not-ready"}},
	{name: "RebootFailsRollback", running: true, faults: map[string]string{"fail-reboot": "1"},
		points: []string{"begin", "written-unjournaled", "written", "restart-journaled", "rollback-journaled", "undo-config", "undo-guest-dir", "undo-run-state"}},
	{name: "StartFailsRollback", running: false, faults: map[string]string{"fail-start": "1"},
		points: []string{"begin", "written-unjournaled", "written", "restart-journaled", "rollback-journaled", "undo-config", "undo-guest-dir", "undo-run-state"}},
}

// TestCrashHelper is the agent process of TestApplyKilledAtEveryStep; it runs only there.
func TestCrashHelper(t *testing.T) {
	point := os.Getenv(envCrashPoint)
	if point == "" {
		t.Skip("runs only as the agent process of TestApplyKilledAtEveryStep")
	}
	dirs := strings.Split(os.Getenv(envCrashDirs), "\n")
	h := reopenFaultHost(t, dirs[0], dirs[1], dirs[2])
	crashPoint = func(p string) {
		if p == point {
			fmt.Fprintf(os.Stderr, "crash point %s reached: SIGKILL\n", p)
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
	h.apply(os.Getenv(envCrashWant) == "1", 300*time.Millisecond)
	t.Errorf("crash point %q was never reached", point)
}

// killedApply runs an apply of GPU 0 to container 901 in a separate agent process that
// is SIGKILLed at point, and returns the intent of the operation it left unfinished.
func killedApply(t *testing.T, h *faultHost, point string, wantRunning bool) journal.Entry {
	t.Helper()
	base := filepath.Dir(h.cfg.StateDir)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashPoint+"="+point, envCrashDirs+"="+strings.Join([]string{h.root, h.bin, base}, "\n"), envCrashWant+"="+map[bool]string{true: "1"}[wantRunning])
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !ee.Sys().(syscall.WaitStatus).Signaled() || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the agent was not killed at %q (%v):\n%s", point, err, out)
	}
	pending, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "journal", "*.jsonl"))
	if len(pending) != 1 {
		t.Fatalf("killed at %q: %d unfinished journals, want 1:\n%s", point, len(pending), out)
	}
	es, err := journal.ReadFile(pending[0])
	if err != nil || len(es) == 0 || es[0].Step != journal.StepBegin {
		t.Fatalf("killed at %q: journal %s: %v %+v", point, pending[0], err, es)
	}
	return es[0]
}

func TestApplyKilledAtEveryStep(t *testing.T) {
	old := reconcileReadyTimeout
	t.Cleanup(func() { reconcileReadyTimeout = old }) // after the parallel subtests
	reconcileReadyTimeout = 300 * time.Millisecond
	total := 0
	for _, sc := range crashScenarios {
		for _, point := range sc.points {
			total++
			t.Run(sc.name+"/"+point, func(t *testing.T) {
				t.Parallel()
				h := newFaultHost(t, sc.running)
				for name, v := range sc.faults {
					h.setFile(name, v)
				}
				before, _ := os.ReadFile(h.conf)
				beforeState := h.file("state-901")
				intent := killedApply(t, h, point, true)
				if intent.Digest != pveconf.Digest(before) || intent.After == "" || intent.After == intent.Digest || intent.Backup == "" {
					t.Fatalf("intent %+v: want the digest before, the digest to write and the backup, journaled before the write", intent)
				}

				h2 := reopenFaultHost(t, h.root, h.bin, filepath.Dir(h.cfg.StateDir))
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				if err := h2.agent.Reconcile(ctx); err != nil {
					t.Fatalf("reconcile: %v", err)
				}
				after, _ := os.ReadFile(h.conf)
				state := h.file("state-901")
				outcome := doneOutcome(t, h2, intent.Op)
				switch outcome.Outcome {
				case journal.OutcomeAsWas:
					if !bytes.Equal(after, before) {
						t.Errorf("journal says as-it-was, config is not the version before:\n%s", after)
					}
					if state != beforeState {
						t.Errorf("journal says as-it-was, container is %s, was %s", state, beforeState)
					}
				case journal.OutcomeDesired:
					if pveconf.Digest(after) != intent.After {
						t.Errorf("journal says as-desired, config is not the version written (digest %s, want %s):\n%s", short(pveconf.Digest(after)), short(intent.After), after)
					}
					if state != "running" {
						t.Errorf("journal says as-desired, container is %s, want running", state)
					}
				default:
					t.Errorf("journal outcome %q (%s), want as-it-was or as-desired", outcome.Outcome, outcome.Detail)
				}
				if open, _ := filepath.Glob(filepath.Join(h2.cfg.StateDir, "journal", "*.jsonl")); len(open) != 0 {
					t.Errorf("unfinished journals after reconcile: %v", open)
				}
				if q, _ := filepath.Glob(filepath.Join(h2.cfg.StateDir, "journal", "quarantine", "*")); len(q) != 0 {
					t.Errorf("quarantined: %v", q)
				}
				t.Logf("killed at %s: %s (%s); container %s", point, outcome.Outcome, outcome.Detail, state)
			})
		}
	}
	t.Logf("%d scenarios x their steps: %d kill points", len(crashScenarios), total)
}

// doneOutcome is the done entry of operation op.
func doneOutcome(t *testing.T, h *faultHost, op string) journal.Entry {
	t.Helper()
	es, err := journal.ReadFile(filepath.Join(h.cfg.StateDir, "journal", "done", op+".jsonl"))
	if err != nil || len(es) == 0 {
		t.Fatalf("operation %s not finished: %v", op, err)
	}
	last := es[len(es)-1]
	if last.Step != journal.StepDone {
		t.Fatalf("operation %s ends with %q", op, last.Step)
	}
	return last
}
