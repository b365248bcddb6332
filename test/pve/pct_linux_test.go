package pve

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/lxctest"
	"gpupass/internal/pvelab"
)

// TestLifecycle: the real pct creates, starts, reboots and stops privileged and unprivileged
// containers whose hostname differs from their id, and renders /var/lib/lxc/<id>/config.
func TestLifecycle(t *testing.T) {
	for _, tc := range []struct {
		name       string
		privileged bool
		// rendered lines PVE must have written for this kind
		want []string
	}{
		{"privileged", true, nil},
		{"unprivileged", false, []string{"lxc.idmap = u 0 100000 65536", "lxc.idmap = g 0 100000 65536"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ct := pvelab.NewCT(t, pvelab.Spec{Privileged: tc.privileged})
			if ct.Hostname == fmt.Sprint(ct.ID) {
				t.Fatalf("hostname %q equals the id", ct.Hostname)
			}
			start := ct.Start(t)
			if got := ct.Status(t); got != "running" {
				t.Fatalf("pct status after start = %q, want running", got)
			}
			rendered := ct.RenderedConfig(t)
			for _, l := range append([]string{"lxc.uts.name = " + ct.Hostname}, tc.want...) {
				if !hasLine(rendered, l) {
					t.Errorf("rendered config lacks %q:\n%s", l, rendered)
				}
			}
			verbose := pvelab.MustPct(t, "status", fmt.Sprint(ct.ID), "--verbose")
			pid := ct.InitPID(t)
			if !hasLine(verbose.Stdout, fmt.Sprintf("pid: %d", pid)) || !hasLine(verbose.Stdout, "name: "+ct.Hostname) {
				t.Errorf("pct status --verbose does not name init pid %d and hostname %s:\n%s", pid, ct.Hostname, verbose.Stdout)
			}

			reboot := ct.Reboot(t)
			pid2 := ct.WaitRunning(t, pid, 30*time.Second)
			t.Logf("pct reboot: init %d -> %d", pid, pid2)

			// A reboot from inside: lxc-start exits, the systemctl shim runs PVE's stop wrapper
			// like systemd would, and LXC/PVE bring the container back.
			ct.Exec(t, "reboot")
			pid3 := ct.WaitRunning(t, pid2, 30*time.Second)
			t.Logf("reboot inside the container: init %d -> %d", pid2, pid3)

			stop := ct.Stop(t)
			if got := ct.Status(t); got != "stopped" {
				t.Fatalf("pct status after stop = %q, want stopped", got)
			}
			stopAgain := pvelab.Pct(t, "stop", fmt.Sprint(ct.ID))
			if stopAgain.Code == 0 || !strings.Contains(stopAgain.Stderr, "not running") {
				t.Errorf("pct stop of a stopped container: %s", stopAgain)
			}
			if tc.privileged {
				saveTranscript(t, "lifecycle", "pct start, status --verbose, reboot, stop, stop again", start, verbose, reboot, stop, stopAgain)
			}
		})
	}
}

// TestDeviceRules: PVE renders devN entries and raw lxc.* lines into the start config; in a
// privileged container in cgroup mode 2 the device cgroup is enforced: a node with an allow
// rule opens, a node without one gives EPERM. Unprivileged containers get every device
// allowed by PVE's design, so for them only the rendered config is checked.
func TestDeviceRules(t *testing.T) {
	for _, tc := range []struct {
		name       string
		privileged bool
	}{
		{"privileged", true},
		{"unprivileged", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			probe := lxctest.Probe(t)
			// Stand-in nodes made for the test (LXC's common.conf allows none of 7:x): vcsa
			// 7:128 through dev0, vcs 7:0 through a raw allow and mount entry, vcs1 7:1
			// mounted without any allow.
			ctl, allowed, denied := pvelab.Node(t, 7, 128), pvelab.Node(t, 7, 0), pvelab.Node(t, 7, 1)
			ct := pvelab.NewCT(t, pvelab.Spec{Privileged: tc.privileged, Conf: []string{
				"dev0: " + ctl,
				"lxc.cgroup2.devices.allow: c 7:0 rwm",
				"lxc.mount.entry: " + allowed + " dev/vcs none bind,create=file 0 0",
				"lxc.mount.entry: " + denied + " dev/vcs1 none bind,create=file 0 0",
				"lxc.mount.entry: " + probe + " usr/local/bin/probe none bind,ro,create=file 0 0",
			}})
			ct.Start(t)
			rendered := ct.RenderedConfig(t)
			for _, l := range []string{
				"lxc.cgroup2.devices.allow = c 7:128 rw", // from dev0
				"lxc.cgroup2.devices.allow = c 7:0 rwm",
				"lxc.mount.entry = " + allowed + " dev/vcs none bind,create=file 0 0",
			} {
				if !hasLine(rendered, l) {
					t.Errorf("rendered config lacks %q:\n%s", l, rendered)
				}
			}
			if !tc.privileged {
				t.Log("unprivileged: PVE allows every device in the container's cgroup by design; " +
					"enforcement is not checked, only the start config PVE rendered (above)")
				return
			}
			t.Logf("privileged, cgroup mode %d: checking enforcement for real", pvelab.CgroupMode())
			out, _ := ct.Exec(t, "/usr/local/bin/probe", "open", ctl, "/dev/vcs", "/dev/vcs1")
			want := ctl + " ok\n/dev/vcs ok\n/dev/vcs1 EPERM\n"
			if diff := cmp.Diff(want, out); diff != "" {
				t.Errorf("open in the container (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLockBackup: with `lock: backup`, pct set and pct start fail with "CT is locked
// (backup)" and exit 255. pct reboot does not check the lock: it shuts the container down,
// then PVE's pre-start hook refuses the start (check_lock,
// pve-container:src/lxc-pve-prestart-hook) and the container is left STOPPED, with only lxc's
// "Failed to run lxc.hook.pre-start" on stdout: the hook's own message is lost.
func TestLockBackup(t *testing.T) {
	t.Parallel()
	ct := pvelab.NewCT(t, pvelab.Spec{})
	ct.Start(t)
	ct.AppendConf(t, "lock: backup")
	id := fmt.Sprint(ct.ID)
	locked := "CT is locked (backup)"

	set := pvelab.Pct(t, "set", id, "-tags", "x")
	reboot := pvelab.Pct(t, "reboot", id)
	if reboot.Code != 255 || lastLine(reboot.Stderr) != fmt.Sprintf("startup for container '%s' failed", id) ||
		!strings.Contains(reboot.Stdout, "Failed to run lxc.hook.pre-start") {
		t.Errorf("pct reboot under lock: want exit 255 after stopping, the hook failure on stdout; got %s", reboot)
	}
	if got := ct.Status(t); got != "stopped" {
		t.Errorf("after pct reboot under lock the container is %q, want stopped (left down)", got)
	}
	start := pvelab.Pct(t, "start", id)
	for _, r := range []pvelab.Result{set, start} {
		if r.Code != 255 || strings.TrimSpace(r.Stderr) != locked || r.Stdout != "" {
			t.Errorf("want exit 255, stderr %q, no stdout; got %s", locked, r)
		}
	}
	saveTranscript(t, "locked-backup", "lock: backup on a running container: pct set, reboot (stops, then the start hook refuses), start", set, reboot, start)
}

// TestStartFailureStreams: a failed pct start prints the worker's messages (here lxc's, from
// a mount entry whose source is missing) on stdout and the final error as the last line of
// stderr; a successful start and stop print nothing.
func TestStartFailureStreams(t *testing.T) {
	t.Parallel()
	ct := pvelab.NewCT(t, pvelab.Spec{Conf: []string{"lxc.mount.entry: /nonexistent-gpupass dev/nvidia9 none bind,create=file 0 0"}})
	id := fmt.Sprint(ct.ID)
	failed := pvelab.Pct(t, "start", id)
	// stderr ends with the task's error; PVE's warnings (e.g. "problem with monitor socket"
	// on a loaded machine) go there too, the worker's output never does.
	if failed.Code != 255 || lastLine(failed.Stderr) != fmt.Sprintf("startup for container '%s' failed", id) {
		t.Errorf("failed start: want exit 255 and the task's error as stderr's last line; got %s", failed)
	}
	if !strings.Contains(failed.Stdout, `Failed to mount "/nonexistent-gpupass"`) || strings.Contains(failed.Stderr, "Failed to mount") {
		t.Errorf("failed start: the worker's message (lxc's reason) is not on stdout only; got %s", failed)
	}
	ct.WriteConf(t, strings.ReplaceAll(ct.Conf(t), "lxc.mount.entry: /nonexistent-gpupass dev/nvidia9 none bind,create=file 0 0\n", ""))
	start := ct.Start(t)
	stop := ct.Stop(t)
	for _, r := range []pvelab.Result{start, stop} {
		// PVE's "trying to acquire lock... OK" (the config lock was busy for a moment, on a
		// loaded machine) is the only stderr a successful call may print.
		rest := strings.TrimSpace(strings.NewReplacer("trying to acquire lock...", "", " OK", "").Replace(r.Stderr))
		if r.Stdout != "" || rest != "" {
			t.Errorf("successful %s printed something: %s", r.Argv[1], r)
		}
	}
	saveTranscript(t, "start-failed", "pct start failing in lxc (missing mount source), then start and stop", failed, start, stop)
}

// TestSetTagsRewritesRendered: pct set -tags on a running container rewrites
// /var/lib/lxc/<id>/config (new mtime, same content): its mtime is no evidence of a restart.
func TestSetTagsRewritesRendered(t *testing.T) {
	t.Parallel()
	ct := pvelab.NewCT(t, pvelab.Spec{})
	ct.Start(t)
	before := ct.RenderedConfig(t)
	st1, err := os.Stat(ct.RenderedPath())
	if err != nil {
		t.Fatal(err)
	}
	pid := ct.InitPID(t)
	time.Sleep(1100 * time.Millisecond) // mtime granularity of the check below
	set := pvelab.MustPct(t, "set", fmt.Sprint(ct.ID), "-tags", "x")
	st2, err := os.Stat(ct.RenderedPath())
	if err != nil {
		t.Fatal(err)
	}
	if !st2.ModTime().After(st1.ModTime()) {
		t.Errorf("pct set -tags did not rewrite %s (mtime %s -> %s)", ct.RenderedPath(), st1.ModTime(), st2.ModTime())
	}
	if diff := cmp.Diff(sortedLines(before), sortedLines(ct.RenderedConfig(t))); diff != "" {
		t.Errorf("rendered config content changed (-before +after):\n%s", diff)
	}
	if got := ct.InitPID(t); got != pid {
		t.Errorf("container restarted: init %d -> %d", pid, got)
	}
	if !hasLine(ct.Conf(t), "tags: x") {
		t.Errorf("pct set -tags x did not write tags:\n%s", ct.Conf(t))
	}
	saveTranscript(t, "set-tags-running", "pct set -tags on a running container", set)
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(ls[len(ls)-1])
}

func hasLine(s, line string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// sortedLines compares configs as sets of lines: PVE orders devN allow lines differently
// from start to start.
func sortedLines(s string) []string {
	out := strings.Split(strings.TrimSpace(s), "\n")
	sort.Strings(out)
	return out
}
