package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The readiness gate inside the container (docs/guest-agent.md, "Ready for the app"):
// an app ordered after gpu-ready.target (systemd), or started by
// `gpupass-guest-agent wait && exec app` (busybox init), does not start while a GPU node
// is denied, says why it waits, and starts within a second once apply fixes the config.

// appUnit is a tiny app that needs the GPU: it records when it started and opens
// /dev/nvidia0 read-write as a CUDA program would.
const appUnit = `[Unit]
Description=gpupass e2e app that needs the GPU
After=gpu-ready.target
Requires=gpu-ready.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'exec 3<>/dev/nvidia0 && echo opened >/run/app-started'

[Install]
WantedBy=multi-user.target
`

// appInit is the busybox form: the container's init starts the agent, then waits for
// the gate and only then execs the app (which records its start and idles as PID 1).
const appInit = `#!/bin/sh
# gpupass e2e: the guest agent, then the gate, then the app.
/usr/local/bin/gpupass-guest-agent --log-level debug >>/var/log/gpupass-guest-agent.log 2>&1 &
/usr/local/bin/gpupass-guest-agent wait --timeout 120s 2>>/var/log/gpupass-wait.log >>/var/log/gpupass-wait.log &&
exec /bin/sh -c 'exec 3<>/dev/nvidia0 && echo opened >/run/app-started && exec /bin/sleep 2147483647'
`

// appOpenRC is the OpenRC form: the app's service runs `wait && exec app` as its
// (backgrounded) command, after the agent's service (need), so the runlevel does not
// block on the gate.
const appOpenRC = `#!/sbin/openrc-run
description="gpupass e2e app that needs the GPU"
command=/bin/sh
command_args="-c '/usr/local/bin/gpupass-guest-agent wait --timeout 120s >>/var/log/gpupass-wait.log 2>&1 && exec /usr/local/bin/gpu-app.sh'"
command_background=yes
pidfile=/run/gpu-app.pid

depend() {
	need gpupass-guest-agent
}
`

const appScript = `#!/bin/sh
exec 3<>/dev/nvidia0 && echo opened >/run/app-started && exec /bin/sleep 2147483647
`

// gateCase is one init's form of the gate.
type gateCase struct {
	short   string
	systemd bool
	openrc  bool
}

func testSystemdAppGated(t *testing.T, f *fabric) {
	gateScenario(t, f, gateCase{short: "gatesd", systemd: true})
}
func testBusyboxAppGated(t *testing.T, f *fabric) { gateScenario(t, f, gateCase{short: "gatebb"}) }
func testOpenRCAppGated(t *testing.T, f *fabric) {
	gateScenario(t, f, gateCase{short: "gateorc", openrc: true})
}

func gateScenario(t *testing.T, f *fabric, gc gateCase) {
	h := f.addHost(t, hostOpts{})
	opts := ctOpts{Systemd: gc.systemd, OpenRC: gc.openrc, Files: map[string]string{}}
	switch {
	case gc.openrc:
		opts.Files["/usr/local/bin/gpu-app.sh"] = appScript
	case gc.systemd:
		for _, u := range []string{"gpupass-gpu-ready.service", "gpu-ready.target"} {
			b, err := os.ReadFile(filepath.Join(repoRoot(t), "packaging", u))
			if err != nil {
				t.Fatal(err)
			}
			opts.Files["/etc/systemd/system/"+u] = string(b) // installed, not enabled: the app pulls them
		}
		opts.Files["/etc/systemd/system/gpu-app.service"] = appUnit
	default:
		opts.Files["/etc/gpupass-init.sh"] = appInit
	}
	ct := h.newContainer(t, gc.short, opts)
	if gc.openrc {
		script := filepath.Join(t.TempDir(), "gpu-app")
		if err := os.WriteFile(script, []byte(appOpenRC), 0o755); err != nil {
			t.Fatal(err)
		}
		ct.c.EnableOpenRCService(t, script, "gpu-app")
	}
	if gc.systemd {
		wants := filepath.Join(ct.c.Rootfs(), "etc/systemd/system/multi-user.target.wants")
		if err := os.MkdirAll(wants, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("../gpu-app.service", filepath.Join(wants, "gpu-app.service")); err != nil {
			t.Fatal(err)
		}
	}
	fl := f.writeFleet(t, gc.short, []fleetCt{{Host: h, Ct: ct, GPUs: []string{"0"}}})
	// gpupass writes the config while the container is stopped; then someone drops the
	// allow rule of /dev/nvidia0 and starts the container: the node is there, denied.
	if ap := f.ctl(t, "apply", fl, "--timeout", "30s"); ap.Report.ct(t, ct.name).State != "stopped" {
		t.Fatalf("apply on the stopped container: %+v\n%s", ap.Report.ct(t, ct.name), ap.Stderr)
	}
	rule := ct.rendered(t, 0)[0]
	cfg := ct.readConfig()
	if !strings.Contains(cfg, rule+"\n") {
		t.Fatalf("config has no %q:\n%s", rule, cfg)
	}
	ct.writeConfig(t, strings.Replace(cfg, rule+"\n", "", 1))
	ct.Start(t)

	// It waits, and says why: the journal of gpupass-gpu-ready.service (systemd), the
	// wait's log (busybox).
	const why = "/dev/nvidia0: denied"
	var waitLog string
	boot := 30 * time.Second
	if gc.openrc {
		boot = openRCBoot
	}
	deadline := time.Now().Add(boot)
	for !strings.Contains(waitLog, why) {
		if time.Now().After(deadline) {
			t.Fatalf("the gate never said %q; its log:\n%s\nguest agent:\n%s", why, waitLog, tail(ct.guestLog(t), 2000))
		}
		time.Sleep(200 * time.Millisecond)
		waitLog = ct.gateLog(t)
	}
	time.Sleep(2 * time.Second) // the app has had every chance to start
	if _, err := os.Stat(ct.appStarted(t)); err == nil {
		t.Fatalf("the app started while /dev/nvidia0 is denied")
	}
	if gc.systemd {
		out, _ := ct.Attach(t, "systemctl", "show", "-p", "ActiveState,SubState", "gpu-app.service", "gpupass-gpu-ready.service")
		if !strings.Contains(out, "ActiveState=inactive") || !strings.Contains(out, "ActiveState=activating") {
			t.Errorf("units while denied: %s, want the app inactive and the gate activating", out)
		}
	}
	if out, code := ct.Attach(t, "test", "-e", "/run/gpupass/ready"); code == 0 {
		t.Errorf("/run/gpupass/ready exists while /dev/nvidia0 is denied (%s)", out)
	}
	t.Logf("%s: the gate while denied:\n%s", ct.name, tail(waitLog, 1500))

	// The fix: apply writes the rule and restarts the container; the app starts at once.
	fix := time.Now()
	ap := f.mustApplyReadyWithin(t, fl, boot, ct.name)
	applied := time.Now()
	if c := ap.Report.ct(t, ct.name); !c.Restarted || !c.Written {
		t.Errorf("apply: restarted=%v written=%v, want both", c.Restarted, c.Written)
	}
	var started time.Time
	for deadline := time.Now().Add(20 * time.Second); ; {
		if fi, err := os.Stat(ct.appStarted(t)); err == nil {
			started = fi.ModTime()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app did not start after the fix; gate log:\n%s", ct.gateLog(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	initAt := ct.initStart(t)
	t.Logf("%s: apply took %v; the app started %v after apply returned, %v after the new init ran",
		ct.name, applied.Sub(fix).Round(time.Millisecond), started.Sub(applied).Round(time.Millisecond), started.Sub(initAt).Round(time.Millisecond))
	if d := started.Sub(applied); d > time.Second {
		t.Errorf("the app started %v after apply returned ready, want within a second", d)
	}
	if b, _ := os.ReadFile(ct.appStarted(t)); strings.TrimSpace(string(b)) != "opened" {
		t.Errorf("the app could not open /dev/nvidia0: %q", b)
	}
	if out, code := ct.Attach(t, "test", "-e", "/run/gpupass/ready"); code != 0 {
		t.Errorf("no /run/gpupass/ready once ready (%s)", out)
	}
	if gc.systemd {
		j := ct.gateLog(t)
		if !strings.Contains(j, "gpupass-guest-agent wait: ready after") {
			t.Errorf("the gate's journal of the new boot does not say ready:\n%s", j)
		}
		t.Logf("%s: the gate in the new boot:\n%s", ct.name, j)
	}

	// Later a device disappears: the agent takes the marker away, and wait says why.
	if out, code := ct.Attach(t, "sh", "-c", "umount -l /dev/nvidia0 && rm /dev/nvidia0"); code != 0 {
		t.Fatalf("remove /dev/nvidia0 inside: %s", out)
	}
	gone := time.Now()
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, code := ct.Attach(t, "test", "-e", "/run/gpupass/ready"); code != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/run/gpupass/ready still there 5 s after /dev/nvidia0 went")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%s: /run/gpupass/ready removed %v after /dev/nvidia0 went (lxc-attach polling included)", ct.name, time.Since(gone).Round(time.Millisecond))
	out, code := ct.Attach(t, "/usr/local/bin/gpupass-guest-agent", "wait", "--timeout", "1s")
	if code != 2 || !strings.Contains(out, "/dev/nvidia0: missing") {
		t.Errorf("wait --timeout 1s after the node went: exit %d, want 2 with the reason:\n%s", code, out)
	}
}

// gateLog is what the gate said: the journal of gpupass-gpu-ready.service under systemd
// (this boot), the wait's log file under busybox.
func (ct *container) gateLog(t testing.TB) string {
	if ct.systemd {
		out, _ := ct.Attach(t, "journalctl", "--no-pager", "-b", "-o", "cat", "-u", "gpupass-gpu-ready.service")
		return out
	}
	b, _ := os.ReadFile(filepath.Join(ct.c.Rootfs(), "var/log/gpupass-wait.log"))
	return string(b)
}

// appStarted is the app's start record seen from the host, through the init's root.
func (ct *container) appStarted(t testing.TB) string {
	return fmt.Sprintf("/proc/%d/root/run/app-started", ct.InitPID(t))
}

// initStart is when the container's init process started (its start time in /proc).
func (ct *container) initStart(t testing.TB) time.Time {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", ct.InitPID(t)))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ticks, err := strconv.ParseInt(fields[19], 10, 64) // field 22: starttime
	if err != nil {
		t.Fatal(err)
	}
	up, err := os.ReadFile("/proc/uptime")
	now := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	sec, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		t.Fatal(err)
	}
	// starttime is in clock ticks (USER_HZ, 100 on Linux) since boot, as uptime counts.
	return now.Add(-time.Duration(sec*float64(time.Second)) + time.Duration(ticks)*10*time.Millisecond)
}
