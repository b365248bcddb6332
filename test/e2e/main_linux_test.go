package e2e

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"gpupass/internal/lxctest"
)

// defaultParallel is how many scenarios run at once unless -test.parallel says otherwise:
// they mostly wait on processes and containers, so more than GOMAXPROCS (2 in CI) helps.
const defaultParallel = 6

func TestMain(m *testing.M) {
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "test.parallel" {
			explicit = true
		}
	})
	if !explicit {
		_ = flag.Set("test.parallel", strconv.Itoa(defaultParallel))
	}
	// Always a private mount namespace: the PVE lab tests (pvelab_linux_test.go) bind GPU
	// fixtures over /proc files, which the rest of the machine must not see.
	lxctest.PrivateCgroup2Main(m)
}

// bins are the three gpupass binaries, built from this checkout for each run.
type bins struct {
	Controller, HostAgent, GuestAgent string
}

// repoRoot is the module root (this package is test/e2e).
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

// buildBinaries builds bin/gpupass, bin/gpupass-host-agent and the static
// bin/gpupass-guest-agent into dir (as `make build` does, without touching bin/), so the
// suite always tests this checkout. The Go build cache makes it quick after `make build`.
func buildBinaries(t testing.TB, dir string) bins {
	t.Helper()
	root := repoRoot(t)
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	b := bins{
		Controller: filepath.Join(dir, "gpupass"),
		HostAgent:  filepath.Join(dir, "gpupass-host-agent"),
		GuestAgent: filepath.Join(dir, "gpupass-guest-agent"),
	}
	for _, x := range []struct {
		out, pkg string
		static   bool
	}{{b.Controller, "./controller", false}, {b.HostAgent, "./agent-host", false}, {b.GuestAgent, "./agent-guest", true}} {
		cmd := exec.Command(goBin, "build", "-buildvcs=false", "-trimpath", "-ldflags", "-X gpupass/internal/buildinfo.Version=e2e", "-o", x.out, x.pkg)
		cmd.Dir = root
		cmd.Env = os.Environ()
		if x.static {
			cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("e2e: go build %s: %v\n%s", x.pkg, err, out)
		}
	}
	return b
}
