package observe

import (
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/lxctest"
)

var captureMountinfo = flag.String("capture-mountinfo", "", "write the systemd container's mountinfo (for the JudgeSocket replay fixture) to this file")

// listenEcho listens on dir/agent.sock (0666) and answers every connection with "pong"
// until the test ends.
func listenEcho(t *testing.T, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			_, _ = c.Read(buf)
			_, _ = c.Write([]byte("pong"))
			c.Close()
		}
	}()
	return sock
}

// TestGuestSocketUnderInit shows, on real containers, where the guest socket survives the
// container's init: a host directory bound at /dev/gpupass is visible to processes inside
// under busybox init and under systemd as PID 1, privileged and unprivileged; one bound at
// /run/gpupass is visible under busybox but hidden by the tmpfs systemd mounts on /run at
// boot, although mountinfo still lists the bind. GuestSocketEvidence + JudgeSocket tell
// the two apart from the host, without exec.
func TestGuestSocketUnderInit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		kind   lxctest.Kind
		unpriv bool
	}{
		{"busybox privileged", lxctest.KindBusybox, false},
		{"busybox unprivileged", lxctest.KindBusybox, true},
		{"systemd privileged", lxctest.KindSystemd, false},
		{"systemd unprivileged", lxctest.KindSystemd, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			devDir, runDir := lxctest.TempDir(t), lxctest.TempDir(t)
			devSock, runSock := listenEcho(t, devDir), listenEcho(t, runDir)
			c := lxctest.NewContainer(t, lxctest.Spec{
				Kind:         tc.kind,
				Unprivileged: tc.unpriv,
				Binds:        [][2]string{{lxctest.Probe(t), lxctest.ProbePath}},
				ExtraConfig: []string{
					// As gpupass writes them: the directory, read-write, created on demand.
					"lxc.mount.entry = " + devDir + " dev/gpupass none bind,create=dir 0 0",
					"lxc.mount.entry = " + runDir + " run/gpupass none bind,create=dir 0 0",
				},
			})
			start := time.Now()
			c.Start(t)
			systemd := tc.kind == lxctest.KindSystemd
			if systemd {
				state := c.WaitBooted(t, 60*time.Second)
				t.Logf("systemd in %s: %s %v after lxc-start", c.Name(), state, time.Since(start).Round(time.Millisecond))
				if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.InitPID(t))); err != nil || strings.TrimSpace(string(comm)) != "systemd" {
					t.Fatalf("init of %s is %q (%v), want systemd", c.Name(), comm, err)
				}
			}
			pid := c.InitPID(t)
			if *captureMountinfo != "" && systemd && !tc.unpriv {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(*captureMountinfo, b, 0o644); err != nil {
					t.Fatal(err)
				}
			}

			// What a process inside sees.
			out, code := c.Attach(t, lxctest.ProbePath, "dial", "/dev/gpupass/agent.sock", "hello")
			if code != 0 || out != "pong" {
				t.Errorf("dial /dev/gpupass/agent.sock from inside: exit %d, %q; want pong", code, out)
			}
			out, code = c.Attach(t, lxctest.ProbePath, "dial", "/run/gpupass/agent.sock", "hello")
			if gotRun, wantRun := code == 0 && out == "pong", !systemd; gotRun != wantRun {
				t.Errorf("dial /run/gpupass/agent.sock from inside: exit %d, %q; reachable %v, want %v", code, out, gotRun, wantRun)
			}

			// What the host judges, without exec.
			for _, j := range []struct {
				dir, name string
				want      SocketView
			}{
				{devDir, filepath.Base(devSock), SocketView{Visible: "/dev/gpupass"}},
				{runDir, filepath.Base(runSock), map[bool]SocketView{false: {Visible: "/run/gpupass"}, true: {Hidden: "/run/gpupass", Cover: "/run"}}[systemd]},
				// No socket on the host yet: the directory itself is the evidence.
				{devDir, "not-yet.sock", SocketView{Visible: "/dev/gpupass"}},
				{runDir, "not-yet.sock", map[bool]SocketView{false: {Visible: "/run/gpupass"}, true: {Hidden: "/run/gpupass", Cover: "/run"}}[systemd]},
			} {
				ev, err := GuestSocketEvidence("/proc", pid, j.dir, j.name, []string{"/dev/gpupass", "/run/gpupass"})
				if err != nil {
					t.Fatal(err)
				}
				if d := cmp.Diff(JudgeSocket(ev), j.want); d != "" {
					t.Errorf("JudgeSocket for %s/%s (-got +want):\n%s", j.dir, j.name, d)
				}
			}
			// The trap: mountinfo lists the /run/gpupass bind either way.
			mounts, err := Mounts("/proc", pid)
			if err != nil {
				t.Fatal(err)
			}
			listed := false
			for _, m := range mounts {
				listed = listed || m.Target == "/run/gpupass"
			}
			if !listed {
				t.Errorf("mountinfo of %s does not list /run/gpupass", c.Name())
			}
		})
	}
}
