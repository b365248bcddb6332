package pve

import (
	"fmt"
	"strings"
	"testing"

	"gpupass/internal/pvelab"
)

// TestTranscripts runs, with the real pct, the commands gpupass's pct runtime issues
// (internal/runtime/pct.go) in the states it meets, checks what each returns, and with
// -record saves them as internal/runtime/testdata/pve-lab/<name>.txt, named like the
// hand-written transcripts in testdata/pct/ they replace.
func TestTranscripts(t *testing.T) {
	ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: []string{
		"dev0: " + pvelab.Node(t, 7, 128) + ",mode=0666",
		"lxc.cgroup2.devices.allow: c 7:0 rwm",
		"lxc.mount.entry: " + pvelab.Node(t, 7, 0) + " dev/vcs none bind,optional,create=file",
	}})
	id := fmt.Sprint(ct.ID)
	type step struct {
		name string
		args []string
		code int
		// out must appear in stdout (or stderr when code != 0)
		out string
	}
	run := func(file, what string, steps ...step) {
		t.Helper()
		var rs []pvelab.Result
		for _, s := range steps {
			r := pvelab.Pct(t, s.args...)
			got := r.Stdout
			if s.code != 0 {
				got = r.Stderr
			}
			if r.Code != s.code || !strings.Contains(got, s.out) {
				t.Errorf("%s: want exit %d and %q; got %s", s.name, s.code, s.out, r)
			}
			rs = append(rs, r)
		}
		saveTranscript(t, file, what, rs...)
	}
	run("status-stopped", "pct status --verbose of a stopped container",
		step{"status", []string{"status", id, "--verbose"}, 0, "status: stopped"})
	run("start", "pct start", step{"start", []string{"start", id}, 0, ""})
	run("status-running", "pct status --verbose of a running container",
		step{"status", []string{"status", id, "--verbose"}, 0, "status: running"})
	run("start-already-running", "pct start of a running container",
		step{"start", []string{"start", id}, 255, "CT " + id + " already running"})
	run("config-current", "pct config --current (devN, raw lxc keys last)",
		step{"config", []string{"config", id, "--current"}, 0, "lxc.cgroup2.devices.allow: c 7:0 rwm"})
	// On a running container PVE queues features and the removal of a devN in [pve:pending].
	pvelab.MustPct(t, "set", id, "-features", "nesting=1", "-delete", "dev0")
	run("pending", "pct pending after pct set -features nesting=1 -delete dev0 on a running container",
		step{"pending", []string{"pending", id}, 0, "new features: nesting=1"})
	run("restart-running", "pct status --verbose, then pct reboot --timeout (applies [pve:pending])",
		step{"status", []string{"status", id, "--verbose"}, 0, "status: running"},
		step{"reboot", []string{"reboot", id, "--timeout", "120"}, 0, ""})
	if conf := ct.Conf(t); strings.Contains(conf, "dev0:") || !strings.Contains(conf, "features: nesting=1") {
		t.Errorf("pct reboot did not apply the pending changes:\n%s", conf)
	}
	run("stop", "pct stop", step{"stop", []string{"stop", id}, 0, ""})
	run("stop-not-running", "pct stop of a stopped container",
		step{"stop", []string{"stop", id}, 255, "CT " + id + " not running"})
	missing := fmt.Sprint(pvelab.FirstID - 1)
	run("status-missing", "pct status of an id without a config",
		step{"status", []string{"status", missing, "--verbose"}, 2, "Configuration file 'nodes/"})
	run("list", "pct list (the lab's containers at that moment)",
		step{"list", []string{"list"}, 0, "VMID       Status     Lock         Name"})
}
