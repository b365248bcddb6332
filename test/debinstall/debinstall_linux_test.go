package debinstall

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
)

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }

// repoRoot is the module root (go test runs in the package directory).
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// debs returns the packages of the newest make deb, building them when there are none.
func debs(t *testing.T) map[string]string {
	t.Helper()
	root := repoRoot(t)
	find := func() map[string]string {
		out := map[string]string{}
		for _, name := range []string{"gpupass", "gpupass-host-agent", "gpupass-guest-agent"} {
			m, _ := filepath.Glob(filepath.Join(root, "build", "deb", name+"_*.deb"))
			sort.Slice(m, func(i, j int) bool { return modTime(m[i]).After(modTime(m[j])) })
			if len(m) > 0 {
				out[name] = m[0]
			}
		}
		return out
	}
	got := find()
	if len(got) < 3 {
		if os.Geteuid() != 0 {
			testenv.Skip(t, "no packages in build/deb: run make deb (as root for this test)")
		}
		cmd := exec.Command("make", "--no-print-directory", "deb")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make deb: %v\n%s", err, out)
		}
		got = find()
	}
	return got
}

func modTime(p string) time.Time {
	fi, err := os.Stat(p)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// sh runs a shell command inside the container and fails the test on a non-zero exit.
func sh(t *testing.T, c *lxctest.Container, script string) string {
	t.Helper()
	out, errOut, code := c.AttachFull(t, "/bin/sh", "-c", script)
	if code != 0 {
		t.Fatalf("in the container: %s: exit %d\nstdout:\n%s\nstderr:\n%s", script, code, out, errOut)
	}
	return out
}

// shCode runs a shell command inside the container and returns its output and exit code.
func shCode(t *testing.T, c *lxctest.Container, script string) (string, int) {
	t.Helper()
	out, errOut, code := c.AttachFull(t, "/bin/sh", "-c", script)
	return out + errOut, code
}

func show(t *testing.T, c *lxctest.Container, prop string) string {
	t.Helper()
	return strings.TrimSpace(sh(t, c, "systemctl show -P "+prop+" gpupass-host-agent.service"))
}

// simConfig is host-agent.yaml as an admin edits it for this (simulated GPU, plain LXC)
// host: the packaged defaults plus the runtime and the simulated host tree.
const simConfig = `version: 1
listen: "127.0.0.1:7420"
runtime: lxc
tls: {ca: /etc/gpupass/ca.crt, cert: /etc/gpupass/host.crt, key: /etc/gpupass/host.key}
host_root: /var/lib/gpupass-sim
simulated: true
metrics_listen: "127.0.0.1:9420"
`

const fleet = `version: 1
tls: {ca: /root/pki/ca.crt, cert: /root/pki/controller.crt, key: /root/pki/controller.key}
hosts:
  - {name: sim1, address: "127.0.0.1:7420"}
containers: []
`

// TestPackagesUnderSystemd: in a Debian 12 container with systemd as PID 1, apt installs
// the three packages (offline: apt-get install ./file.deb, with every
// dependency already there); the host agent is enabled but not started while it has no
// certificates; with them it starts as Type=notify (systemctl start returns after READY),
// its watchdog is armed, it answers the packaged controller over mutual TLS, survives
// systemctl restart; the guest agent's package starts its unit; apt remove stops the host
// agent and keeps /etc/gpupass; apt purge removes it.
func TestPackagesUnderSystemd(t *testing.T) {
	pkgs := debs(t)
	dir := filepath.Dir(pkgs["gpupass-host-agent"])
	c := lxctest.NewContainer(t, lxctest.Spec{Kind: lxctest.KindSystemd, Binds: [][2]string{{dir, "/mnt/debs"}}})
	// The simulated GPU host tree, made from the host (mknod is denied inside).
	if err := gpu.WriteSimulatedHost(filepath.Join(c.Rootfs(), "var/lib/gpupass-sim"), gpu.SimOptions{GPUs: 2}); err != nil {
		t.Fatal(err)
	}
	c.Start(t)
	t.Logf("systemd: %s", c.WaitBooted(t, 90*time.Second))

	// The unit Requires= pve-cluster.service (pmxcfs, /etc/pve); this Debian container
	// stands in for a Proxmox host, so it gets a stand-in unit of that name.
	if err := os.WriteFile(filepath.Join(c.Rootfs(), "etc/systemd/system/pve-cluster.service"),
		[]byte("[Unit]\nDescription=stand-in for Proxmox's pmxcfs (test)\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, c, "systemctl daemon-reload")
	base := func(p string) string { return "/root/" + filepath.Base(p) }
	sh(t, c, "cp /mnt/debs/*.deb /root/")
	start := time.Now()
	// No network in the container: apt installs the local files, every dependency (libc6,
	// init-system-helpers) being there already; nothing is downloaded.
	out := sh(t, c, "DEBIAN_FRONTEND=noninteractive apt-get install -y "+base(pkgs["gpupass-host-agent"])+" "+base(pkgs["gpupass"])+" 2>&1")
	t.Logf("apt install (offline, local files): %v\n%s", time.Since(start).Round(time.Millisecond), out)
	if !strings.Contains(out, "enabled, not started") {
		t.Errorf("postinst did not say the agent waits for its certificates:\n%s", out)
	}
	if got := strings.TrimSpace(sh(t, c, "systemctl is-enabled gpupass-host-agent")); got != "enabled" {
		t.Errorf("is-enabled = %q, want enabled", got)
	}
	if got := show(t, c, "ActiveState"); got != "inactive" {
		t.Errorf("without certificates ActiveState = %q, want inactive", got)
	}
	if _, err := os.Stat(filepath.Join(c.Rootfs(), "usr/share/man/man1/gpupass-apply.1.gz")); err != nil {
		t.Errorf("man page: %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.Rootfs(), "usr/share/bash-completion/completions/gpupass")); err != nil {
		t.Errorf("bash completion: %v", err)
	}
	if out := sh(t, c, "cat /var/lib/dpkg/info/gpupass-host-agent.conffiles"); strings.TrimSpace(out) != "/etc/gpupass/host-agent.yaml" {
		t.Errorf("conffiles = %q, want /etc/gpupass/host-agent.yaml", out)
	}
	// A start without certificates is skipped by the unit's ExecCondition, not failed.
	sh(t, c, "systemctl start gpupass-host-agent")
	if got := show(t, c, "ActiveState") + "/" + show(t, c, "Result"); got != "inactive/exec-condition" {
		t.Errorf("start without certificates: ActiveState/Result = %q, want inactive/exec-condition", got)
	}

	// The admin's steps: certificates from the packaged CLI, the config edited.
	sh(t, c, `set -e
gpupass pki init --dir /root/pki >/dev/null
gpupass pki issue --dir /root/pki --name host --ip 127.0.0.1 >/dev/null
gpupass pki issue --dir /root/pki --name controller >/dev/null
cp /root/pki/ca.crt /root/pki/host.crt /root/pki/host.key /etc/gpupass/`)
	if err := os.WriteFile(filepath.Join(c.Rootfs(), "etc/gpupass/host-agent.yaml"), []byte(simConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.Rootfs(), "root/fleet.yaml"), []byte(fleet), 0o644); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	sh(t, c, "systemctl start gpupass-host-agent") // Type=notify: returns once READY=1 came
	t.Logf("systemctl start (to READY): %v", time.Since(start).Round(time.Millisecond))
	if got := show(t, c, "Type") + " " + show(t, c, "ActiveState") + "/" + show(t, c, "SubState"); got != "notify active/running" {
		t.Fatalf("after start: %q, want notify active/running\n%s", got, sh(t, c, "journalctl -u gpupass-host-agent --no-pager | tail -20"))
	}
	if got := show(t, c, "WatchdogUSec"); got != "30s" {
		t.Errorf("WatchdogUSec = %q, want 30s (armed)", got)
	}
	status := func() string {
		out, code := shCode(t, c, "cd /root && gpupass status -o json")
		if code != 0 || !strings.Contains(out, `"reachable": true`) {
			t.Fatalf("gpupass status: exit %d, want 0 and the host reachable:\n%s", code, out)
		}
		return out
	}
	t.Logf("controller: %s", status())
	// The packaged agent's /metrics (bash's /dev/tcp: the minimal rootfs has no curl): the
	// simulated host's two GPUs and driver, and no NVML (absent per-container series).
	metrics := sh(t, c, `bash -c 'exec 3<>/dev/tcp/127.0.0.1/9420 && printf "GET /metrics HTTP/1.0\r\n\r\n" >&3 && cat <&3'`)
	for _, want := range []string{"gpupass_host_gpus 2", `gpupass_nvml_available{host=`, "gpupass_host_driver_info{driver_version="} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, metrics)
		}
	}
	if strings.Contains(metrics, "gpupass_container_gpu_memory_used_bytes{") {
		t.Errorf("/metrics has per-container GPU memory without NVML (want it absent):\n%s", metrics)
	}

	pid := show(t, c, "MainPID")
	start = time.Now()
	sh(t, c, "systemctl restart gpupass-host-agent")
	t.Logf("systemctl restart (to READY): %v", time.Since(start).Round(time.Millisecond))
	if got := show(t, c, "ActiveState"); got != "active" || show(t, c, "MainPID") == pid {
		t.Fatalf("after restart: ActiveState %q, MainPID %s (was %s): want active with a new process", got, show(t, c, "MainPID"), pid)
	}
	status()

	// The guest agent's package, as a template gets it: enabled and running (READY once
	// its watches are up; it waits for the host's socket by itself).
	sh(t, c, "DEBIAN_FRONTEND=noninteractive apt-get install -y "+base(pkgs["gpupass-guest-agent"])+" 2>&1")
	for prop, want := range map[string]string{"UnitFileState": "enabled", "ActiveState": "active", "Type": "notify"} {
		if got := strings.TrimSpace(sh(t, c, "systemctl show -P "+prop+" gpupass-guest-agent.service")); got != want {
			t.Errorf("guest agent %s = %q, want %q", prop, got, want)
		}
	}
	sh(t, c, "DEBIAN_FRONTEND=noninteractive apt-get purge -y gpupass-guest-agent 2>&1")
	if got := strings.TrimSpace(sh(t, c, "systemctl show -P ActiveState gpupass-guest-agent.service")); got != "inactive" {
		t.Errorf("guest agent after purge: ActiveState %q, want inactive", got)
	}

	sh(t, c, "DEBIAN_FRONTEND=noninteractive apt-get remove -y gpupass-host-agent 2>&1")
	if got := show(t, c, "ActiveState"); got != "inactive" {
		t.Errorf("after apt remove: ActiveState = %q, want inactive", got)
	}
	if _, code := shCode(t, c, "pgrep -x gpupass-host-age"); code == 0 {
		t.Errorf("after apt remove the agent still runs")
	}
	for _, f := range []string{"etc/gpupass/host-agent.yaml", "etc/gpupass/host.key", "etc/gpupass/ca.crt"} {
		if _, err := os.Stat(filepath.Join(c.Rootfs(), f)); err != nil {
			t.Errorf("apt remove did not keep /%s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(c.Rootfs(), "usr/bin/gpupass-host-agent")); err == nil {
		t.Errorf("apt remove left /usr/bin/gpupass-host-agent")
	}

	sh(t, c, "DEBIAN_FRONTEND=noninteractive apt-get purge -y gpupass-host-agent 2>&1")
	if _, err := os.Stat(filepath.Join(c.Rootfs(), "etc/gpupass")); err == nil {
		t.Errorf("apt purge left /etc/gpupass")
	}
	if out, _ := shCode(t, c, "dpkg-query -W -f='${db:Status-Status}' gpupass-host-agent"); strings.Contains(out, "installed") && !strings.Contains(out, "not-installed") {
		t.Errorf("after purge dpkg says %q", out)
	}
}
