package pve

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gpupass/internal/pvelab"
)

// TestParseStrict: PVE's own parser (parse_pct_config, strict) accepts what pct wrote and
// refuses lines PVE cannot parse, with PVE's message: the judge the other tests use.
func TestParseStrict(t *testing.T) {
	pvelab.Require(t)
	const base = "arch: amd64\nhostname: ai-901\nmemory: 128\nostype: debian\nrootfs: local:901/subvol-901-disk-0.subvol,size=0T\n"
	for _, tc := range []struct {
		name, conf string
		wantErr    string // substring of PVE's message; "" = accepted
	}{
		{"plain", base, ""},
		{"dev style", base + "dev0: /dev/nvidia0,gid=44,mode=0666\ndev1: mode=0666,path=/dev/nvidiactl\n", ""},
		{"raw style", base + "lxc.cgroup2.devices.allow: c 195:* rwm\nlxc.mount.entry: /dev/nvidia0 dev/nvidia0 none bind,optional,create=file\n", ""},
		{"raw style with =", base + "lxc.cgroup2.devices.allow = c 195:* rwm\n", ""},
		{"pending and snapshot", base + "\n[pve:pending]\nmemory: 256\n\n[snap1]\nmemory: 64\n", ""},
		{"lxc-style devN", base + "dev0 = /dev/nvidia0\n", "unable to parse config: dev0 = /dev/nvidia0"},
		{"unknown key", base + "gpus: 0\n", "unable to parse value of 'gpus'"},
		{"bad devN option", base + "dev0: /dev/nvidia0,bogus=1\n", "unable to parse value of 'dev0'"},
		{"delete outside pending", base + "delete: memory\n", "property 'delete' is only allowed in [pve:pending]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, msg := pvelab.ParseStrictContent("/etc/pve/lxc/901.conf", []byte(tc.conf))
			switch {
			case tc.wantErr == "" && msg != "":
				t.Errorf("PVE refused it: %s", msg)
			case tc.wantErr != "" && !strings.Contains(msg, tc.wantErr):
				t.Errorf("PVE's message = %q, want it to contain %q", msg, tc.wantErr)
			}
		})
	}
	t.Run("file written by pct", func(t *testing.T) {
		dev0 := pvelab.Node(t, 7, 128) + ",mode=0666"
		ct := pvelab.NewCT(t, pvelab.Spec{Conf: []string{"dev0: " + dev0}})
		p := pvelab.ParseStrict(t, ct.ConfPath())
		if p["hostname"] != ct.Hostname || p["dev0"] != dev0 {
			t.Errorf("parsed hostname %v dev0 %v, want %s and %s", p["hostname"], p["dev0"], ct.Hostname, dev0)
		}
		// A golden file elsewhere is parsed as /etc/pve/lxc/999.conf.
		golden := filepath.Join(t.TempDir(), "golden.txt")
		if err := os.WriteFile(golden, []byte(ct.Conf(t)), 0o644); err != nil {
			t.Fatal(err)
		}
		pvelab.ParseStrict(t, golden)
	})
}
