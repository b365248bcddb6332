package passthrough

import (
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu/gputest"
	"gpupass/internal/pveconf"
)

// pveRewrite is what PVE writes back after it parsed a config (any pct set, pct start with
// pending changes): write_pct_config (pve-container:src/PVE/LXC/Config.pm:1224-1299): per
// section the description as '#' lines first, then the keys sorted as strings (a later
// duplicate wins, as in PVE's hash), then the raw lxc.* lines in their order; the pending
// section, then the snapshots sorted by name. Blank lines and ignored lines are dropped.
func pveRewrite(t *testing.T, b []byte) []byte {
	t.Helper()
	cfg, err := pveconf.Parse(b, pveconf.PVE)
	if err != nil {
		t.Fatal(err)
	}
	gen := func(lines []pveconf.Line) string {
		var descr, raw []string
		keys := map[string]string{}
		for _, l := range lines {
			switch {
			case l.Kind == pveconf.Comment:
				descr = append(descr, l.Raw)
			case l.Kind != pveconf.KeyValue:
			case strings.HasPrefix(l.Key, "lxc."):
				raw = append(raw, l.Key+": "+l.Value)
			default:
				keys[l.Key] = l.Value
			}
		}
		var out strings.Builder
		for _, d := range descr {
			out.WriteString(d + "\n")
		}
		names := make([]string, 0, len(keys))
		for k := range keys {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			out.WriteString(k + ": " + keys[k] + "\n")
		}
		for _, r := range raw {
			out.WriteString(r + "\n")
		}
		return out.String()
	}
	secs := cfg.Sections()
	out := gen(secs[0].Lines)
	var snaps []pveconf.Section
	for _, s := range secs[1:] {
		if s.Name == pveconf.PendingSection {
			out += "\n[pve:pending]\n" + gen(s.Lines[1:])
		} else {
			snaps = append(snaps, s)
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Name < snaps[j].Name })
	for _, s := range snaps {
		out += "\n[" + s.Name + "]\n" + gen(s.Lines[1:])
	}
	return []byte(out)
}

// TestPlanAfterPVERewrite: after apply, PVE parses and rewrites the config (keys sorted, so
// dev10 comes before dev2; raw lxc.* lines last). A new plan finds nothing to change, in
// both styles and with GPU slots at dev10 and above.
func TestPlanAfterPVERewrite(t *testing.T) {
	// dev0..dev9 are taken by other devices: the GPU's nodes get dev10..dev13.
	var many strings.Builder
	many.WriteString("arch: amd64\ncores: 4\n")
	for i := 0; i < 10; i++ {
		many.WriteString("dev" + string(rune('0'+i)) + ": /dev/ttyUSB" + string(rune('0'+i)) + "\n")
	}
	many.WriteString("hostname: ai-901\nlxc.apparmor.profile: unconfined\nmemory: 4096\nlxc.cap.drop: \n")
	tests := []struct {
		name, in string
		desired  Desired
	}{
		{"raw", "# GPU box\narch: amd64\nlxc.apparmor.profile: unconfined\nmemory: 512\nostype: debian\n", Desired{GPUs: []string{"0"}, Style: Raw, GuestSocketDir: "/run/gpupass/guests/901"}},
		{"dev", "arch: amd64\ncores: 2\nmemory: 512\n", Desired{GPUs: []string{"0", "1"}, Style: Dev, GuestSocketDir: "/run/gpupass/guests/901"}},
		{"dev slots 10 and up", many.String(), Desired{GPUs: []string{"1"}, Style: Dev}},
	}
	inv := gputest.Inventory(t, "pve-2gpu")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pveconf.Parse([]byte(tt.in), pveconf.PVE)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Plan(cfg, inv, tt.desired)
			if err != nil || !r.Changed {
				t.Fatalf("first plan: changed=%v err=%v", r != nil && r.Changed, err)
			}
			rewritten := pveRewrite(t, r.New)
			if string(rewritten) == string(r.New) {
				t.Fatalf("PVE's rewrite changed nothing: the case proves nothing\n%s", r.New)
			}
			cfg2, err := pveconf.Parse(rewritten, pveconf.PVE)
			if err != nil {
				t.Fatal(err)
			}
			again, err := Plan(cfg2, inv, tt.desired)
			if err != nil {
				t.Fatal(err)
			}
			if again.Changed {
				t.Errorf("plan after PVE's rewrite wants changes:\n%s\nrewritten:\n%s", again.Diff, rewritten)
			}
			if tt.name == "dev slots 10 and up" && !strings.Contains(string(rewritten), "dev10: /dev/nvidia1,mode=0666\n") {
				t.Errorf("GPU node not at dev10:\n%s", rewritten)
			}
		})
	}
}

// TestDevEntries: a devN whose path key is not first is still the GPU's node; options a
// person added to a managed devN (deny-write=1) are replaced by the managed value; the
// slot N is kept, dev10 and above included.
func TestDevEntries(t *testing.T) {
	inv := gputest.Inventory(t, "pve-2gpu")
	tests := []struct {
		name, in, want string
	}{
		{"path key not first",
			"arch: amd64\ndev0: mode=0666,path=/dev/nvidia0\ndev1: /dev/nvidiactl,mode=0666\ndev2: /dev/nvidia-uvm,mode=0666\ndev3: /dev/nvidia-uvm-tools,mode=0666\n",
			"arch: amd64\ndev0: /dev/nvidia0,mode=0666\ndev1: /dev/nvidiactl,mode=0666\ndev2: /dev/nvidia-uvm,mode=0666\ndev3: /dev/nvidia-uvm-tools,mode=0666\n"},
		{"deny-write replaced, slots kept",
			"arch: amd64\ndev12: /dev/nvidia0,deny-write=1\ndev1: path=/dev/nvidiactl,uid=0,deny-write=1\ndev2: /dev/nvidia-uvm,mode=0666\ndev3: /dev/nvidia-uvm-tools,mode=0666\n",
			"arch: amd64\ndev12: /dev/nvidia0,mode=0666\ndev1: /dev/nvidiactl,mode=0666\ndev2: /dev/nvidia-uvm,mode=0666\ndev3: /dev/nvidia-uvm-tools,mode=0666\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pveconf.Parse([]byte(tt.in), pveconf.PVE)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Plan(cfg, inv, Desired{GPUs: []string{"0"}, Style: Dev})
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(r.New), tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
	for in, want := range map[string]string{
		"/dev/nvidia0": "/dev/nvidia0", "/dev/nvidia0,mode=0666": "/dev/nvidia0", "path=/dev/nvidia0": "/dev/nvidia0",
		"mode=0666,path=/dev/nvidia0": "/dev/nvidia0", "uid=0, path=/dev/nvidia1 ,gid=0": "/dev/nvidia1", "mode=0666": "",
	} {
		if got := devPath(in); got != want {
			t.Errorf("devPath(%q) = %q, want %q", in, got, want)
		}
	}
}
