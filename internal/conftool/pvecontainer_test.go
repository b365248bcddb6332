package conftool

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
)

// The line rules of PVE's parse_pct_config in strict mode
// (pve-container:src/PVE/LXC/Config.pm:1156-1214): every non-blank line is a section
// header, a '#' description line, a raw lxc.* key with ':' or '=', "description:",
// "delete:" (only in [pve:pending]) or "key: value" with a key of [a-z][a-z_]*\d*. A plain
// LXC "dev0 = ..." line fails it.
var (
	pvePending  = regexp.MustCompile(`(?i)^\[pve:pending\]\s*$`)
	pveSnapshot = regexp.MustCompile(`(?i)^\[([a-z][a-z0-9_\-]+)\]\s*$`)
	pveLXCKey   = regexp.MustCompile(`^(lxc\.[a-z0-9_\-\.]+)(:|\s*=)\s*(.*?)\s*$`)
	pveDelete   = regexp.MustCompile(`^delete:\s*(.*\S)\s*$`)
	pveKey      = regexp.MustCompile(`^([a-z][a-z_]*\d*):\s*(.+?)\s*$`)
)

func pveStrictCheck(b []byte) error {
	section := ""
	for i, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.TrimSpace(line) == "":
		case pvePending.MatchString(line):
			section = "pending"
		case pveSnapshot.MatchString(line):
			section = "snapshot"
		case strings.HasPrefix(line, "#"), pveLXCKey.MatchString(line):
		case pveDelete.MatchString(line):
			if section != "pending" {
				return fmt.Errorf("line %d %q: property 'delete' is only allowed in [pve:pending]", i+1, line)
			}
		case pveKey.MatchString(line):
		default:
			return fmt.Errorf("line %d %q: unable to parse config", i+1, line)
		}
	}
	return nil
}

// rawFirst is what hand-written GPU scripts put at the top of a PVE config.
const rawFirst = "lxc.cgroup2.devices.allow = c 10:200 rwm\nlxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file 0 0\n"

// TestPVEContainerConfigs: configs from pve-container's own tests (testdata/pve-container),
// raw lxc.* lines first, under etc/pve: read as PVE configs (not as plain LXC, which would
// add "dev0 = ..." lines PVE cannot parse), written so that PVE's strict line rules hold,
// and idempotent.
func TestPVEContainerConfigs(t *testing.T) {
	files, err := filepath.Glob("testdata/pve-container/*.conf")
	if err != nil || len(files) != 11 {
		t.Fatalf("want the 11 fixtures of testdata/pve-container, got %d (%v)", len(files), err)
	}
	e := env{
		discover: func(string) (*gpu.Inventory, error) {
			inv, err := gputest.Discover(t, "pve-2gpu")
			if err != nil {
				return nil, err
			}
			inv.Root = "/"
			return inv, nil
		},
		now: fixedNow,
	}
	for _, f := range files {
		for _, style := range []string{"raw", "dev"} {
			name := strings.TrimSuffix(filepath.Base(f), ".conf") + "_" + style
			t.Run(name, func(t *testing.T) {
				src, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				in := append([]byte(rawFirst), src...)
				if err := pveStrictCheck(in); err != nil {
					t.Fatalf("fixture fails PVE's rules before any edit: %v", err)
				}
				root := t.TempDir()
				conf := filepath.Join(root, "etc/pve/lxc/901.conf")
				if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(conf, in, 0o640); err != nil {
					t.Fatal(err)
				}
				args := []string{"apply", "--conf", conf, "--gpus", "0", "--style", style, "--state-dir", filepath.Join(root, "state"), "--host-root", root}
				code, _, stderr := runCLI(t, e, args)
				if code != 0 {
					t.Fatalf("apply: exit %d\n%s", code, stderr)
				}
				out, _ := os.ReadFile(conf)
				golden(t, "pve-container_"+name, string(out))
				if err := pveStrictCheck(out); err != nil {
					t.Errorf("written config fails PVE's parser: %v\n%s", err, out)
				}
				if !bytes.HasPrefix(out, []byte(rawFirst)) && style == "dev" {
					t.Errorf("the unmanaged raw lines at the top changed:\n%s", out)
				}
				if i := bytes.Index(out, []byte("\n[")); i >= 0 && !bytes.Equal(out[i:], in[bytes.Index(in, []byte("\n[")):]) {
					t.Errorf("a snapshot section changed")
				}
				plan := []string{"plan", "--conf", conf, "--gpus", "0", "--style", style, "--host-root", root}
				if code, stdout, stderr := runCLI(t, e, plan); code != 0 {
					t.Errorf("plan after apply: exit %d\n%s%s", code, stdout, stderr)
				}
			})
		}
	}
}

func TestPVEStrictCheck(t *testing.T) {
	for name, tc := range map[string]struct {
		in string
		ok bool
	}{
		"pve":               {"arch: amd64\nlxc.mount.entry = a b\n[snap1]\nmemory: 1\n[pve:pending]\ndelete: cores\n", true},
		"lxc style dev0":    {"arch: amd64\ndev0 = /dev/nvidia0\n", false},
		"delete in main":    {"arch: amd64\ndelete: cores\n", false},
		"digit first key":   {"9x: 1\n", false},
		"comment, blank":    {"#a\n\n   \narch: amd64\n", true},
		"one letter header": {"arch: amd64\n[a]\n", false},
	} {
		if err := pveStrictCheck([]byte(tc.in)); (err == nil) != tc.ok {
			t.Errorf("%s: pveStrictCheck = %v, want ok %v", name, err, tc.ok)
		}
	}
}
