package hostconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/inputlimit"
	"gpupass/internal/strictyaml"
)

func TestParseDesignExample(t *testing.T) {
	in := `version: 1
listen: "0.0.0.0:7420"
runtime: pct                      # pct | lxc
tls: {ca: /etc/gpupass/ca.crt, cert: /etc/gpupass/host.crt, key: /etc/gpupass/host.key}
state_dir: /var/lib/gpupass
guest_socket_dir: /run/gpupass/guests
host_root: /                      # prefix for /proc, /dev, /etc/pve, /var/lib/lxc (tests)
`
	got, err := Parse("host-agent.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.File = "host-agent.yaml"
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
}

func TestLoadOverrides(t *testing.T) {
	p := filepath.Join(t.TempDir(), "host-agent.yaml")
	in := "version: 1\nruntime: lxc\nmetrics_listen: \"127.0.0.1:9420\"\nheartbeat: 2s\nguest_stale_after: 7s\nlxc_path: /srv/lxc\nsimulated: true\nhost_root: /tmp/sim\n"
	if err := os.WriteFile(p, []byte(in), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.File, want.Runtime, want.MetricsListen = p, "lxc", "127.0.0.1:9420"
	want.Heartbeat, want.GuestStaleAfter, want.LXCPath, want.Simulated, want.HostRoot = 2*time.Second, 7*time.Second, "/srv/lxc", true, "/tmp/sim"
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"no version", "listen: \":1\"\n", "h.yaml:1: version: missing; add version: 1 as the first line"},
		{"version 2", "version: 2\n", "h.yaml:1: version: unsupported version 2: this gpupass reads version 1 (upgrade gpupass or convert the file)"},
		{"unknown key", "version: 1\nlisten_addr: x\n", "h.yaml:2: listen_addr: unknown field; known fields here: version, listen, runtime, tls, state_dir, guest_socket_dir, host_root, metrics_listen, heartbeat, guest_stale_after, lxc_path, simulated, allowed_controllers, journal_keep, journal_keep_for"},
		{"unknown tls key", "version: 1\ntls: {ca: /a, crt: /b}\n", "h.yaml:2: tls.crt: unknown field; known fields here: ca, cert, key"},
		{"bad runtime", "version: 1\nruntime: docker\n", `h.yaml:2: runtime: "docker": use pct (Proxmox) or lxc (plain LXC)`},
		{"bad listen", "version: 1\nlisten: 7420\n", `h.yaml:2: listen: "7420" is not host:port (e.g. "0.0.0.0:7420")`},
		{"relative path", "version: 1\ntls: {key: host.key}\n", `h.yaml:2: tls.key: "host.key": use an absolute path`},
		{"empty state dir", "version: 1\nstate_dir: \"\"\n", `h.yaml:2: state_dir: must not be empty`},
		{"bad duration", "version: 1\nheartbeat: 10\n", `h.yaml:2: heartbeat: must be a duration such as "10s", got int "10"`},
		{"stale before heartbeat", "version: 1\nheartbeat: 30s\n", `h.yaml:1: guest_stale_after: 30s must be longer than heartbeat (30s), e.g. three heartbeats`},
		{"bad controller name", "version: 1\nallowed_controllers: [controller, \"a b\"]\n", `h.yaml:2: allowed_controllers[1]: "a b" is not a certificate name (the --name given to gpupass pki issue --role controller)`},
		{"simulated string", "version: 1\nsimulated: \"yes\"\n", `h.yaml:2: simulated: must be true or false, got str "yes"`},
		{"journal_keep zero", "version: 1\njournal_keep: 0\n", `h.yaml:2: journal_keep: 0: keep between 1 and 100000 finished applies per container (default 20)`},
		{"journal_keep_for negative", "version: 1\njournal_keep_for: -1h\n", `h.yaml:2: journal_keep_for: -1h0m0s: use a duration between 0s (count only) and 87600h (default 720h0m0s)`},
		{"journal_keep_for number", "version: 1\njournal_keep_for: 30\n", `h.yaml:2: journal_keep_for: must be a duration such as "10s", got int "30"`},
		{"trailing document", "version: 1\n---\nversion: 1\n", `h.yaml:2: a second YAML document ('---') follows; keep one document per file`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("h.yaml", []byte(tt.in))
			var se *strictyaml.Error
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want *strictyaml.Error", err)
			}
			if diff := cmp.Diff(err.Error(), tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("version: 1\nruntime: lxc\nheartbeat: 1s\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse("f.yaml", b)
		if err != nil {
			return
		}
		if c.Runtime != RuntimePct && c.Runtime != RuntimeLXC || c.GuestStaleAfter <= c.Heartbeat {
			t.Fatalf("invalid config accepted: %+v", c)
		}
	})
}

// lxc_path follows host_root unless the file names it (host_root documents itself as the
// prefix of /var/lib/lxc).
func TestLXCPathDefaultsUnderHostRoot(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"no host_root", "version: 1\n", "/var/lib/lxc"},
		{"host_root", "version: 1\nhost_root: /tmp/sim\n", "/tmp/sim/var/lib/lxc"},
		{"explicit lxc_path wins", "version: 1\nhost_root: /tmp/sim\nlxc_path: /srv/lxc\n", "/srv/lxc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("h.yaml", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.LXCPath, tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

func TestAllowedControllers(t *testing.T) {
	c, err := Parse("h.yaml", []byte("version: 1\nallowed_controllers: [controller, ci-controller]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c.AllowedControllers, []string{"controller", "ci-controller"}); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
}

// An oversized host-agent.yaml is refused before it is parsed.
func TestLoadRefusesOversizedFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "host-agent.yaml")
	if err := os.WriteFile(p, append([]byte("version: 1\n#"), make([]byte, 2<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	if !errors.Is(err, inputlimit.ErrTooLarge) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want ErrTooLarge naming the file", err)
	}
}

// The journal bounds default to 20 applies and 30 days per container; a file may set them.
func TestJournalBounds(t *testing.T) {
	tests := []struct {
		name, in string
		keep     int
		keepFor  time.Duration
	}{
		{"defaults", "version: 1\n", 20, 720 * time.Hour},
		{"set", "version: 1\njournal_keep: 5\njournal_keep_for: 48h\n", 5, 48 * time.Hour},
		{"count only", "version: 1\njournal_keep_for: 0s\n", 20, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("h.yaml", []byte(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]any{c.JournalKeep, c.JournalKeepFor}, []any{tt.keep, tt.keepFor}); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}
