package pvelab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
)

// Paths of the lab (test/pvelab/lib.sh names the same ones).
const (
	EtcPVE      = "/etc/pve"
	LXCPath     = "/var/lib/lxc"
	TemplateDir = "/var/lib/vz/template/cache"
	RunDir      = "/run/gpupass-pvelab"
	// BaseTemplate is the plain busybox template setup.sh builds.
	BaseTemplate = "gpupass-busybox.tar.gz"
	setupHint    = "set up the PVE lab first: bash test/pvelab/setup.sh (as root)"
)

// Main runs the tests of m in a private mount namespace with pure cgroup2 on /sys/fs/cgroup
// (lxctest.PrivateCgroup2Main): the mount of /etc/pve that setup.sh's pmxcfs made is
// inherited, and pct, the systemctl shim and lxc-start all run in that namespace.
func Main(m *testing.M) { lxctest.PrivateCgroup2Main(m) }

var lab struct {
	once sync.Once
	pct  string
	mode int
	err  error
}

// Require skips the test (fails it under CI=true) unless the lab is usable from this process:
// root, pct on PATH, /etc/pve mounted by pmxcfs, a private mount namespace (Main) and PVE
// choosing cgroup mode 2. It logs the mode PVE chose.
func Require(t testing.TB) {
	t.Helper()
	testenv.RequireRoot(t)
	lab.once.Do(func() { lab.pct, lab.mode, lab.err = probe(true) })
	if lab.err != nil {
		testenv.Skip(t, "PVE lab unavailable: "+lab.err.Error()+"; "+setupHint)
	}
	t.Logf("pvelab: PVE::CGroup::cgroup_mode() = %d (pure cgroup2, PVE 9's layout)", lab.mode)
}

// CgroupMode is what PVE::CGroup::cgroup_mode() answers in this process (after Require).
func CgroupMode() int { return lab.mode }

// probe checks the lab from this process; testBinary also wants the private mount namespace
// that Main makes for a test binary.
func probe(testBinary bool) (pct string, mode int, err error) {
	pct, err = exec.LookPath("pct")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/pct"); serr != nil {
			return "", 0, errors.New("pct is not installed")
		}
		pct = "/usr/sbin/pct"
	}
	var st unix.Statfs_t
	if err := unix.Statfs(EtcPVE, &st); err != nil || st.Type != unix.FUSE_SUPER_MAGIC {
		return "", 0, errors.New("/etc/pve is not mounted (pmxcfs is not running)")
	}
	if testBinary && !lxctest.InPrivateNS() {
		return "", 0, errors.New("the test binary is not in a private mount namespace: call pvelab.Main(m) from TestMain")
	}
	mode, err = probeMode()
	return pct, mode, err
}

// probeMode asks PVE which cgroup mode it sees from this mount namespace; the lab wants 2.
func probeMode() (int, error) {
	out, err := exec.Command("perl", "-MPVE::CGroup", "-e", "print PVE::CGroup::cgroup_mode()").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("ask PVE for its cgroup mode: %v: %s", err, bytes.TrimSpace(out))
	}
	if string(out) != "2" {
		return 0, fmt.Errorf("PVE chose cgroup mode %q here, the lab wants 2 (pure cgroup2)", out)
	}
	return 2, nil
}

// Result is one pct call: what ran and what it printed.
type Result struct {
	Argv           []string
	Stdout, Stderr string
	Code           int
	Took           time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("%s: exit %d after %s\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Argv, " "), r.Code, r.Took.Round(time.Millisecond), r.Stdout, r.Stderr)
}

// pctTimeout bounds one pct call; pct start/stop of a busybox container take seconds.
const pctTimeout = 3 * time.Minute

// Pct runs the real pct with args and returns what happened, whatever the exit code; it
// fails the test only when pct cannot be run at all. The call is logged.
func Pct(t testing.TB, args ...string) Result {
	t.Helper()
	r, err := pct(args...)
	if err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	t.Logf("pvelab: pct %s -> exit %d (%s)", strings.Join(args, " "), r.Code, r.Took.Round(time.Millisecond))
	return r
}

// MustPct is Pct that fails the test unless pct exits 0.
func MustPct(t testing.TB, args ...string) Result {
	t.Helper()
	r := Pct(t, args...)
	if r.Code != 0 {
		t.Fatalf("pvelab: %s", r)
	}
	return r
}

func pct(args ...string) (Result, error) {
	bin := lab.pct
	if bin == "" {
		bin = "pct"
	}
	ctx, cancel := context.WithTimeout(context.Background(), pctTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := Result{Argv: append([]string{"pct"}, args...), Stdout: stdout.String(), Stderr: stderr.String(), Took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	case err != nil:
		return r, fmt.Errorf("run pct %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}
