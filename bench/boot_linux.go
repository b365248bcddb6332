package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/controller"
	"gpupass/internal/log"
	"gpupass/internal/pki"
)

// bootCT is the boot benchmark's systemd container.
const bootCT = "gpb-boot"

// The three ways an app unit can wait for the GPU, in one container, each recording when
// its main process started (ExecMainStartTimestampMonotonic).
var bootApps = map[string]string{
	// gpupass: the shipped gate.
	"app-gated.service": `[Unit]
Description=app gated on gpu-ready.target (gpupass bench)
After=gpu-ready.target
Requires=gpu-ready.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'exec 3<>/dev/nvidia0'
[Install]
WantedBy=multi-user.target
`,
	// What people write today.
	"app-sleep10.service": `[Unit]
Description=app after sleep 10 (gpupass bench)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/bin/sleep 10
ExecStart=/bin/sh -c 'exec 3<>/dev/nvidia0'
[Install]
WantedBy=multi-user.target
`,
	"app-poll2s.service": `[Unit]
Description=app after a 2 s test -e /dev/nvidia0 loop (gpupass bench)
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStartPre=/bin/sh -c 'until test -e /dev/nvidia0; do sleep 2; done'
ExecStart=/bin/sh -c 'exec 3<>/dev/nvidia0'
[Install]
WantedBy=multi-user.target
`,
}

// bootSystemdConfig is the systemd container's LXC config, as internal/lxctest's
// systemdConfig (FACTS.md, "Added in turn 2").
var bootSystemdConfig = []string{
	"lxc.net.0.type = empty",
	"lxc.cap.drop = mac_admin mac_override sys_time sys_module sys_rawio",
	"lxc.mount.auto = cgroup:rw:force proc:mixed sys:mixed",
	"lxc.autodev = 1",
	"lxc.environment = container=lxc",
	"lxc.signal.halt = SIGRTMIN+3",
	"lxc.tty.max = 0",
	"lxc.pty.max = 16",
	"lxc.apparmor.profile = unconfined",
	"lxc.cgroup2.devices.deny = a",
	"lxc.cgroup2.devices.allow = c 1:3 rwm",
	"lxc.cgroup2.devices.allow = c 1:5 rwm",
	"lxc.cgroup2.devices.allow = c 1:7 rwm",
	"lxc.cgroup2.devices.allow = c 1:8 rwm",
	"lxc.cgroup2.devices.allow = c 1:9 rwm",
	"lxc.cgroup2.devices.allow = c 5:* rwm",
	"lxc.cgroup2.devices.allow = c 136:* rwm",
}

// systemdRootfs finds the Debian 12 systemd rootfs tarball that test/rootfs/debian.sh
// caches, building it when missing (1-2.5 minutes from the Debian mirror).
func systemdRootfs(ctx context.Context) (string, error) {
	dir := os.Getenv("GPUPASS_ROOTFS_CACHE")
	if dir == "" {
		dir = "/var/cache/gpupass/rootfs"
	}
	p := filepath.Join(dir, "bookworm-systemd.tar.zst")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if out, err := run(ctx, "bash", "test/rootfs/debian.sh", "systemd"); err != nil {
		return "", fmt.Errorf("no %s and building it failed: %w\n%s", p, err, out)
	}
	return p, nil
}

// bootRun is one boot of the container: when systemd (PID 1) started and when each app's
// main process started, in µs of CLOCK_MONOTONIC (0: not started).
type bootRun struct {
	init int64
	apps map[string]int64
}

func (b bootRun) after(app string) time.Duration {
	return time.Duration(b.apps[app]-b.init) * time.Microsecond
}

func bootSection(ctx context.Context, e *Env, r *Results) error {
	s := &Section{Title: "6. Boot to app: gated on gpu-ready.target against `sleep 10` and a 2 s `test -e` loop"}
	r.Sections = append(r.Sections, s)
	tarball, err := systemdRootfs(ctx)
	if err != nil {
		return err
	}
	dir := filepath.Join(e.Work, "boot")
	lxcpath := filepath.Join(dir, "lxc")
	root := filepath.Join(lxcpath, bootCT, "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	if out, err := run(ctx, "tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-xpf", tarball, "-C", root); err != nil {
		return fmt.Errorf("unpack %s: %w: %s", tarball, err, out)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	e.Defer(func() { killContainer(lxcpath, bootCT) })
	units := filepath.Join(root, "etc/systemd/system")
	wants := filepath.Join(units, "multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	install := func(name, content string, enable bool) error {
		if err := os.WriteFile(filepath.Join(units, name), []byte(content), 0o644); err != nil {
			return err
		}
		if enable {
			return os.Symlink("../"+name, filepath.Join(wants, name))
		}
		return nil
	}
	for _, u := range []string{"gpupass-guest-agent.service", "gpupass-gpu-ready.service", "gpu-ready.target"} {
		b, err := os.ReadFile(filepath.Join("packaging", u))
		if err != nil {
			return fmt.Errorf("the shipped units (run from the repository root): %w", err)
		}
		if err := install(u, string(b), u == "gpupass-guest-agent.service"); err != nil {
			return err
		}
	}
	for name, content := range bootApps {
		if err := install(name, content, true); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(e.Bin, "gpupass-guest-agent"), filepath.Join(root, "usr/local/bin/gpupass-guest-agent"), 0o755); err != nil {
		return err
	}
	cfg := append([]string{"# gpupass benchmark container (Debian 12, systemd as PID 1)", "lxc.uts.name = " + bootCT, "lxc.rootfs.path = dir:" + root}, bootSystemdConfig...)
	if _, err := os.Stat("/usr/share/lxc/config/common.seccomp"); err == nil {
		cfg = append(cfg, "lxc.seccomp.profile = /usr/share/lxc/config/common.seccomp")
	}
	cfgPath := filepath.Join(lxcpath, bootCT, "config")
	if err := os.WriteFile(cfgPath, []byte(strings.Join(cfg, "\n")+"\n"), 0o644); err != nil {
		return err
	}

	agent, err := e.StartHostAgent(ctx, AgentConfig{Dir: dir})
	if err != nil {
		return err
	}
	defer e.Stop(agent.Cmd)
	tlsCfg, err := pki.ClientTLS(e.pkiFile("ca.crt"), e.pkiFile("controller.crt"), e.pkiFile("controller.key"), "")
	if err != nil {
		return err
	}
	f, err := e.WriteFleet(filepath.Join(dir, "fleet.yaml"), [][2]string{{"bench", agent.Addr}}, []FleetEntry{{ID: bootCT, GPUs: []string{"0"}}})
	if err != nil {
		return err
	}
	// Written while stopped: the managed entries and the guest socket; nothing starts.
	rep := controller.New(controller.Options{Fleet: f, TLS: tlsCfg, Timeout: 30 * time.Second, Log: log.Discard()}).Apply(ctx, controller.ApplyOptions{Timeout: 60 * time.Second})
	if len(rep.Containers) != 1 || rep.Containers[0].State != controller.StateStopped {
		return fmt.Errorf("apply to the stopped container: %+v\nhost agent log:\n%s", rep.Containers, agent.LogTail())
	}
	lxc := func(args ...string) (string, error) {
		return run(ctx, append([]string{args[0], "-P", lxcpath, "-n", bootCT}, args[1:]...)...)
	}
	boot := func(wantApps int, observe time.Duration) (bootRun, error) {
		_, _ = lxc("lxc-stop", "-k")
		if _, err := lxc("lxc-start"); err != nil {
			return bootRun{}, err
		}
		deadline := time.Now().Add(observe)
		for {
			b, err := bootState(ctx, lxcpath)
			started := 0
			for _, v := range b.apps {
				if v != 0 {
					started++
				}
			}
			if err == nil && (started >= wantApps || time.Now().After(deadline)) {
				return b, nil
			}
			if time.Now().After(deadline.Add(10 * time.Second)) {
				return b, fmt.Errorf("no boot state within %v: %v", observe, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	const runs = 3
	var gated, sleep10, poll, above Sample
	for i := range runs {
		b, err := boot(len(bootApps), 25*time.Second)
		if err != nil {
			return err
		}
		if b.apps["app-gated.service"] == 0 {
			j, _ := lxc("lxc-attach", "--", "journalctl", "-b", "--no-pager", "-o", "cat", "-u", "gpupass-gpu-ready.service", "-u", "gpupass-guest-agent.service")
			return fmt.Errorf("run %d: the gated app did not start on a ready container:\n%s", i+1, j)
		}
		gated = append(gated, b.after("app-gated.service"))
		sleep10 = append(sleep10, b.after("app-sleep10.service"))
		poll = append(poll, b.after("app-poll2s.service"))
		above = append(above, b.after("app-gated.service")-b.after("app-poll2s.service"))
		e.Logf("boot %d: init → app: gated %.0f ms, sleep 10 %.0f ms, 2 s test -e loop %.0f ms", i+1, ms(gated[i]), ms(sleep10[i]), ms(poll[i]))
	}
	// Then the failure the loop cannot see: /dev/nvidia0 present but denied.
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return err
	}
	allow := deniedRule(string(b), filepath.Join(e.HostRoot(), "dev/nvidia0"))
	if allow == "" {
		return fmt.Errorf("no allow rule for /dev/nvidia0 in %s", cfgPath)
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(b), allow+"\n", "", 1)), 0o644); err != nil {
		return err
	}
	denied, err := boot(len(bootApps), 14*time.Second)
	_ = os.WriteFile(cfgPath, b, 0o644)
	if err != nil {
		return err
	}
	startedWord := func(app string) float64 {
		if denied.apps[app] == 0 {
			return 0
		}
		return 1
	}
	e.Logf("boot with /dev/nvidia0 denied, watched 14 s: gated started %v, sleep 10 started %v, test -e loop started %v",
		startedWord("app-gated.service") == 1, startedWord("app-sleep10.service") == 1, startedWord("app-poll2s.service") == 1)

	n := fmt.Sprintf("median of %d boots", runs)
	s.Add("boot_app_gated_median_ms", gated.Median(), "ms", "systemd (PID 1) started → the app unit ordered After=/Requires=gpu-ready.target starts its main process; "+n)
	s.Add("boot_app_gated_max_ms", gated.Max(), "ms", "the same, slowest boot")
	s.Add("boot_app_sleep10_median_ms", sleep10.Median(), "ms", "the same for an app with ExecStartPre=/bin/sleep 10; "+n)
	s.Add("boot_gated_above_poll2s_median_ms", above.Median(), "ms", "per boot, the gated app's start minus the test -e loop app's start: what the gate's real check costs; "+n)
	s.Add("boot_app_poll2s_median_ms", poll.Median(), "ms", "the same for an app with ExecStartPre= a `until test -e /dev/nvidia0; do sleep 2; done` loop; "+n)
	s.Add("boot_denied_gated_started", startedWord("app-gated.service"), "bool", "/dev/nvidia0 present but denied: the gated app started within 14 s (1) or not (0)")
	s.Add("boot_denied_sleep10_started", startedWord("app-sleep10.service"), "bool", "the same for the sleep 10 app")
	s.Add("boot_denied_poll2s_started", startedWord("app-poll2s.service"), "bool", "the same for the test -e loop app")
	s.Method = fmt.Sprintf(`
One LXC container booting Debian 12 with systemd as PID 1 (the rootfs test/rootfs/debian.sh
caches), privileged, pure cgroup2, its own device list, with the shipped
gpupass-guest-agent.service enabled and gpupass-gpu-ready.service and gpu-ready.target
installed. A real gpupass-host-agent (runtime lxc, SIMULATED GPU host) wrote its GPU 0 entries
through apply while it was stopped. Three app units are enabled in the same container, each
opening /dev/nvidia0 as its main process: one ordered After= and Requires=gpu-ready.target,
one behind ExecStartPre=/bin/sleep 10, one behind ExecStartPre= a 2 s `+"`test -e /dev/nvidia0`"+`
loop. Each of %d boots (lxc-stop -k, lxc-start) measures, with systemd's own monotonic
timestamps, from systemd starting (UserspaceTimestampMonotonic) to each app's main process
starting (ExecMainStartTimestampMonotonic). A last boot with the allow rule of /dev/nvidia0
removed (the node bound in, open() denied by the device cgroup) watches for 14 s which apps
start anyway.
`, runs)
	s.Limits = []string{
		"The `test -e` loop is fastest because it checks the wrong thing: the bind-mounted node exists from the container's first instant, so the loop never sleeps, and it starts the app just as fast when the node is denied (`boot_denied_poll2s_started`). The gate waits for the guest agent's verdict (every node a char device with the right numbers that opens, the driver versions), which costs the agent's start, its connection to the host agent and one check.",
		"`sleep 10` is slow when the GPU is ready and still wrong when it is not: it starts the app on a denied node after ten seconds.",
		"A simulated GPU host: opening the stand-in nodes costs nothing, where a real GPU without persistence mode costs 1-3 s at the first open (doctor warns).",
	}
	return nil
}

// deniedRule is the allow rule of the node bound from hostNode, found through its mount
// entry: the rule that names the same major:minor.
func deniedRule(cfg, hostNode string) string {
	var st unix.Stat_t
	if err := unix.Stat(hostNode, &st); err != nil {
		return ""
	}
	want := fmt.Sprintf("lxc.cgroup2.devices.allow = c %d:%d rwm", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	for _, l := range strings.Split(cfg, "\n") {
		if strings.TrimSpace(l) == want {
			return l
		}
	}
	return ""
}

// bootState reads, inside the container, when systemd started and when each app's main
// process started.
func bootState(ctx context.Context, lxcpath string) (bootRun, error) {
	b := bootRun{apps: map[string]int64{}}
	args := []string{"lxc-attach", "-P", lxcpath, "-n", bootCT, "--clear-env", "--", "/bin/systemctl", "show", "-p", "UserspaceTimestampMonotonic"}
	out, err := run(ctx, args...)
	if err != nil {
		return b, err
	}
	v, err := showValue(out, "UserspaceTimestampMonotonic")
	if err != nil || v == 0 {
		return b, errors.New("systemd has not started")
	}
	b.init = v
	for name := range bootApps {
		out, err := run(ctx, "lxc-attach", "-P", lxcpath, "-n", bootCT, "--clear-env", "--", "/bin/systemctl", "show", "-p", "ExecMainStartTimestampMonotonic", name)
		if err != nil {
			return b, err
		}
		if b.apps[name], err = showValue(out, "ExecMainStartTimestampMonotonic"); err != nil {
			return b, err
		}
	}
	return b, nil
}

func showValue(out, key string) (int64, error) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %q", key, out)
}
