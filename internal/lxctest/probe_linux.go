package lxctest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var probe struct {
	mu   sync.Mutex
	dir  string
	path string
}

// ProbePath is where tests usually bind the probe inside a container.
const ProbePath = "/usr/local/bin/probe"

// Probe returns the path of a static probe binary (gpupass/internal/lxctest/probe), built
// once per test process with CGO_ENABLED=0, that unprivileged containers can execute. Bind
// it into a container ({Probe(t), ProbePath}) to open nodes, stat them or dial a socket.
func Probe(t testing.TB) string {
	t.Helper()
	probe.mu.Lock()
	defer probe.mu.Unlock()
	if probe.path != "" {
		return probe.path
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "/usr/local/go/bin/go"
		}
	}
	dir, err := os.MkdirTemp("", "lxctest-probe-")
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	out := filepath.Join(dir, "probe")
	cmd := exec.Command(goBin, "build", "-o", out, "gpupass/internal/lxctest/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		t.Fatalf("lxctest: build probe: %v\n%s", err, b)
	}
	probe.dir, probe.path = dir, out
	return out
}

func removeProbeDir() {
	probe.mu.Lock()
	defer probe.mu.Unlock()
	if probe.dir != "" {
		if err := os.RemoveAll(probe.dir); err != nil {
			fmt.Fprintf(os.Stderr, "lxctest: %v\n", err)
		}
		probe.dir, probe.path = "", ""
	}
}
