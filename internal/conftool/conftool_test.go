package conftool

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/gpu/gputest"
	"gpupass/internal/pveconf"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

var fixedNow = func() time.Time { return time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC) }

func corpusFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "pveconf", "testdata", "corpus", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type cliCase struct {
	name     string
	fixture  string               // gpu fixture (discovered from its manifest)
	edit     func(*gpu.Inventory) // changes to the discovered host
	in       string               // corpus file, written to $ROOT/etc/pve/lxc/901.conf (or .../config)
	args     []string             // after "conf"; $CONF and $ROOT are replaced
	setup    func(t *testing.T, root, conf string) func()
	before   func(path string) // runs between plan and write (apply)
	wantCode int
	check    func(t *testing.T, in, out []byte, root string)
}

func untouched(t *testing.T, in, out []byte, _ string) {
	if !bytes.Equal(in, out) {
		t.Errorf("config changed on error:\n%s", cmp.Diff(string(out), string(in)))
	}
}

var cliCases = []cliCase{
	{name: "row02_plan_lines_in_snapshot", fixture: "pve-2gpu", in: "17-appended-into-snapshot.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0"}, wantCode: 2, check: untouched},
	{name: "row03_apply_duplicates_and_conflicts", fixture: "pve-2gpu", in: "11-privileged-gpu-raw.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0,1", "--state-dir", "$ROOT/state"}, wantCode: 0,
		check: func(t *testing.T, in, out []byte, root string) {
			b, err := os.ReadFile(filepath.Join(root, "state/backups/901.conf.20261125T220000.000000000Z.bak"))
			if err != nil || !bytes.Equal(b, in) {
				t.Errorf("backup missing or wrong: %v", err)
			}
		}},
	{name: "row04_apply_shrink_to_gpu_1", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "1", "--state-dir", "$ROOT/state"}, wantCode: 0},
	{name: "row04_apply_none_on_clone", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "none", "--state-dir", "$ROOT/state"}, wantCode: 0},
	{name: "row05_plan_uvm_major_238_on_h100", fixture: "h100", in: "03-snapshots.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0000:00:06.0"}, wantCode: 2, check: untouched},
	{name: "row06_missing_uvm_node", fixture: "pve-2gpu", in: "12-cloned.conf",
		edit: func(inv *gpu.Inventory) { delete(inv.Nodes, gpu.PathUVM) },
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--state-dir", "$ROOT/state"}, wantCode: 1, check: untouched},
	{name: "row10_apply_index_1_is_minor_0", fixture: "index-minor-differ", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "1", "--state-dir", "$ROOT/state"}, wantCode: 0,
		check: func(t *testing.T, _, out []byte, _ string) {
			if !bytes.Contains(out, []byte("/dev/nvidia0 dev/nvidia0")) || bytes.Contains(out, []byte("/dev/nvidia1 ")) {
				t.Error("GPU index 1 did not become /dev/nvidia0")
			}
		}},
	{name: "row11_apply_while_locked", fixture: "pve-2gpu", in: "12-cloned.conf",
		args:  []string{"apply", "--conf", "$CONF", "--gpus", "1", "--state-dir", "$ROOT/state", "--lock-timeout", "100ms"},
		setup: holdLock, wantCode: 1, check: untouched},
	{name: "row11_apply_digest_changed", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "1", "--state-dir", "$ROOT/state"},
		before: func(p string) {
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, "cores: 4\n"...), 0o640)
		},
		wantCode: 1,
		check: func(t *testing.T, in, out []byte, root string) {
			if want := string(in) + "cores: 4\n"; string(out) != want {
				t.Errorf("the other writer's edit was lost:\n%s", cmp.Diff(string(out), want))
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "state/backups")); len(ents) != 0 {
				t.Errorf("backups written on a refused write: %v", ents)
			}
		}},
	{name: "unknown_gpu", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0,GPU-00000000-dead-beef-0000-000000000000"}, wantCode: 1, check: untouched},
	{name: "unparsable_config", fixture: "pve-2gpu", in: "12-cloned.conf",
		setup: func(t *testing.T, root, conf string) func() {
			b, _ := os.ReadFile(conf)
			os.WriteFile(conf, append([]byte("arch: amd64\nthis line is not a key\n"), b...), 0o640)
			return nil
		},
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0"}, wantCode: 1, check: untouched},
	{name: "dev_style_plan", fixture: "pve-2gpu", in: "08-devN.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "1", "--style", "dev"}, wantCode: 2, check: untouched},
	{name: "lxc_format_auto_with_guest_socket", fixture: "pve-2gpu", in: "25-lxc-format.config",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "41:00.0", "--guest-socket-dir", "/run/gpupass/guests/gpu1", "--state-dir", "$ROOT/state"}, wantCode: 0},
	{name: "no_driver_none", fixture: "no-driver", in: "11-privileged-gpu-raw.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "none"}, wantCode: 2},
	{name: "no_driver_gpu", fixture: "no-driver", in: "11-privileged-gpu-raw.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0"}, wantCode: 1, check: untouched},
	{name: "empty_gpus_flag", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", ""}, wantCode: 1},
	{name: "bad_style", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0", "--style", "fancy"}, wantCode: 1},
	{name: "mig_caps_removed_for_whole_gpu", fixture: "mig", in: "11-privileged-gpu-raw.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0"}, wantCode: 2,
		check: func(t *testing.T, in, out []byte, root string) {
			untouched(t, in, out, root)
			if !bytes.Contains(in, []byte("/dev/nvidia-caps")) {
				t.Error("the input has no caps entry: the case proves nothing")
			}
		}},
	{name: "driver_host_apply", fixture: "pve-2gpu", in: "12-cloned.conf", setup: hostUserspace("580.159.04", "580.159.04"),
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--driver", "host", "--state-dir", "$ROOT/state"}, wantCode: 0,
		check: func(t *testing.T, _, out []byte, root string) {
			if !bytes.Contains(out, []byte("\nlxc.hook.mount: /usr/bin/gpupass-host-agent driver hook --host-root "+root+"\n")) {
				t.Error("--driver host did not write the driver hook")
			}
		}},
	{name: "driver_host_mismatch_refused", fixture: "pve-2gpu", in: "12-cloned.conf", setup: hostUserspace("580.159.04", "580.173.02"),
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--driver", "host", "--state-dir", "$ROOT/state"}, wantCode: 1, check: untouched},
	{name: "bad_driver", fixture: "pve-2gpu", in: "12-cloned.conf",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0", "--driver", "hots"}, wantCode: 1, check: untouched},
	{name: "mig_caps_flag", fixture: "mig", in: "12-cloned.conf",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--mig-caps", "--state-dir", "$ROOT/state"}, wantCode: 0,
		check: func(t *testing.T, _, out []byte, _ string) {
			if !bytes.Contains(out, []byte("/dev/nvidia-caps/nvidia-cap1 dev/nvidia-caps/nvidia-cap1")) {
				t.Error("--mig-caps did not pass the caps nodes")
			}
		}},
	{name: "nul_byte_refused", fixture: "pve-2gpu", in: "12-cloned.conf",
		setup: func(t *testing.T, root, conf string) func() {
			b, _ := os.ReadFile(conf)
			os.WriteFile(conf, append([]byte("arch: amd64\ncores: 4\x00# hidden\n"), b...), 0o640)
			return nil
		},
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--state-dir", "$ROOT/state"}, wantCode: 1, check: untouched},
	{name: "symlink_out_of_config_dir_refused", fixture: "pve-2gpu", in: "12-cloned.conf",
		setup: func(t *testing.T, root, conf string) func() {
			// An administrator's (or an attacker's) link to a file outside /etc/pve/lxc.
			outside := filepath.Join(root, "outside.conf")
			b, _ := os.ReadFile(conf)
			if err := os.WriteFile(outside, b, 0o640); err != nil {
				t.Fatal(err)
			}
			os.Remove(conf)
			if err := os.Symlink(outside, conf); err != nil {
				t.Fatal(err)
			}
			return nil
		},
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--state-dir", "$ROOT/state"}, wantCode: 1,
		check: func(t *testing.T, _, _ []byte, root string) {
			b, _ := os.ReadFile(filepath.Join(root, "outside.conf"))
			if !bytes.Equal(b, corpusFile(t, "12-cloned.conf")) {
				t.Error("the file outside the config directory was changed")
			}
		}},
	{name: "dev_style_on_lxc_config_refused", fixture: "pve-2gpu", in: "25-lxc-format.config",
		args: []string{"apply", "--conf", "$CONF", "--gpus", "0", "--style", "dev", "--state-dir", "$ROOT/state"}, wantCode: 1, check: untouched},
	{name: "missing_config", fixture: "pve-2gpu", in: "",
		args: []string{"plan", "--conf", "$CONF", "--gpus", "0"}, wantCode: 1},
}

// holdLock takes the PVE config lock on its own file description, as pct would.
func holdLock(t *testing.T, root, _ string) func() {
	p := pveconf.LockPathFor(root, "901")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	return func() { unix.Close(fd) }
}

func runCLI(t *testing.T, e env, args []string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := newCommand(e)
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.Execute()
	code = Report(&errb, "gpupass-host-agent conf", err)
	return code, out.String(), errb.String()
}

// hostUserspace gives the host root a loaded module of version kernel and the userspace
// libraries of version libs (what hostdriver.Find reads for --driver host).
func hostUserspace(kernel, libs string) func(t *testing.T, root, conf string) func() {
	return func(t *testing.T, root, _ string) func() {
		files := map[string]string{"proc/driver/nvidia/version": "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  " + kernel + "  Release Build\n"}
		for _, l := range []string{"libcuda", "libnvidia-ml"} {
			files["usr/lib/x86_64-linux-gnu/"+l+".so."+libs] = ""
		}
		for p, c := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}
}

func TestCLI(t *testing.T) {
	for _, tc := range cliCases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			conf := filepath.Join(root, "etc/pve/lxc/901.conf")
			if strings.HasSuffix(tc.in, ".config") {
				conf = filepath.Join(root, "var/lib/lxc/gpu1/config")
			}
			var in []byte
			if tc.in != "" {
				in = corpusFile(t, tc.in)
				if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(conf, in, 0o640); err != nil {
					t.Fatal(err)
				}
			}
			if tc.setup != nil {
				if undo := tc.setup(t, root, conf); undo != nil {
					defer undo()
				}
				in, _ = os.ReadFile(conf)
			}
			e := env{
				discover: func(string) (*gpu.Inventory, error) {
					inv, err := gputest.Discover(t, tc.fixture)
					if err != nil {
						return nil, err
					}
					inv.Root = "/"
					if tc.edit != nil {
						tc.edit(inv)
					}
					return inv, nil
				},
				beforeWrite: tc.before,
				now:         fixedNow,
			}
			args := make([]string, len(tc.args))
			for i, a := range tc.args {
				args[i] = strings.ReplaceAll(strings.ReplaceAll(a, "$CONF", conf), "$ROOT", root)
			}
			args = append(args, "--host-root", root)
			code, stdout, stderr := runCLI(t, e, args)
			out, _ := os.ReadFile(conf)
			var sb strings.Builder
			sb.WriteString("$ conf " + strings.Join(tc.args, " ") + "\n")
			sb.WriteString("exit " + string(rune('0'+code)) + "\n-- stdout --\n" + stdout + "-- stderr --\n" + stderr)
			if code == 0 && strings.HasPrefix(tc.args[0], "apply") {
				sb.WriteString("-- config after --\n" + string(out))
			}
			got := strings.ReplaceAll(sb.String(), root, "$ROOT")
			golden(t, tc.name, strings.ReplaceAll(got, gputest.Dir(tc.fixture), "$FIXTURE"))
			if code != tc.wantCode {
				t.Errorf("exit %d, want %d\nstderr: %s", code, tc.wantCode, stderr)
			}
			if tc.check != nil {
				tc.check(t, in, out, root)
			}
			if code == 0 && tc.args[0] == "apply" {
				// Applying twice changes nothing: plan now exits 0.
				planArgs := append([]string{"plan"}, args[1:]...)
				planArgs = dropFlag(dropFlag(planArgs, "--state-dir"), "--lock-timeout")
				if code, stdout, stderr := runCLI(t, e, planArgs); code != 0 || stdout != "" {
					t.Errorf("plan after apply: exit %d\n%s%s", code, stdout, stderr)
				}
			}
		})
	}
}

func dropFlag(args []string, name string) []string {
	out := args[:0:0]
	for i := 0; i < len(args); i++ {
		if args[i] == name {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata/golden", name+".txt")
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden (go test -update creates it): %v", err)
	}
	if diff := cmp.Diff(got, string(want)); diff != "" {
		t.Errorf("%s (-got +want):\n%s", p, diff)
	}
}

// TestApplyRealHost runs the production command (real /dev scan, real mknod'ed nodes)
// on a materialised fixture host; it needs root.
func TestApplyRealHost(t *testing.T) {
	root := gputest.MakeRoot(t, "pve-2gpu")
	conf := filepath.Join(root, "etc/pve/lxc/901.conf")
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, corpusFile(t, "11-privileged-gpu-raw.conf"), 0o640); err != nil {
		t.Fatal(err)
	}
	cmd := NewCommand()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs([]string{"apply", "--conf", conf, "--gpus", "1", "--host-root", root, "--state-dir", filepath.Join(root, "state")})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("apply: %v\n%s", err, errb.String())
	}
	b, _ := os.ReadFile(conf)
	want := "lxc.mount.entry: " + root + "/dev/nvidia1 dev/nvidia1 none bind,create=file 0 0\n"
	if !bytes.Contains(b, []byte(want)) || bytes.Contains(b, []byte("optional")) {
		t.Errorf("config after apply lacks %q or keeps optional:\n%s", want, b)
	}
	if _, err := os.Stat(pveconf.LockPathFor(root, "901")); err != nil {
		t.Errorf("PVE lock under the host root not used: %v", err)
	}
	cmd = NewCommand()
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs([]string{"plan", "--conf", conf, "--gpus", "1", "--host-root", root})
	if err := cmd.Execute(); ExitCode(err) != 0 {
		t.Errorf("plan after apply: %v", err)
	}
}

func TestExitCode(t *testing.T) {
	if ExitCode(nil) != 0 || ExitCode(errors.New("x")) != 1 || ExitCode(&ExitError{Code: 2}) != 2 {
		t.Error("ExitCode mapping")
	}
	var b bytes.Buffer
	if Report(&b, "p", &ExitError{Code: 2}) != 2 || b.Len() != 0 {
		t.Errorf("Report printed %q for a pending plan", b.String())
	}
	if Report(&b, "p", &ExitError{Code: 1, Err: errors.New("boom")}) != 1 || b.String() != "p: boom\n" {
		t.Errorf("Report = %q", b.String())
	}
}
