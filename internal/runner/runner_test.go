package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestExitErrorKeepsStdout: a failing command that explains itself on standard output
// (pct start: the task log, the hook's message) and ends with one line on standard error
// gives an error carrying both.
func TestExitErrorKeepsStdout(t *testing.T) {
	script := `echo "run_buffer: 571 Script exited with status 1"
echo "lxc_init: 845 Failed to run lxc.hook.pre-start for container \"901\""
echo "startup for container '901' failed" >&2
exit 255`
	_, err := Exec{}.Run(context.Background(), "sh", "-c", script)
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("err = %v, want *ExitError", err)
	}
	if ee.ExitCode != 255 || !strings.Contains(ee.Stdout, "Script exited with status 1") {
		t.Errorf("exit %d, stdout %q", ee.ExitCode, ee.Stdout)
	}
	msg := err.Error()
	for _, want := range []string{"exit 255", "startup for container '901' failed", "Failed to run lxc.hook.pre-start", "run_buffer: 571"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}

func TestLastLines(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\n\n  b  \n", 3, "a | b"},
		{"1\n2\n3\n4\n", 2, "3 | 4"},
	} {
		if got := lastLines(tc.in, tc.n); got != tc.want {
			t.Errorf("lastLines(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}
