package main

import (
	"bufio"
	"debug/elf"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/guest/guesttest"
	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

// Limits from the issue: the binary is baked into every GPU container template and runs
// in every GPU container.
const (
	maxBinarySize = 8 << 20
	maxRSS        = 10 << 20
)

// buildAgent builds the guest agent as the Makefile does (static, stripped) into a
// directory unprivileged containers can reach.
func buildAgent(t *testing.T) string {
	t.Helper()
	out := filepath.Join(lxctest.TempDir(t), "gpupass-guest-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X gpupass/internal/buildinfo.Version=test", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

func TestBinary(t *testing.T) {
	bin := buildAgent(t)
	t.Run("size", func(t *testing.T) {
		fi, err := os.Stat(bin)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("gpupass-guest-agent: %d bytes (%.2f MiB), limit %d MiB", fi.Size(), float64(fi.Size())/(1<<20), maxBinarySize>>20)
		if fi.Size() > maxBinarySize {
			t.Errorf("binary is %d bytes, more than %d", fi.Size(), maxBinarySize)
		}
	})
	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("binary has a %v program header: not static", p.Type)
			}
		}
		if f.Section(".symtab") != nil {
			t.Error("binary has a symbol table: not stripped")
		}
	})
	t.Run("rss and systemd notify", func(t *testing.T) { testRSS(t, bin) })
	t.Run("systemd unit", func(t *testing.T) { testUnit(t, bin) })
}

// testUnit lints packaging/gpupass-guest-agent.service with systemd-analyze verify, which
// only warns (exit 0) on unknown keys: any output fails.
func testUnit(t *testing.T, bin string) {
	testenv.RequireCommands(t, "systemd-analyze")
	b, err := os.ReadFile("../packaging/gpupass-guest-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\nType=notify\n") || !strings.Contains(string(b), "\nExecStart=/usr/local/bin/gpupass-guest-agent\n") {
		t.Fatalf("unit lacks Type=notify or the plain ExecStart=/usr/local/bin/gpupass-guest-agent (its default sockets: /dev/gpupass, then /run/gpupass)")
	}
	// The verifier wants ExecStart to exist: point it at the binary just built.
	unit := filepath.Join(t.TempDir(), "gpupass-guest-agent.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/gpupass-guest-agent", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", unit)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=warning")
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// testRSS runs the agent against an in-test host agent with a fast heartbeat and reads its
// resident set size once it has settled; it also checks READY=1 and STATUS= on
// NOTIFY_SOCKET and a clean exit on SIGTERM.
func testRSS(t *testing.T, bin string) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "agent.sock")
	exp := &pb.Expectation{DriverLoaded: true, HeartbeatIntervalMs: 20,
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 195, Minor: 0}, {Path: "/dev/nvidiactl", Major: 195, Minor: 255}}}
	host := guesttest.NewHost(t, socket, exp)
	notifyPath := filepath.Join(t.TempDir(), "notify.sock")
	notifyConn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notifyConn.Close()

	cmd := exec.Command(bin, "--socket", socket, "--root", root, "--id", "rss-test")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := make(chan string, 1)
	go func() {
		var b strings.Builder
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			b.WriteString(sc.Text() + "\n")
		}
		logs <- b.String()
	}()
	exited := false
	defer func() {
		if !exited {
			cmd.Process.Kill()
			cmd.Wait()
		}
		t.Logf("agent log:\n%s", <-logs)
	}()

	states := readNotify(t, notifyConn, 2, 5*time.Second)
	go func() { // keep draining, as systemd does
		buf := make([]byte, 4096)
		for {
			if _, err := notifyConn.Read(buf); err != nil {
				return
			}
		}
	}()
	notifyConn.SetReadDeadline(time.Time{})
	if states[0] != "READY=1\nSTATUS=connecting to the host agent" {
		t.Errorf("first sd_notify = %q, want READY=1 and a status", states[0])
	}
	if !strings.HasPrefix(states[1], "STATUS=connected; not ready: /dev/nvidia0: missing") {
		t.Errorf("second sd_notify = %q, want the not-ready status", states[1])
	}
	// Let it settle through many heartbeats (each one a full check and a frame).
	deadline := time.Now().Add(1500 * time.Millisecond)
	n := 0
	for time.Now().Before(deadline) {
		if _, err := host.Wait(time.Second, nil); err == nil {
			n++
		}
	}
	m := procMem(t, cmd.Process.Pid)
	rss := m["VmRSS"]
	t.Logf("after %d reports: VmRSS %d KiB (RssAnon %d KiB, RssFile %d KiB), VmHWM %d KiB; limit %d KiB",
		n, rss>>10, m["RssAnon"]>>10, m["RssFile"]>>10, m["VmHWM"]>>10, maxRSS>>10)
	if n < 5 { // about 70 on an idle machine; CI may be busy
		t.Errorf("%d reports in 1.5 s with a 20 ms heartbeat", n)
	}
	if rss > maxRSS {
		t.Errorf("steady RSS %d bytes, more than %d", rss, maxRSS)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		exited = true
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit within 5 s of SIGTERM")
	}
}

func readNotify(t *testing.T, c *net.UnixConn, n int, timeout time.Duration) []string {
	t.Helper()
	var out []string
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(timeout))
	for len(out) < n {
		k, err := c.Read(buf)
		if err != nil {
			t.Fatalf("read sd_notify message %d: %v (got %q)", len(out)+1, err, out)
		}
		out = append(out, string(buf[:k]))
	}
	return out
}

// procMem reads the memory lines (VmRSS, VmHWM, RssAnon, RssFile, ...) of pid, in bytes.
func procMem(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		m[k] = n << 10
	}
	return m
}
