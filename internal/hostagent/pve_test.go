package hostagent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/guestchan"
	"gpupass/internal/journal"
	"gpupass/internal/pveconf"
	"gpupass/internal/runtime"
	pb "gpupass/proto/gpupass/v1"
)

func TestPVEFactsOf(t *testing.T) {
	tests := []struct {
		name string
		conf string
		want pveFacts
	}{
		{"plain", "arch: amd64\nmemory: 512\n", pveFacts{}},
		{"locked", "arch: amd64\nlock: backup\n", pveFacts{locked: "backup"}},
		{"lock only in a snapshot", "arch: amd64\n\n[snap1]\nlock: snapshot\n", pveFacts{}},
		{"pending", "arch: amd64\nmemory: 512\n\n[pve:pending]\nmemory: 4096\ndelete: swap\n",
			pveFacts{pending: []string{"memory: 4096", "delete: swap"}}},
		{"pending header in capitals", "arch: amd64\n\n[PVE:Pending]\ncores: 8\n", pveFacts{pending: []string{"cores: 8"}}},
		{"pending lxc line", "arch: amd64\nlxc.cgroup2.devices.allow: c 195:* rwm\n\n[pve:pending]\nlxc.apparmor.profile: unconfined\n",
			pveFacts{pending: []string{"lxc.apparmor.profile: unconfined"}, pendingLXC: true}},
		{"not a section", "arch: amd64\n[x.y]\nmemory: 512\n", pveFacts{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := pveconf.Parse([]byte(tt.conf), pveconf.PVE)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(pveFactsOf(cfg), tt.want, cmp.AllowUnexported(pveFacts{})); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

func TestHAResource(t *testing.T) {
	tests := []struct {
		name, cfg       string
		wantSID, wantSt string
	}{
		{"no file", "", "", ""},
		{"managed", "ct: 901\n\tgroup gpu\n\tstate started\n\nvm: 100\n\tstate stopped\n", "ct:901", "started"},
		{"default state", "ct: 901\n\tmax_restart 2\n", "ct:901", "started"},
		{"ignored", "ct: 901\n\tstate ignored\n", "", ""},
		{"other container", "ct: 9010\n\tstate started\nct: 90\n", "", ""},
		{"a vm of the same id", "vm: 901\n\tstate started\n", "", ""},
		{"stopped", "# comment\nvm: 100\nct: 901\n\tstate stopped\n", "ct:901", "stopped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.cfg != "" {
				p := filepath.Join(root, "etc/pve/ha/resources.cfg")
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(tt.cfg), 0o640); err != nil {
					t.Fatal(err)
				}
			}
			sid, st, err := haResource(root, "901")
			if err != nil || sid != tt.wantSID || st != tt.wantSt {
				t.Errorf("haResource = %q %q %v, want %q %q", sid, st, err, tt.wantSID, tt.wantSt)
			}
		})
	}
}

// applyPVE applies GPU 0 to the fault host's running container 901 with applyPending.
func (h *faultHost) applyPVE(applyPending bool) *pb.ContainerResult {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp := h.agent.Apply(ctx, &pb.ApplyRequest{Containers: []*pb.ContainerSpec{{Id: "901", Gpus: []string{"0"}}},
		TimeoutMs: 500, ApplyPending: applyPending}, nil)
	if len(resp.GetContainers()) != 1 {
		h.t.Fatalf("apply answered %d results", len(resp.GetContainers()))
	}
	res := resp.GetContainers()[0]
	h.t.Logf("apply: error=%q written=%v restarted=%v", res.GetError(), res.GetWritten(), res.GetRestarted())
	return res
}

func (h *faultHost) planPVE() *pb.ContainerPlan {
	h.t.Helper()
	resp, err := h.agent.Plan(context.Background(), &pb.PlanRequest{Containers: []*pb.ContainerSpec{{Id: "901", Gpus: []string{"0"}}}})
	if err != nil || len(resp.GetContainers()) != 1 {
		h.t.Fatalf("plan: %v", err)
	}
	return resp.GetContainers()[0]
}

// TestApplyRefusesLockedContainer: `lock: backup` in the config (a vzdump is running). The
// plan says locked; apply writes nothing and runs no pct action (pct reboot would not
// check the lock, and the rollback's start would then be refused), and says why.
func TestApplyRefusesLockedContainer(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	conf := strings.Replace(origConf, "memory: 8192\n", "memory: 8192\nlock: backup\n", 1)
	h.writeConf(conf)
	if p := h.planPVE(); p.GetLocked() != "backup" || !p.GetRestart().GetRequired() {
		t.Errorf("plan locked=%q restart=%v, want backup and a restart", p.GetLocked(), p.GetRestart().GetRequired())
	}
	res := h.applyPVE(true)
	wantContains(t, "error", res.GetError(), "locked: backup", "nothing was written or restarted", "pct unlock 901")
	if b, _ := os.ReadFile(h.conf); string(b) != conf {
		t.Errorf("locked config changed:\n%s", b)
	}
	if a := h.pctActions(); len(a) != 0 {
		t.Errorf("pct actions on a locked container: %q", a)
	}
}

// TestApplyPendingChanges: a restart applies every [pve:pending] change (PVE's vm_start).
// The plan lists them; apply refuses without --apply-pending (nothing written, no pct
// action) and goes ahead with it.
func TestApplyPendingChanges(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	conf := strings.Replace(origConf, "\n[before-gpu]\n", "\n[PVE:PENDING]\nmemory: 16384\ndelete: cores\n\n[before-gpu]\n", 1)
	h.writeConf(conf)
	p := h.planPVE()
	if diff := cmp.Diff(p.GetPending(), []string{"memory: 16384", "delete: cores"}); diff != "" || !p.GetRestart().GetRequired() {
		t.Errorf("plan pending (-got +want):\n%s restart=%v", diff, p.GetRestart().GetRequired())
	}
	res := h.applyPVE(false)
	wantContains(t, "error", res.GetError(), "2 pending change(s)", "memory: 16384; delete: cores", "--apply-pending", "nothing was written")
	if b, _ := os.ReadFile(h.conf); string(b) != conf || len(h.pctActions()) != 0 {
		t.Errorf("refused apply wrote or acted: actions %q\n%s", h.pctActions(), b)
	}
	res = h.applyPVE(true)
	if !res.GetWritten() || !res.GetRestarted() {
		t.Errorf("with --apply-pending: written=%v restarted=%v error=%q", res.GetWritten(), res.GetRestarted(), res.GetError())
	}
	if got := strings.Join(h.pctActions(), "; "); got != "reboot 901 --timeout 1" {
		t.Errorf("pct actions %q, want one reboot", got)
	}
}

// TestApplyPendingLXCLine: a pending lxc.* line would replace all raw lxc.* lines at the
// start, the GPU lines too: refused even with --apply-pending.
func TestApplyPendingLXCLine(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	conf := strings.Replace(origConf, "\n[before-gpu]\n", "\n[pve:pending]\nlxc.apparmor.profile: unconfined\n\n[before-gpu]\n", 1)
	h.writeConf(conf)
	if p := h.planPVE(); !p.GetPendingReplacesLxc() {
		t.Error("plan does not flag the pending lxc.* line")
	}
	res := h.applyPVE(true)
	wantContains(t, "error", res.GetError(), "replaces ALL raw lxc.* lines", "remove the lxc.* lines from [pve:pending]")
	if b, _ := os.ReadFile(h.conf); string(b) != conf || len(h.pctActions()) != 0 {
		t.Errorf("refused apply wrote or acted: actions %q", h.pctActions())
	}
}

// TestApplyHAManaged: HA manages ct:901. The plan says so with the command; apply writes
// the config but does not reboot it behind HA's back, and gives the HA commands.
func TestApplyHAManaged(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	p := filepath.Join(h.root, "etc/pve/ha/resources.cfg")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("ct: 901\n\tstate started\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if pl := h.planPVE(); pl.GetHa() != "ct:901" || !strings.Contains(pl.GetHaCommand(), "ha-manager set ct:901 --state stopped") {
		t.Errorf("plan ha=%q command=%q", pl.GetHa(), pl.GetHaCommand())
	}
	res := h.applyPVE(false)
	wantContains(t, "error", res.GetError(), "managed by Proxmox HA (ct:901)", "ha-manager set ct:901 --state stopped", "ha-manager set ct:901 --state started")
	if !res.GetWritten() || res.GetRestarted() {
		t.Errorf("written=%v restarted=%v, want written and not restarted", res.GetWritten(), res.GetRestarted())
	}
	h.assertConfDesired()
	if a := h.pctActions(); len(a) != 0 {
		t.Errorf("pct actions on an HA-managed container: %q", a)
	}
}

func pveconfLockPath(root, id string) string {
	p := pveconf.LockPathFor(root, id)
	_ = os.MkdirAll(filepath.Dir(p), 0o755)
	return p
}

// TestTimedOutRebootWaitsForTheTask: pct reboot hangs past its deadline (12s: stop 1s +
// start 1s + 10s) while the PVE task it started runs on holding the config lock for 14s. The runtime waits for the lock before
// the rollback: the rollback's pct comes after the task ended, never racing it.
func TestTimedOutRebootWaitsForTheTask(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	h.setFile("hang-reboot", "")
	h.setFile("task-reboot", "14")
	res, _ := h.apply(false, time.Second)
	wantContains(t, "error", res.GetError(), "pct reboot 901", "the PVE task ran on after pct was killed and ended 2", "rolled back: the config and the container are as they were")
	var order []string
	for _, l := range strings.Split(h.file("transcript"), "\n") {
		if strings.HasPrefix(l, "task-") || strings.HasPrefix(l, "reboot") {
			order = append(order, l)
		}
	}
	if diff := cmp.Diff(order, []string{"reboot 901 --timeout 1", "task-start", "task-done", "reboot 901 --timeout 1"}); diff != "" {
		t.Errorf("order of pct and the task (-got +want):\n%s", diff)
	}
	h.assertConfAsWas()
}

// TestTimedOutTaskStillRunning: the task holds the lock past TaskWait: no rollback races
// it; the error says why and the journal keeps the apply as failed.
func TestTimedOutTaskStillRunning(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	h.agent.rt.(*runtime.PCT).TaskWait = 500 * time.Millisecond
	h.setFile("hang-reboot", "")
	h.setFile("task-reboot", "16")
	res, _ := h.apply(false, time.Second)
	wantContains(t, "error", res.GetError(), "still held", "not rolled back: the PVE task still runs")
	if res.GetRolledBack() {
		t.Error("rolled back while the task runs")
	}
	if got := strings.Join(h.pctActions(), "; "); got != "reboot 901 --timeout 1; task-start" {
		t.Errorf("pct actions %q, want the one reboot and no rollback", got)
	}
	if o := h.journalOutcome(); o.Outcome != journal.OutcomeFailed {
		t.Errorf("journal outcome %q, want %q", o.Outcome, journal.OutcomeFailed)
	}
}

// netUnix is /proc/net/unix with the command sockets of the given running containers
// (each running container's monitor listens on @/var/lib/lxc/<id>/command) and noise.
func netUnix(ids ...string) string {
	s := "Num       RefCount Protocol Flags    Type St Inode Path\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01 27311 /run/systemd/notify\n" +
		"0000000000000000: 00000002 00000000 00010000 0001 01 27312 @/var/lib/lxc/abc/command\n"
	for i, id := range ids {
		s += fmt.Sprintf("0000000000000000: 00000002 00000000 00010000 0001 01 %d @/var/lib/lxc/%s/command\n", 28000+i, id)
	}
	return s
}

// fakeLXCInfo answers `lxc-info -n <id> -p` with the fault host's init pid.
const fakeLXCInfo = `#!/bin/sh
D=$(dirname "$0")
echo "lxc-info $*" >> "$D/transcript"
echo "PID:            $(cat "$D/pid")"
`

// fakeLXCLs answers `lxc-ls --active -f -F NAME,PID` for the running containers 901 and 903
// (both with the fault host's init pid).
const fakeLXCLs = `#!/bin/sh
D=$(dirname "$0")
echo "lxc-ls $*" >> "$D/transcript"
echo "NAME PID   "
echo "901  $(cat "$D/pid") "
echo "903  $(cat "$D/pid") "
`

// TestPCTCallsPerRequest counts the processes the agent runs: a status of three
// containers runs no pct and one command in all: running comes from /proc/net/unix, the
// inits' pids (the restart rule's evidence) from one lxc-ls for the whole request; an
// apply that restarts one container runs exactly one pct, the reboot (its pid comes from
// lxc-info, a C program, as PVE's own find_lxc_pid).
func TestPCTCallsPerRequest(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	proc := filepath.Join(h.bin, "proc")
	if err := os.MkdirAll(filepath.Join(proc, "net"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "net/unix"), []byte(netUnix("901", "903")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.bin, "lxc-info"), []byte(fakeLXCInfo), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.bin, "lxc-ls"), []byte(fakeLXCLs), 0o755); err != nil {
		t.Fatal(err)
	}
	h.agent.rt.(*runtime.PCT).ProcRoot = proc
	for _, id := range []string{"902", "903"} {
		if err := os.WriteFile(filepath.Join(h.root, "etc/pve/lxc", id+".conf"), []byte("arch: amd64\n"), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	specs := []*pb.ContainerSpec{{Id: "901"}, {Id: "902"}, {Id: "903"}, {Id: "904"}}
	st := h.agent.Status(context.Background(), &pb.StatusRequest{Containers: specs})
	var got []string
	for _, c := range st.GetContainers() {
		got = append(got, c.GetId()+"="+c.GetState())
	}
	if diff := cmp.Diff(got, []string{"901=not-ready", "902=stopped", "903=not-ready", "904=error"}); diff != "" {
		t.Errorf("states (-got +want):\n%s", diff)
	}
	if tr := strings.TrimSpace(h.file("transcript")); tr != "lxc-ls --active -f -F NAME,PID" {
		t.Errorf("status ran commands:\n%s\nwant one lxc-ls and nothing else", tr)
	}
	if err := os.Remove(filepath.Join(h.bin, "transcript")); err != nil {
		t.Fatal(err)
	}
	res := h.applyPVE(false)
	if !res.GetRestarted() {
		t.Fatalf("not restarted: %q", res.GetError())
	}
	var pct []string
	for _, l := range strings.Split(h.file("transcript"), "\n") {
		if l != "" && !strings.HasPrefix(l, "lxc-info ") && !strings.HasPrefix(l, "lxc-ls ") {
			pct = append(pct, l)
		}
	}
	if diff := cmp.Diff(pct, []string{"reboot 901 --timeout 1"}); diff != "" {
		t.Errorf("pct calls of one apply (-got +want):\n%s", diff)
	}
	t.Logf("apply: %d pct call(s), %d lxc-info call(s)", len(pct), strings.Count(h.file("transcript"), "lxc-info "))
}

// TestFailedStartSaysWhy: pct start prints the task log, with the hook's explanation, on
// standard output and only "startup for container '901' failed" on standard error. The
// apply's error carries both.
func TestFailedStartSaysWhy(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, false)
	h.setFile("fail-start", "5")
	h.setFile("stdout-start", "run_buffer: 571 Script exited with status 1\nlxc_init: 845 Failed to run lxc.hook.pre-start for container \"901\"\nerror in setup task PVE::LXC::Setup::pre_start_hook: /dev/nvidia-uvm: no such device")
	res, _ := h.apply(true, time.Second)
	wantContains(t, "error", res.GetError(), "injected failure", "PVE::LXC::Setup::pre_start_hook: /dev/nvidia-uvm: no such device", "Failed to run lxc.hook.pre-start")
}

// TestStatusSaysGuestRefused: a guest that connected and was refused is reported as such,
// with the reason, not as a guest that never connected.
func TestStatusSaysGuestRefused(t *testing.T) {
	t.Parallel()
	h := newFaultHost(t, true)
	at := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		snap    guestchan.Snapshot
		want    string
		refused string
	}{
		{"never connected", guestchan.Snapshot{}, "guest agent has not connected", ""},
		{"refused", guestchan.Snapshot{Refused: "peer pid 7 is in container 902", RefusedAt: at},
			"guest agent connected but was refused at 2026-12-02T07:00:00Z: peer pid 7 is in container 902", "peer pid 7 is in container 902"},
	} {
		cs := &pb.ContainerStatus{Id: "901"}
		h.agent.judge(cs, &pb.ContainerSpec{Id: "901"}, tc.snap)
		if got := strings.Join(cs.GetReasons(), "; "); !strings.Contains(got, tc.want) || cs.GetGuestRefused() != tc.refused {
			t.Errorf("%s: reasons %q guest_refused %q, want %q and %q", tc.name, got, cs.GetGuestRefused(), tc.want, tc.refused)
		}
	}
}
