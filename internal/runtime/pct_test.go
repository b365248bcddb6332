package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/runner"
)

// idOf is the container id of a transcript's first command ("pct <verb> <id> ...").
func idOf(cmds []string) string {
	if f := strings.Fields(cmds[0]); len(f) > 2 {
		return f[2]
	}
	return ""
}

// TestPCTTranscripts replays the real pct's output, recorded on the PVE lab
// (testdata/pve-lab, TestLabPctOutputs in test/pve; Proxmox sources as pinned in
// ../shared/pve/SOURCES.md, pve-container 94f55852), through the runtime: each case's
// commands must be exactly the transcript's, its result what the output says. Two cases
// stay hand-written (testdata/pct): an empty pct list prints nothing
// (pve-container:src/PVE/CLI/pct.pm:1064), and a reboot timeout.
func TestPCTTranscripts(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		file    string
		op      func(p *PCT, id string) (any, error)
		want    func(id string) any
		wantErr error  // errors.Is
		errText string // substring of the error; "$ID" is the transcript's id
	}{
		{name: "state running", file: "pve-lab/status-running.txt",
			op:   func(p *PCT, id string) (any, error) { return p.State(ctx, id) },
			want: func(string) any { return State{Running: true, InitPID: 21276} }},
		{name: "state stopped", file: "pve-lab/status-stopped.txt",
			op:   func(p *PCT, id string) (any, error) { return p.State(ctx, id) },
			want: func(string) any { return State{} }},
		{name: "state of a missing container", file: "pve-lab/status-missing.txt",
			op:      func(p *PCT, id string) (any, error) { return p.State(ctx, id) },
			want:    func(string) any { return State{} },
			wantErr: ErrNotFound, errText: "lxc/$ID.conf' does not exist"},
		{name: "start", file: "pve-lab/start.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Start(ctx, id) }},
		{name: "start when already running is fine", file: "pve-lab/start-already-running.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Start(ctx, id) }},
		{name: "start of a locked container", file: "pve-lab/start-locked.txt",
			op:      func(p *PCT, id string) (any, error) { return nil, p.Start(ctx, id) },
			errText: "start CT $ID: run pct start $ID: exit 255: CT is locked (backup)"},
		{name: "start with a missing device node", file: "pve-lab/start-missing-dev.txt",
			op:      func(p *PCT, id string) (any, error) { return nil, p.Start(ctx, id) },
			errText: "Device /dev/gpupass-no-such-node does not exist"},
		// A failed start: lxc's messages on stdout, one line on stderr; the error has both.
		// Then it starts and stops (the transcript goes on).
		{name: "start failure names the cause", file: "pve-lab/start-failed.txt",
			op: func(p *PCT, id string) (any, error) {
				err := p.Start(ctx, id)
				if err2, err3 := p.Start(ctx, id), p.Stop(ctx, id); err2 != nil || err3 != nil {
					return nil, fmt.Errorf("start, stop after the failure: %v, %v", err2, err3)
				}
				return nil, err
			},
			errText: `start CT $ID: run pct start $ID: exit 255: startup for container '$ID' failed (output: safe_mount: 1220 No such file or directory - Failed to mount "/nonexistent-gpupass"`},
		{name: "stop", file: "pve-lab/stop.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Stop(ctx, id) }},
		{name: "stop when not running is fine", file: "pve-lab/stop-not-running.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Stop(ctx, id) }},
		{name: "restart a running container reboots it", file: "pve-lab/restart-running.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Restart(ctx, id) }},
		{name: "restart a stopped container starts it", file: "pve-lab/restart-stopped.txt",
			op: func(p *PCT, id string) (any, error) { return nil, p.Restart(ctx, id) }},
		{name: "restart whose shutdown times out", file: "pct/restart-timeout.txt",
			op:      func(p *PCT, id string) (any, error) { return nil, p.Restart(ctx, id) },
			errText: "restart CT 101: run pct reboot 101 --timeout 120: exit 255: shutdown timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, cmds := loadTranscript(t, tt.file)
			id := idOf(cmds)
			p := &PCT{Runner: fake, HostRoot: t.TempDir()} // no proc/net/unix there: State asks pct
			got, err := tt.op(p, id)
			errText := strings.ReplaceAll(tt.errText, "$ID", id)
			switch {
			case tt.wantErr == nil && errText == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case (tt.wantErr != nil || errText != "") && err == nil:
				t.Fatalf("no error, want %v %q", tt.wantErr, errText)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("error %v, want errors.Is %v", err, tt.wantErr)
			case errText != "" && !strings.Contains(err.Error(), errText):
				t.Errorf("error %q, want it to contain %q", err, errText)
			}
			if tt.want != nil {
				if d := cmp.Diff(got, tt.want(id)); d != "" {
					t.Errorf("result (-got +want):\n%s", d)
				}
			}
			if d := cmp.Diff(fake.Transcript(), cmds); d != "" {
				t.Errorf("commands run (-got +want):\n%s", d)
			}
		})
	}
}

func TestPCTInvalidIDs(t *testing.T) {
	for _, id := range []string{"", "99", "0101", "abc", "1000000000", "101/../7", "-1", "101 "} {
		t.Run(id, func(t *testing.T) {
			fake := &runner.Fake{}
			p := &PCT{Runner: fake}
			ctx := context.Background()
			if _, err := p.State(ctx, id); !errors.Is(err, ErrInvalidID) {
				t.Errorf("State(%q): %v, want ErrInvalidID", id, err)
			}
			if err := p.Start(ctx, id); !errors.Is(err, ErrInvalidID) {
				t.Errorf("Start(%q): %v, want ErrInvalidID", id, err)
			}
			if len(fake.Transcript()) != 0 {
				t.Errorf("ran commands for an invalid id: %q", fake.Transcript())
			}
		})
	}
}

func TestPCTPaths(t *testing.T) {
	p := &PCT{HostRoot: "/srv/host"}
	got := []string{p.ConfigPath("101"), p.LockPath("101"), p.StartedPath("101")}
	want := []string{"/srv/host/etc/pve/lxc/101.conf", "/srv/host/run/lock/lxc/pve-config-101.lock", "/srv/host/var/lib/lxc/101/config"}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("(-got +want):\n%s", d)
	}
	if d := cmp.Diff((&PCT{}).ConfigPath("101"), "/etc/pve/lxc/101.conf"); d != "" {
		t.Errorf("default host root (-got +want):\n%s", d)
	}
	if p.ConfigFormat() != FormatPVE || p.Name() != "pct" {
		t.Errorf("format %v name %q", p.ConfigFormat(), p.Name())
	}
}

// TestPCTStartedConfig checks that /var/lib/lxc/<id>/config counts as evidence only for a
// running container and only when it was written before the container's init started.
func TestPCTStartedConfig(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	const uptime = 10000.00                   // seconds since boot
	boot := now.Add(-uptime * time.Second)    // 09:13:20
	initStart := boot.Add(9000 * time.Second) // start ticks 900000
	const stat = "21276 (lxc-init (x)) S 2190 2207 2207 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 900000 2 3\n"
	tests := []struct {
		name     string
		status   string // transcript
		written  time.Time
		noFile   bool
		want     string
		wantText string
	}{
		{name: "written before the start", status: "status-running.txt", written: initStart.Add(-2 * time.Second), want: "lxc.arch = amd64\n"},
		{name: "written within the clock error of the start", status: "status-running.txt", written: initStart.Add(50 * time.Millisecond), want: "lxc.arch = amd64\n"},
		{name: "written after the start", status: "status-running.txt", written: initStart.Add(time.Minute), wantText: "after CT 9900 started at 2026-11-25T11:43:20Z"},
		{name: "missing", status: "status-running.txt", noFile: true, wantText: "var/lib/lxc/9900/config is missing"},
		{name: "not running", status: "status-stopped.txt", written: initStart, wantText: "CT 9900 is not running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			fake, cmds := loadTranscript(t, "pve-lab/"+tt.status)
			id := strings.Fields(cmds[0])[2]
			p := &PCT{Runner: fake, HostRoot: root, now: func() time.Time { return now }}
			writeFile(t, filepath.Join(root, "proc/21276/stat"), stat)
			writeFile(t, filepath.Join(root, "proc/uptime"), "10000.00 19000.00\n")
			if !tt.noFile {
				path := p.StartedPath(id)
				writeFile(t, path, "lxc.arch = amd64\n")
				if err := os.Chtimes(path, tt.written, tt.written); err != nil {
					t.Fatal(err)
				}
			}
			got, err := startedConfig(context.Background(), p, id)
			if tt.wantText != "" {
				if !errors.Is(err, ErrNoStartedConfig) || !strings.Contains(err.Error(), tt.wantText) {
					t.Fatalf("error %v, want ErrNoStartedConfig containing %q", err, tt.wantText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(string(got), tt.want); d != "" {
				t.Errorf("(-got +want):\n%s", d)
			}
		})
	}
}

// hangingRunner answers only when the context ends, as a wedged pct would.
type hangingRunner struct{}

func (hangingRunner) Run(ctx context.Context, argv ...string) ([]byte, error) {
	<-ctx.Done()
	return nil, &runner.ExitError{Argv: argv, ExitCode: -1, Err: ctx.Err()}
}

func TestCommandDeadline(t *testing.T) {
	p := &PCT{Runner: hangingRunner{}, HostRoot: t.TempDir(), QueryTimeout: 50 * time.Millisecond} // no proc/net/unix: pct status
	start := time.Now()
	_, err := p.State(context.Background(), "101")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("State took %v with a 50ms deadline", d)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "run pct status 101 --verbose: no answer after 50ms") {
		t.Errorf("error %v, want a deadline error naming the command", err)
	}
	// A caller's own cancellation is reported as such, not as a command timeout.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.State(ctx, "101"); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "no answer") {
		t.Errorf("cancelled: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPCTStartRecord: `pct set -tags x` (or memory) on a running container rewrites
// /var/lib/lxc/<id>/config after the start. Once the agent has seen the file as the start's
// (or started the container itself), its own record, tied to the init's pid and start
// time, still answers: such a rewrite never turns into "no record". A new init (same pid,
// another start time) does not inherit the record.
func TestPCTStartRecord(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	boot := now.Add(-10000 * time.Second)
	initStart := boot.Add(9000 * time.Second)
	const started = "lxc.cgroup2.devices.allow = c 195:* rwm\n"
	const rewritten = "lxc.cgroup2.devices.allow = c 195:* rwm\nlxc.cgroup2.devices.allow = c 511:* rwm\n# tags: x\n"
	setup := func(t *testing.T, stateDir string) (*PCT, string) {
		root := t.TempDir()
		fake, _ := loadTranscript(t, "pve-lab/status-running.txt")
		p := &PCT{Runner: fake, HostRoot: root, StateDir: stateDir, now: func() time.Time { return now }}
		writeFile(t, filepath.Join(root, "proc/21276/stat"), "21276 (lxc-init) S 2190 2207 2207 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 900000 2 3\n")
		writeFile(t, filepath.Join(root, "proc/uptime"), "10000.00 19000.00\n")
		return p, root
	}
	write := func(t *testing.T, p *PCT, content string, at time.Time) {
		path := p.StartedPath("9900")
		writeFile(t, path, content)
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("rewrite after the start keeps the record", func(t *testing.T) {
		p, _ := setup(t, t.TempDir())
		write(t, p, started, initStart.Add(-time.Second))
		if b, err := startedConfig(context.Background(), p, "9900"); err != nil || string(b) != started {
			t.Fatalf("first look: %q, %v", b, err)
		}
		write(t, p, rewritten, initStart.Add(time.Hour)) // pct set -tags x
		b, err := startedConfig(context.Background(), p, "9900")
		if err != nil || string(b) != started {
			t.Errorf("after the rewrite: %q, %v; want the recorded start config", b, err)
		}
	})
	t.Run("without a state dir the rewrite leaves no record", func(t *testing.T) {
		p, _ := setup(t, "")
		write(t, p, started, initStart.Add(-time.Second))
		if _, err := startedConfig(context.Background(), p, "9900"); err != nil {
			t.Fatal(err)
		}
		write(t, p, rewritten, initStart.Add(time.Hour))
		if _, err := startedConfig(context.Background(), p, "9900"); !errors.Is(err, ErrNoStartedConfig) {
			t.Errorf("err %v, want ErrNoStartedConfig", err)
		}
	})
	t.Run("a new init with the same pid does not inherit the record", func(t *testing.T) {
		p, root := setup(t, t.TempDir())
		write(t, p, started, initStart.Add(-time.Second))
		if _, err := startedConfig(context.Background(), p, "9900"); err != nil {
			t.Fatal(err)
		}
		// Restarted by someone else at ticks 950000 (pid reused), config rendered before.
		writeFile(t, filepath.Join(root, "proc/21276/stat"), "21276 (lxc-init) S 2190 2207 2207 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 950000 2 3\n")
		write(t, p, rewritten, initStart.Add(400*time.Second))
		b, err := startedConfig(context.Background(), p, "9900")
		if err != nil || string(b) != rewritten {
			t.Errorf("new init: %q, %v; want the file of its own start", b, err)
		}
	})
}

// startedConfig is StartedConfig with the state the runtime reports now, as the host agent
// calls it.
func startedConfig(ctx context.Context, rt Runtime, id string) ([]byte, error) {
	st, err := rt.State(ctx, id)
	if err != nil {
		return nil, err
	}
	return rt.StartedConfig(ctx, id, st)
}

func TestParseLXCLsPIDs(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]int
		wantErr bool
	}{
		{"none", "NAME PID \n", map[string]int{}, false},
		{"two", "NAME PID   \n901  12345 \n9902 777   \n", map[string]int{"901": 12345, "9902": 777}, false},
		{"stopping", "NAME PID\n901  -\n", map[string]int{}, false},
		{"not a pid", "NAME PID\n901 x\n", nil, true},
		{"extra column", "NAME PID\n901 1 2\n", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLXCLsPIDs([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(got, tt.want); !tt.wantErr && diff != "" {
				t.Errorf("pids (-got +want):\n%s", diff)
			}
		})
	}
}
