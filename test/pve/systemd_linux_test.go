package pve

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
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

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// systemdTemplate makes (once per content) gpupass-bookworm-systemd-<hash>.tar.zst in PVE's
// template directory: the cached Debian 12 systemd rootfs with the guest agent baked in.
func systemdTemplate(t *testing.T) string {
	t.Helper()
	base := lxctest.RootfsTarball(t, lxctest.KindSystemd)
	work := t.TempDir()
	agent := filepath.Join(work, "gpupass-guest-agent")
	build := exec.Command("go", "build", "-buildvcs=false", "-trimpath", "-o", agent, "./agent-guest")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./agent-guest: %v\n%s", err, out)
	}
	unit := filepath.Join("..", "..", "packaging", "gpupass-guest-agent.service")
	h := sha256.New()
	for _, p := range []string{base, agent, unit} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	name := fmt.Sprintf("gpupass-bookworm-systemd-%s.tar.zst", hex.EncodeToString(h.Sum(nil))[:12])
	dst := filepath.Join(pvelab.TemplateDir, name)
	if _, err := os.Stat(dst); err == nil {
		return name
	}
	began := time.Now()
	root := filepath.Join(work, "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(argv ...string) {
		t.Helper()
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
	}
	run("tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-xpf", base, "-C", root)
	// Baked in as docs/guest-agent.md says.
	run("install", "-m", "0755", agent, filepath.Join(root, "usr/local/bin/gpupass-guest-agent"))
	run("install", "-m", "0644", unit, filepath.Join(root, "etc/systemd/system/gpupass-guest-agent.service"))
	if err := os.MkdirAll(filepath.Join(root, "etc/systemd/system/multi-user.target.wants"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../gpupass-guest-agent.service", filepath.Join(root, "etc/systemd/system/multi-user.target.wants/gpupass-guest-agent.service")); err != nil {
		t.Fatal(err)
	}
	tmp := dst + fmt.Sprintf(".tmp%d", os.Getpid())
	run("tar", "--numeric-owner", "--xattrs", "-I", "zstd -T0 -3", "-cf", tmp, "-C", root, ".")
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
	t.Logf("built PVE template %s in %v", dst, time.Since(began).Round(time.Millisecond))
	// Earlier builds (another agent binary) are of no further use: 45 MB each.
	old, _ := filepath.Glob(filepath.Join(pvelab.TemplateDir, "gpupass-bookworm-systemd-*.tar.zst"))
	for _, p := range old {
		if p != dst {
			_ = os.Remove(p)
		}
	}
	return name
}
