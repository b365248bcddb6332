package main

import (
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

// allowedDeps are the only non-standard packages (or package trees, ending in "/...") the
// guest agent may link: it is a small static binary baked into every GPU container
// template, so a new dependency is a decision made here, not an accident
// (tailscale's tstest/deptest).
var allowedDeps = []string{
	"gpupass/agent-guest",
	"gpupass/internal/atomicfile", // the one atomic write; imports only the standard library
	"gpupass/internal/buildinfo",
	"gpupass/internal/guest",
	"gpupass/internal/log",
	"gpupass/internal/readiness", // the one definition of ready; imports only the protocol
	"gpupass/internal/runner",
	"gpupass/internal/wire",
	"gpupass/proto/gpupass/v1",
	"github.com/coreos/go-systemd/v22/daemon",
	"github.com/hashicorp/yamux",
	"github.com/sirupsen/logrus",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netlink/nl",
	"github.com/vishvananda/netns",
	"golang.org/x/sys/unix",
	"golang.org/x/term",
	"golang.org/x/time/rate",
	"google.golang.org/protobuf/...",
}

// badDeps must never appear, whatever the allow list says: host-side code, the CLI
// framework, metrics, TLS and HTTP (size, and no reason inside a container).
var badDeps = []string{
	"gpupass/internal/hostagent",
	"gpupass/internal/controller",
	"gpupass/internal/passthrough",
	"gpupass/internal/pveconf",
	"gpupass/internal/runtime",
	"gpupass/internal/gpu",
	"gpupass/internal/devrule",
	"gpupass/internal/fleet",
	"gpupass/internal/pki",
	"github.com/spf13/cobra",
	"github.com/spf13/pflag",
	"github.com/prometheus/client_golang/prometheus",
	"go.yaml.in/yaml/v3",
	"net/http",
	"crypto/tls",
	"crypto/x509",
	"runtime/cgo",
}

func TestDeps(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Skipf("go list: %v", err)
	}
	deps := map[string]bool{}
	var unexpected []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, std, _ := strings.Cut(line, " ")
		deps[pkg] = true
		if std == "false" && !allowed(pkg) {
			unexpected = append(unexpected, pkg)
		}
	}
	sort.Strings(unexpected)
	for _, p := range unexpected {
		t.Errorf("gpupass-guest-agent imports %s, which is not in allowedDeps: justify it there or drop it", p)
	}
	for _, p := range badDeps {
		for d := range deps {
			if d == p || strings.HasPrefix(d, p+"/") {
				t.Errorf("gpupass-guest-agent must not import %s (found %s)", p, d)
			}
		}
	}
	if !deps["gpupass/internal/guest"] || !deps["gpupass/internal/wire"] {
		t.Errorf("go list output lacks the agent's own packages: %q", out)
	}
}

func allowed(pkg string) bool {
	for _, a := range allowedDeps {
		if a == pkg {
			return true
		}
		if tree, ok := strings.CutSuffix(a, "/..."); ok && (pkg == tree || strings.HasPrefix(pkg, tree+"/")) {
			return true
		}
	}
	return false
}
