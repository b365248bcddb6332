package hostdriver

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestHostPathStaysInRoot: under a host root, links resolve inside it, absolute ones and
// ".." alike; a link whose target exists only on this machine is "not found", never this
// machine's file; the live host's paths are taken as they are.
func TestHostPathStaysInRoot(t *testing.T) {
	root := t.TempDir()
	if _, err := os.Stat("/etc/os-release"); err != nil {
		t.Fatalf("this machine has no /etc/os-release to escape to: %v", err)
	}
	write(t, filepath.Join(root, "/usr/local/nvidia/share/icd.json"), "the host's\n", 0o644)
	for link, target := range map[string]string{
		"/usr/share/vulkan/icd.d/in-root.json":   "/usr/local/nvidia/share/icd.json",
		"/usr/share/vulkan/icd.d/dotdot.json":    "../../../../../../../usr/local/nvidia/share/icd.json",
		"/usr/share/vulkan/icd.d/escape.json":    "/etc/os-release",
		"/usr/share/vulkan/icd.d/escape-up.json": "../../../../../../../../etc/os-release",
	} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, link)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"/usr/share/vulkan/icd.d/in-root.json", "/usr/share/vulkan/icd.d/dotdot.json"} {
		got, err := hostPath(root, p)
		if err != nil || got != filepath.Join(root, "/usr/local/nvidia/share/icd.json") {
			t.Errorf("hostPath(%s) = %q, %v; want the file under the root", p, got, err)
		}
	}
	for _, p := range []string{"/usr/share/vulkan/icd.d/escape.json", "/usr/share/vulkan/icd.d/escape-up.json", "/no/such/file"} {
		got, err := hostPath(root, p)
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("hostPath(%s) = %q, %v; want not found (the target is not under the root)", p, got, err)
		}
		if _, err := hostStat(root, p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("hostStat(%s): %v, want not found", p, err)
		}
	}
	for _, live := range []string{"", "/"} {
		if got, err := hostPath(live, "/etc/os-release"); err != nil || got != "/etc/os-release" {
			t.Errorf("hostPath(%q, /etc/os-release) = %q, %v; want the path itself", live, got, err)
		}
	}
}
