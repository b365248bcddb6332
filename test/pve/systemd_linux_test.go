package pve

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/gpu"
	"gpupass/internal/guest"
	"gpupass/internal/guestchan"
	"gpupass/internal/log"
	"gpupass/internal/lxctest"
	"gpupass/internal/observe"
	"gpupass/internal/passthrough"
	"gpupass/internal/pveconf"
	"gpupass/internal/pvelab"
	pb "gpupass/proto/gpupass/v1"
)

// TestSystemdTemplateGuestConnects: a Proxmox template made from the same Debian 12 systemd
// rootfs the suite boots under plain LXC (test/rootfs/debian.sh), with the guest agent baked
// in as docs/guest-agent.md says (the binary, the shipped unit, enabled). The real `pct
// create` makes containers from it, unprivileged (PVE 9's default) and privileged; the guest
// socket mount is what gpupass renders (passthrough.Plan on the real /etc/pve config), and
// the real `pct start` boots systemd as PID 1. The agent, started by the unit, connects to a
// real guest socket registry, which accepts it from the kernel's word (cgroup
// /lxc/<id>/ns/system.slice/gpupass-guest-agent.service, hostname ai-<id>). A second
// directory bound at the old place, /run/gpupass, is hidden by systemd's tmpfs on /run, and
// the host-side evidence names it so.
func TestSystemdTemplateGuestConnects(t *testing.T) {
	pvelab.Require(t)
	tmpl := systemdTemplate(t)
	for _, privileged := range []bool{false, true} {
		name := map[bool]string{false: "unprivileged", true: "privileged"}[privileged]
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(lxctest.TempDir(t), "guests")
			reg := guestchan.New(guestchan.Config{Dir: dir, Log: log.ForTest(t, "guests"), Build: "test"})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- reg.Run(ctx) }()
			defer func() { cancel(); <-done }()
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}

			ct := pvelab.NewCT(t, pvelab.Spec{Template: tmpl, Privileged: privileged, Memory: 256})
			id := strconv.Itoa(ct.ID)
			hostDir, err := reg.Ensure(id)
			if err != nil {
				t.Fatal(err)
			}
			reg.SetExpectation(id, &pb.Expectation{HeartbeatIntervalMs: 10000})

			// The managed guest mount as gpupass renders it into the PVE config.
			cfg, err := pveconf.Parse([]byte(ct.Conf(t)), pveconf.FormatPVE)
			if err != nil {
				t.Fatal(err)
			}
			inv := &gpu.Inventory{Root: "/", Majors: map[string]uint32{}, Nodes: map[string]gpu.Node{}}
			res, err := passthrough.Plan(cfg, inv, passthrough.Desired{GuestSocketDir: hostDir, Label: ct.ConfPath()})
			if err != nil {
				t.Fatal(err)
			}
			ct.WriteConf(t, string(res.New))
			// The old place, beside it, with a listening socket of its own.
			legacyDir := lxctest.TempDir(t)
			legacy := filepath.Join(legacyDir, guestchan.SocketName)
			ln, err := net.Listen("unix", legacy)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			ct.AppendConf(t, "lxc.mount.entry: "+legacyDir+" run/gpupass none bind,create=dir 0 0")
			pvelab.ParseStrict(t, ct.ConfPath())

			start := time.Now()
			ct.Start(t)
			started := time.Since(start)
			wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
			defer wcancel()
			snap, err := reg.Wait(wctx, id, func(s guestchan.Snapshot) bool { return s.Connected && s.Report != nil })
			if err != nil {
				out, _ := ct.Exec(t, "systemctl", "status", "--no-pager", "gpupass-guest-agent.service")
				t.Fatalf("no report from the guest agent of %s within 60 s: %v\nconfig PVE rendered:\n%s\nunit:\n%s", id, err, ct.RenderedConfig(t), out)
			}
			t.Logf("PVE container %s (%s): pct start took %v, the guest's first report arrived %v after it began",
				id, name, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			if got := snap.Report.GetTrigger(); got != guest.TriggerConnect {
				t.Errorf("first report trigger %q, want connect", got)
			}

			if out, _ := ct.Exec(t, "cat", "/proc/1/comm"); strings.TrimSpace(out) != "systemd" {
				t.Errorf("PID 1 of %s is %q, want systemd", id, strings.TrimSpace(out))
			}
			if out, _ := ct.Exec(t, "systemctl", "is-active", "gpupass-guest-agent.service"); strings.TrimSpace(out) != "active" {
				t.Errorf("gpupass-guest-agent.service is %q, want active", strings.TrimSpace(out))
			}
			// The kernel's word, as the registry read it: PVE's cgroup layout under systemd.
			procs, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/lxc", id, "ns/system.slice/gpupass-guest-agent.service/cgroup.procs"))
			if err != nil || len(strings.Fields(string(procs))) == 0 {
				t.Errorf("no guest agent process in /lxc/%s/ns/system.slice/gpupass-guest-agent.service: %v %q", id, err, procs)
			} else {
				pid := strings.Fields(string(procs))[0]
				cg, _ := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
				if id2, ok := guestchan.ContainerOfCgroup(strings.TrimPrefix(lastLine(string(cg)), "0::")); !ok || id2 != id {
					t.Errorf("guest agent cgroup %q names container %q (%v), want %s", cg, id2, ok, id)
				}
			}

			// What the host judges from the init's own view, without exec.
			pid := ct.InitPID(t)
			for _, j := range []struct {
				dir  string
				want observe.SocketView
			}{
				{hostDir, observe.SocketView{Visible: guestchan.GuestDir}},
				{legacyDir, observe.SocketView{Hidden: guestchan.LegacyGuestDir, Cover: "/run"}},
			} {
				ev, err := observe.GuestSocketEvidence("/proc", pid, j.dir, guestchan.SocketName, []string{guestchan.GuestDir, guestchan.LegacyGuestDir})
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(observe.JudgeSocket(ev), j.want); d != "" {
					t.Errorf("JudgeSocket for %s (-got +want):\n%s", j.dir, d)
				}
			}
		})
	}
}

// systemdTemplate builds the guest agent and makes the PVE template from the systemd rootfs.
func systemdTemplate(t *testing.T) string {
	t.Helper()
	agent := filepath.Join(t.TempDir(), "gpupass-guest-agent")
	build := exec.Command("go", "build", "-buildvcs=false", "-trimpath", "-o", agent, "./agent-guest")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./agent-guest: %v\n%s", err, out)
	}
	return pvelab.SystemdTemplate(t, agent, filepath.Join("..", "..", "packaging", "gpupass-guest-agent.service"))
}
