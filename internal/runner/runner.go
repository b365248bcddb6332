// Package runner is the one seam through which gpupass runs external commands (pct,
// lxc-*, nvidia-smi, nvidia-modprobe): the real one uses exec.CommandContext with LC_ALL=C
// and returns a typed error; fakes record a transcript that tests compare.
package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Runner runs one command and returns its standard output.
type Runner interface {
	Run(ctx context.Context, argv ...string) ([]byte, error)
}

// ExitError is returned when a command fails: it carries the argv, the exit code (-1 when
// the command did not run or was killed), the end of its standard error and the end of its
// standard output. pct's start, stop and reboot print the task's messages (a hook's own
// explanation of a failed start) on standard output and only the final error line on
// standard error (pve-common:src/PVE/RESTEnvironment.pm:611-620 sends the worker's
// STDOUT and STDERR into the task log, which the CLI tees to its own STDOUT, :442; only the
// final error goes to STDERR, :504-512), so both are kept.
type ExitError struct {
	Argv     []string
	ExitCode int
	Stderr   string
	Stdout   string
	Err      error
}

// maxStdoutLines is how many of the last standard output lines an error message shows.
const maxStdoutLines = 8

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("run %s: exit %d", strings.Join(e.Argv, " "), e.ExitCode)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	} else if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	if out := lastLines(e.Stdout, maxStdoutLines); out != "" {
		msg += " (output: " + out + ")"
	}
	return msg
}

// lastLines joins the last n non-blank lines of s with " | ".
func lastLines(s string, n int) string {
	var lines []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (e *ExitError) Unwrap() error { return e.Err }

// Exec is the real runner.
type Exec struct {
	// Env is appended to the process environment (after LC_ALL=C).
	Env []string
}

const maxStderr = 4096

// Run implements Runner.
func (x Exec) Run(ctx context.Context, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), x.Env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// A killed command whose child keeps stdout open must not hold us past the deadline.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	code := -1
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	se := stderr.String()
	if len(se) > maxStderr {
		se = se[len(se)-maxStderr:]
	}
	so := stdout.String()
	if len(so) > maxStderr {
		so = so[len(so)-maxStderr:]
	}
	return stdout.Bytes(), &ExitError{Argv: argv, ExitCode: code, Stderr: se, Stdout: so, Err: err}
}
