package pve

import (
	"fmt"
	"strings"
	"testing"

	"gpupass/internal/pvelab"
)

// TestLabPctOutputs runs, with the real pct, every command the pct runtime issues, in the
// states its tests need, and checks what PVE prints where. With -record it saves one
// transcript per case under internal/runtime/testdata/pve-lab/, which
// internal/runtime's TestPCTLabTranscripts replays (they replace the hand-written ones).
func TestLabPctOutputs(t *testing.T) {
	ct := pvelab.NewCT(t, pvelab.Spec{Privileged: true, Conf: []string{
		"lxc.cgroup2.devices.allow: c 195:* rwm",
		"lxc.mount.entry: /dev/null dev/gpupass-null none bind,create=file 0 0",
	}})
	id := fmt.Sprint(ct.ID)
	const missing = "9999" // the lab's ids 9950-9999 are for hand allocation; 9999 is never created

	statusStopped := pvelab.MustPct(t, "status", id, "--verbose")
	start := pvelab.MustPct(t, "start", id)
	startAgain := pvelab.Pct(t, "start", id)
	statusRunning := pvelab.MustPct(t, "status", id, "--verbose")
	current := pvelab.MustPct(t, "config", id, "--current")
	ct.WriteConf(t, ct.Conf(t)+"\n[pve:pending]\ncores: 2\ndelete: swap\n")
	pending := pvelab.MustPct(t, "pending", id)
	list := pvelab.MustPct(t, "list")
	reboot := pvelab.MustPct(t, "reboot", id, "--timeout", "120")
	statusAfterReboot := pvelab.MustPct(t, "status", id, "--verbose")
	stop := pvelab.MustPct(t, "stop", id)
	stopAgain := pvelab.Pct(t, "stop", id)
	statusMissing := pvelab.Pct(t, "status", missing, "--verbose")
	ct.AppendConf(t, "lock: backup")
	startLocked := pvelab.Pct(t, "start", id)
	pvelab.MustPct(t, "unlock", id)
	ct.AppendConf(t, "dev9: /dev/gpupass-no-such-node,mode=0666")
	startHook := pvelab.Pct(t, "start", id)

	checks := []struct {
		name string
		ok   bool
		r    pvelab.Result
	}{
		{"status stopped", strings.Contains(statusStopped.Stdout, "status: stopped"), statusStopped},
		{"start again says already running", startAgain.Code != 0 && strings.Contains(startAgain.Stderr, "already running"), startAgain},
		{"status running names the pid", strings.Contains(statusRunning.Stdout, "status: running") && strings.Contains(statusRunning.Stdout, "\npid: "), statusRunning},
		{"config --current ends with raw lxc keys", strings.HasSuffix(strings.TrimSpace(current.Stdout), "lxc.mount.entry: /dev/null dev/gpupass-null none bind,create=file 0 0"), current},
		{"pending lists new and del", strings.Contains(pending.Stdout, "new cores: 2") && strings.Contains(pending.Stdout, "del swap: 0"), pending},
		{"list has the container", strings.Contains(list.Stdout, "\n"+id+" "), list},
		{"stop again says not running", stopAgain.Code != 0 && strings.Contains(stopAgain.Stderr, "not running"), stopAgain},
		{"missing config", statusMissing.Code != 0 && strings.Contains(statusMissing.Stderr, "does not exist"), statusMissing},
		{"locked start refused", startLocked.Code != 0 && strings.Contains(startLocked.Stderr, "CT is locked (backup)"), startLocked},
		{"start with a missing devN node refused, naming it", startHook.Code != 0 && strings.Contains(startHook.Stderr, "Device /dev/gpupass-no-such-node does not exist"), startHook},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s:\n%s", c.name, c.r)
		}
	}

	saveTranscript(t, "status-stopped", "pct status --verbose of a stopped container", statusStopped)
	saveTranscript(t, "status-running", "pct status --verbose of a running container", statusRunning)
	saveTranscript(t, "status-missing", "pct status --verbose of an id without a config", statusMissing)
	saveTranscript(t, "start", "pct start of a stopped container", start)
	saveTranscript(t, "start-already-running", "pct start of a running container", startAgain)
	saveTranscript(t, "start-locked", "pct start of a container with lock: backup", startLocked)
	saveTranscript(t, "start-missing-dev", "pct start refused before the task: a devN node that does not exist", startHook)
	saveTranscript(t, "stop", "pct stop of a running container", stop)
	saveTranscript(t, "stop-not-running", "pct stop of a stopped container", stopAgain)
	saveTranscript(t, "restart-running", "the pct runtime's restart of a running container: status, then reboot", statusAfterReboot, reboot)
	saveTranscript(t, "restart-stopped", "the pct runtime's restart of a stopped container: status, then start", statusStopped, start)
	saveTranscript(t, "config-current", "pct config --current with raw lxc keys", current)
	saveTranscript(t, "pending", "pct pending with [pve:pending] cores: 2, delete: swap", pending)
	saveTranscript(t, "list", "pct list", list)
}
