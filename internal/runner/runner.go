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
// the command did not run or was killed) and the end of its standard error.
type ExitError struct {
	Argv     []string
	ExitCode int
	Stderr   string
	Err      error
}

func (e *ExitError) Error() string {
	msg := fmt.Sprintf("run %s: exit %d", strings.Join(e.Argv, " "), e.ExitCode)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	} else if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
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
	return stdout.Bytes(), &ExitError{Argv: argv, ExitCode: code, Stderr: se, Err: err}
}
