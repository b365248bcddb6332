package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/guest"
	"gpupass/internal/guest/guesttest"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

func runMain(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, &o, &e)
	return o.String(), e.String(), code
}

func TestRunFlags(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{name: "unknown flag", args: []string{"--nope"}, code: exitError, stderr: "flag provided but not defined: -nope"},
		{name: "bad output", args: []string{"--once", "-o", "yaml"}, code: exitError, stderr: `-o "yaml": want json or table`},
		{name: "expect file needs once", args: []string{"--expect-file", "x.json"}, code: exitError, stderr: "--expect-file needs --once"},
		{name: "stray argument", args: []string{"--once", "extra"}, code: exitError, stderr: `unexpected argument "extra"`},
		{name: "bad heartbeat", args: []string{"--heartbeat", "0s"}, code: exitError, stderr: "--heartbeat 0s: want a positive duration"},
		{name: "help", args: []string{"-h"}, code: exitReady, stderr: "-socket string"},
		{name: "wait help", args: []string{"wait", "-h"}, code: exitReady, stderr: "-require-network"},
		{name: "wait negative timeout", args: []string{"wait", "--timeout", "-1s"}, code: exitError, stderr: "--timeout -1s: want 0 (forever) or a positive duration"},
		{name: "wait with once", args: []string{"wait", "--once"}, code: exitError, stderr: "wait takes neither --once nor --expect-file"},
		{name: "wait stray argument", args: []string{"wait", "now"}, code: exitError, stderr: `unexpected argument "now"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := runMain(t, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.stderr)
			}
		})
	}
	if out, _, code := runMain(t, "--version"); code != exitReady || strings.TrimSpace(out) == "" {
		t.Errorf("--version: exit %d, %q", code, out)
	}
}

// fixtureRoot is a container tree with /dev/nvidia0 (numbers of /dev/null, so it opens)
// and the driver's version file.
func fixtureRoot(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	root := t.TempDir()
	for _, d := range []string{"dev", "proc/driver/nvidia"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "proc/driver/nvidia/version"), []byte(procDriver), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(filepath.Join(root, "dev/nvidia0"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	return root
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "exp.json")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRunOnceExpectFile(t *testing.T) {
	root := fixtureRoot(t)
	tests := []struct {
		name   string
		exp    string
		format string
		code   int
		check  func(t *testing.T, out string)
	}{
		{name: "ready json", format: "json", code: exitReady,
			exp: `{"devices": [{"path": "/dev/nvidia0", "major": 1, "minor": 3}], "driver_loaded": true, "kernel_driver_version": "580.159.04"}`,
			check: func(t *testing.T, out string) {
				var r guest.JSONReport
				if err := json.Unmarshal([]byte(out), &r); err != nil {
					t.Fatalf("%v\n%s", err, out)
				}
				if !r.Ready || r.Trigger != "once" || r.ContainerID != "ct-7" || len(r.Devices) != 1 || r.Devices[0].Status != "ok" || r.Driver.Kernel != simVersion {
					t.Errorf("report = %+v", r)
				}
			}},
		{name: "not ready table, lowerCamelCase names", format: "table", code: exitNotReady,
			exp: `{"devices": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}], "driverLoaded": true}`,
			check: func(t *testing.T, out string) {
				if !strings.HasPrefix(out, "STATE      NOT-READY\n") || !strings.Contains(out, "REASON      /dev/nvidia0: wrong-device: char device 1:3, want 195:0") {
					t.Errorf("table:\n%s", out)
				}
			}},
		{name: "driver not loaded", format: "json", code: exitNotReady,
			exp: `{"devices": [{"path": "/dev/nvidia0", "major": 1, "minor": 3}]}`,
			check: func(t *testing.T, out string) {
				if !strings.Contains(out, `"host kernel driver not loaded"`) {
					t.Errorf("json:\n%s", out)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, code := runMain(t, "--once", "-o", tc.format, "--root", root, "--id", "ct-7", "--expect-file", writeFile(t, tc.exp))
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %s\n%s", code, tc.code, stderr, out)
			}
			tc.check(t, out)
		})
	}
	t.Run("bad expectation file", func(t *testing.T) {
		f := writeFile(t, `{"devices": [], "colour": "red"}`)
		_, stderr, code := runMain(t, "--once", "--root", root, "--expect-file", f)
		if code != exitError || !strings.Contains(stderr, "parse expectation "+f) || !strings.Contains(stderr, "colour") {
			t.Errorf("exit %d, stderr %q; want exit 1 naming the file and the field", code, stderr)
		}
	})
}

// TestRunOnceFromHost: without --expect-file, --once asks the host agent and sends it the
// report.
func TestRunOnceFromHost(t *testing.T) {
	root := fixtureRoot(t)
	socket := filepath.Join(t.TempDir(), "agent.sock")
	host := guesttest.NewHost(t, socket, &pb.Expectation{DriverLoaded: true, KernelDriverVersion: simVersion,
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}})
	out, stderr, code := runMain(t, "--once", "-o", "json", "--root", root, "--socket", socket)
	if code != exitReady {
		t.Fatalf("exit %d; stderr %s\n%s", code, stderr, out)
	}
	r, err := host.Wait(5*time.Second, nil)
	if err != nil {
		t.Fatalf("the host got no report: %v", err)
	}
	if !r.Ready || r.Trigger != guest.TriggerOnce {
		t.Errorf("host got ready %v trigger %q", r.Ready, r.Trigger)
	}
}

// wait with no agent and no host agent: exit 2 at the deadline, the reason on stdout in
// the table of --once, the progress on stderr.
func TestRunWaitNotReady(t *testing.T) {
	dir := t.TempDir()
	stdout, stderr, code := runMain(t, "wait", "--timeout", "400ms", "--state-dir", filepath.Join(dir, "state"), "--socket", filepath.Join(dir, "none.sock"))
	if code != exitNotReady {
		t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, exitNotReady, stdout, stderr)
	}
	for _, want := range []string{"NOT-READY", "no report: the host agent is not reachable (disconnected: dial host agent"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	for _, want := range []string{"wait: no guest agent runs here", "wait: not ready after"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}
