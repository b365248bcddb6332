package lxctest

import (
	"bufio"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { Cgroup2Main(m) }

func TestNameFor(t *testing.T) {
	tests := []struct{ name, test, prefix string }{
		{"plain", "TestDevices", "ltdevices-"},
		{"subtest uses last part", "TestX/Unprivileged_Socket", "ltunprivileged-"},
		{"truncated", "TestAVeryLongTestNameIndeed", "ltaverylongtes-"},
		{"only symbols", "Test/__", "lt-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := nameFor(tt.test)
			if !strings.HasPrefix(got, tt.prefix) || len(got) != len(tt.prefix)+6 {
				t.Errorf("nameFor(%q) = %q, want %q + 6 hex digits", tt.test, got, tt.prefix)
			}
		})
	}
	if a, b := nameFor("TestA"), nameFor("TestA"); a == b {
		t.Errorf("two names for one test are equal: %q", a)
	}
}

func TestRenderConfig(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "probe")
	if err := os.WriteFile(file, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &Container{name: "c1", lxcpath: "/p"}
	got, err := renderConfig(c, Spec{
		Binds:        [][2]string{{file, "/usr/local/bin/probe"}, {dir, "/run/gpupass"}},
		ExtraConfig:  []string{"lxc.cgroup2.devices.allow = c 10:229 rwm"},
		Unprivileged: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"# written by gpupass/internal/lxctest",
		"lxc.uts.name = c1",
		"lxc.rootfs.path = dir:/p/c1/rootfs",
		"lxc.net.0.type = empty",
		"lxc.init.cmd = /bin/sleep 2147483647",
		"lxc.mount.auto = proc:mixed sys:ro",
		"lxc.autodev = 1",
		"lxc.signal.halt = SIGKILL",
		"lxc.tty.max = 0",
		"lxc.pty.max = 16",
		"lxc.idmap = u 0 100000 65536",
		"lxc.idmap = g 0 100000 65536",
	}, "\n") + "\n" + strings.Join(DefaultDeviceRules, "\n") + "\n" + strings.Join([]string{
		"lxc.mount.entry = " + file + " usr/local/bin/probe none ro,bind,create=file 0 0",
		"lxc.mount.entry = " + dir + " run/gpupass none ro,bind,create=dir 0 0",
		"lxc.cgroup2.devices.allow = c 10:229 rwm",
	}, "\n") + "\n"
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("config (-got +want):\n%s", d)
	}
	for _, r := range DefaultDeviceRules {
		if strings.Contains(r, "10:") {
			t.Errorf("default device rules allow a simulated-GPU stand-in: %s", r)
		}
	}
	if _, err := renderConfig(c, Spec{Binds: [][2]string{{filepath.Join(dir, "absent"), "/x"}}}); err == nil {
		t.Error("bind of a missing host path: no error")
	}
}

func TestEnsureSubIDs(t *testing.T) {
	tests := []struct{ name, before, after string }{
		{"absent file", "", "root:100000:65536\n"},
		{"other entries", "lxd:1000000:65536", "lxd:1000000:65536\nroot:100000:65536\n"},
		{"already there", "root:100000:65536\n", "root:100000:65536\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "subuid")
			if tt.before != "" {
				if err := os.WriteFile(p, []byte(tt.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 {
				if err := ensureSubIDs(p); err != nil {
					t.Fatal(err)
				}
			}
			b, _ := os.ReadFile(p)
			if d := cmp.Diff(string(b), tt.after); d != "" {
				t.Errorf("(-got +want):\n%s", d)
			}
		})
	}
}

// TestContainer proves what other packages rely on, for privileged and unprivileged
// containers: a fast start; cgroup2 device rules enforced (deny -> EPERM, allowed -> the
// driver's own answer: ENXIO without a driver, success with one); and a unix socket in a
// bind-mounted host directory reachable from inside, its peer in lxc.payload.<name>.
func TestContainer(t *testing.T) {
	for _, unpriv := range []bool{false, true} {
		name := "privileged"
		if unpriv {
			name = "unprivileged"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			devs := TempDir(t)
			Mknod(t, filepath.Join(devs, "nodriver"), 195, 0) // allowed, no driver: ENXIO
			Mknod(t, filepath.Join(devs, "fuse"), 10, 229)    // allowed, driver: opens
			Mknod(t, filepath.Join(devs, "tun"), 10, 200)     // not allowed: EPERM
			sockDir := TempDir(t)
			sock := filepath.Join(sockDir, "agent.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if err := os.Chmod(sock, 0o666); err != nil {
				t.Fatal(err)
			}
			peers := make(chan string, 1)
			go serveEcho(ln, peers)

			c := NewContainer(t, Spec{
				Unprivileged: unpriv,
				Binds:        [][2]string{{Probe(t), ProbePath}, {devs, "/hostdev"}, {sockDir, "/dev/gpupass"}},
				ExtraConfig: []string{
					"lxc.cgroup2.devices.allow = c 195:* rwm",
					"lxc.cgroup2.devices.allow = c 10:229 rwm",
				},
			})
			start := time.Now()
			c.Start(t)
			if d := time.Since(start); d > time.Second {
				t.Errorf("start took %v, want < 1s", d)
			}
			if pid := c.InitPID(t); pid <= 1 {
				t.Errorf("init pid %d", pid)
			}

			out, code := c.Attach(t, ProbePath, "open", "/hostdev/tun", "/hostdev/nodriver", "/hostdev/fuse")
			want := "/hostdev/tun EPERM\n/hostdev/nodriver ENXIO\n/hostdev/fuse ok\n"
			if d := cmp.Diff(out, want); d != "" || code != 1 {
				t.Errorf("open inside: exit %d (want 1), output (-got +want):\n%s", code, d)
			}

			out, code = c.Attach(t, ProbePath, "dial", "/dev/gpupass/agent.sock", "hello")
			if code != 0 || out != "pong:hello" {
				t.Errorf("dial from inside: exit %d, got %q, want %q", code, out, "pong:hello")
			}
			select {
			case cg := <-peers:
				if !strings.Contains(cg, "lxc.payload."+c.Name()) {
					t.Errorf("peer cgroup %q does not name lxc.payload.%s", cg, c.Name())
				}
			case <-time.After(5 * time.Second):
				t.Error("no peer credentials from the socket server")
			}

			c.Stop(t)
			if s := c.State(t); s != "STOPPED" {
				t.Errorf("state after Stop = %q, want STOPPED", s)
			}
		})
	}
}

// serveEcho answers one connection with "pong:" + what it read, and reports the peer's
// /proc/<pid>/cgroup (pid from SO_PEERCRED) read while the peer is still alive.
func serveEcho(ln net.Listener, peers chan<- string) {
	conn, err := ln.Accept()
	if err != nil {
		return
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err == nil {
		_ = raw.Control(func(fd uintptr) {
			if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
				cg, err := os.ReadFile("/proc/" + strconv.Itoa(int(cred.Pid)) + "/cgroup")
				if err != nil {
					cg = []byte(err.Error())
				}
				peers <- string(cg)
			}
		})
	}
	msg, _ := bufio.NewReader(conn).ReadString(0)
	_, _ = conn.Write([]byte("pong:" + msg))
}

// TestStartFailureSaysWhy: when the kernel refuses LXC its namespaces (a chroot), the first
// failing start says so in one sentence with the end of its log, later ones say only the
// sentence; any other failure keeps the error and the log's end.
func TestStartFailureSaysWhy(t *testing.T) {
	namespacesSaid.Store(false)
	t.Cleanup(func() { namespacesSaid.Store(false) })
	refused := []byte("lxc-start lt 20261202 ERROR start - ../src/lxc/start.c:lxc_spawn:1773 - Failed to clone a new set of namespaces\n")
	other := []byte("lxc-start lt ERROR conf - no such file\n")
	errStart := errors.New("lxc-start: exit 1")
	tests := []struct {
		name     string
		log      []byte
		want     []string
		wantNone []string
	}{
		{"first refused", refused, []string{NamespacesRefused, "log (end; all of it in /l/x.log)", "Failed to clone"}, nil},
		{"second refused", refused, []string{"lxctest: start c: " + NamespacesRefused}, []string{"log (end"}},
		{"other failure", other, []string{"lxc-start: exit 1", "no such file"}, []string{NamespacesRefused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := startFailure("c", errStart, tt.log, "/l/x.log")
			for _, s := range tt.want {
				if !strings.Contains(got, s) {
					t.Errorf("%q lacks %q", got, s)
				}
			}
			for _, s := range tt.wantNone {
				if strings.Contains(got, s) {
					t.Errorf("%q has %q", got, s)
				}
			}
		})
	}
}

// TestRenderSystemdConfig: a systemd container boots /sbin/init with the keys systemd
// needs, LXC's common.conf written out (not included: its common.conf.d may hold a
// Proxmox install's hooks), and the test's own device list.
func TestRenderSystemdConfig(t *testing.T) {
	c := &Container{name: "s1", lxcpath: "/p"}
	got, err := renderConfig(c, Spec{Kind: KindSystemd, Init: []string{"/bin/ignored"}})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(got), "\n")
	for _, want := range append([]string{"lxc.net.0.type = empty"}, append(systemdConfig, DefaultDeviceRules...)...) {
		if !slices.Contains(lines, want) {
			t.Errorf("config lacks %q:\n%s", want, got)
		}
	}
	for _, bad := range []string{"lxc.init.cmd", "lxc.include", "SIGKILL"} {
		if strings.Contains(got, bad) {
			t.Errorf("config has %q:\n%s", bad, got)
		}
	}
}
