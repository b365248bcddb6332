// Package testenv decides whether tests that need root, LXC or other host facilities run:
// they skip with a message locally, and fail instead of skipping when CI=true.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether CI=true is set.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skip skips the test with the reason, or fails it when running in CI.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required in CI (CI=true) but unavailable: %s", reason)
	}
	t.Skipf("skipping: %s (runs for real in CI)", reason)
}

// RequireRoot skips (or fails in CI) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireCommands skips (or fails in CI) unless every command is on PATH.
func RequireCommands(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if _, err := exec.LookPath(c); err != nil {
			Skip(t, "needs "+c+" on PATH")
		}
	}
}

// RequireLXC skips (or fails in CI) unless the test runs as root with the LXC tools.
func RequireLXC(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	RequireCommands(t, "lxc-start", "lxc-stop", "lxc-info", "lxc-attach")
}
