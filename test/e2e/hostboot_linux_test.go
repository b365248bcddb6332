package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gpupass/internal/gpu"
	"gpupass/internal/lxctest"
)

// Boot order on the host, under a real systemd: a systemd container plays the Proxmox
// host. The shipped gpupass-host-agent.service is enabled; its binary and a
// host-agent.yaml for a simulated GPU host (under /srv/gpuhost, /dev/nvidia-uvm and
// -uvm-tools missing, as after a reboot before anything initialises the driver) are
// inside; pve-cluster.service and pve-guests.service are stand-ins that record when they
// ran, and pve-guests whether the nodes existed then. pve-guests (which starts the GPU
// containers on Proxmox) orders itself after nothing of ours: the order comes only from
// the agent's unit (Before=pve-guests.service) and its READY=1, sent after host
// preparation made the nodes. (Without the Before= line every assertion below fails:
// pve-guests then starts beside the agent and finds no uvm nodes.)
func testHostBootOrder(t *testing.T, f *fabric) {
	name := fmt.Sprintf("gpe%s-hostboot", f.id)
	c := lxctest.NewContainer(t, lxctest.Spec{Name: name, Kind: lxctest.KindSystemd, ExtraConfig: []string{
		// the host agent mknods the uvm nodes on the nvidia-uvm major of /proc/devices (the
		// stand-in 10) with minors 0 and 1
		"lxc.cgroup2.devices.allow = c 10:* m",
	}})
	root := c.Rootfs()
	put := func(p, content string, mode os.FileMode) {
		t.Helper()
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	const gpuRoot = "/srv/gpuhost"
	if err := gpu.WriteSimulatedHost(filepath.Join(root, gpuRoot), gpu.SimOptions{SkipNodes: []string{gpu.PathUVM, gpu.PathUVMTools}}); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(f.bin.HostAgent, filepath.Join(root, "usr/local/bin/gpupass-host-agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.gpupass(t, "pki", "issue", "--dir", f.pki, "--name", "hostboot", "--ip", "127.0.0.1")
	for _, x := range [][2]string{{"ca.crt", "ca.crt"}, {"hostboot.crt", "host.crt"}, {"hostboot.key", "host.key"}} {
		if err := copyFile(filepath.Join(f.pki, x[0]), filepath.Join(root, "etc/gpupass", x[1]), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	put("/etc/gpupass/host-agent.yaml", `version: 1
listen: "127.0.0.1:7420"
runtime: lxc
tls: {ca: /etc/gpupass/ca.crt, cert: /etc/gpupass/host.crt, key: /etc/gpupass/host.key}
state_dir: /var/lib/gpupass
guest_socket_dir: /run/gpupass/guests
host_root: `+gpuRoot+`
simulated: true
`, 0o644)
	// Stand-ins: pmxcfs (Type=forking on PVE, pve-cluster:debian/pve-cluster.service:21;
	// a oneshot here) and pve-guests (PVE's is a oneshot running `pvesh create
	// /nodes/localhost/startall`), ordered after pve-cluster only.
	put("/etc/systemd/system/pve-cluster.service", `[Unit]
Description=stand-in for the Proxmox VE cluster filesystem (gpupass e2e)
After=network.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'mkdir -p /etc/pve/lxc && cat /proc/uptime > /run/pve-cluster.ran'
[Install]
WantedBy=multi-user.target
`, 0o644)
	put("/etc/systemd/system/pve-guests.service", `[Unit]
Description=stand-in for PVE guests (starts the containers; gpupass e2e)
Wants=pve-cluster.service
After=pve-cluster.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'n=missing; test -c `+gpuRoot+`/dev/nvidia-uvm && test -c `+gpuRoot+`/dev/nvidia-uvm-tools && n=present; echo "uvm nodes $n" > /run/pve-guests.ran'
[Install]
WantedBy=multi-user.target
`, 0o644)
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"pve-cluster.service", "pve-guests.service"} {
		if err := os.Symlink("../"+u, filepath.Join(wants, u)); err != nil {
			t.Fatal(err)
		}
	}
	c.EnableUnit(t, filepath.Join(repoRoot(t), "packaging", "gpupass-host-agent.service"))

	c.Start(t)
	state := c.WaitBooted(t, 60*time.Second)
	journal, _ := c.Attach(t, "journalctl", "-b", "--no-pager", "-o", "short-monotonic")
	if state != "running" {
		failed, _ := c.Attach(t, "systemctl", "--failed", "--no-pager")
		t.Logf("boot state %s; failed units:\n%s", state, failed)
	}
	if out, _ := c.Attach(t, "systemctl", "is-active", "gpupass-host-agent.service", "pve-cluster.service", "pve-guests.service"); strings.Fields(out) == nil || strings.Count(out, "active") != 3 || strings.Contains(out, "inactive") {
		t.Fatalf("units not active: %q\njournal:\n%s", out, tail(journal, 4000))
	}
	if out, _ := c.Attach(t, "cat", "/run/pve-guests.ran"); strings.TrimSpace(out) != "uvm nodes present" {
		ag, _ := c.Attach(t, "journalctl", "-b", "--no-pager", "-o", "cat", "-u", "gpupass-host-agent.service")
		t.Errorf("pve-guests ran with: %q, want the uvm nodes present (made by the host agent before READY=1); the agent's journal:\n%s", out, tail(ag, 3000))
	}

	// The order, from systemd's own timestamps (monotonic, µs).
	ts := map[string]map[string]int64{}
	for _, u := range []string{"pve-cluster.service", "gpupass-host-agent.service", "pve-guests.service"} {
		out, _ := c.Attach(t, "systemctl", "show", "-p", "InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic", u)
		ts[u] = map[string]int64{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			k, v, _ := strings.Cut(l, "=")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n == 0 {
				t.Fatalf("%s: %q: no timestamp", u, l)
			}
			ts[u][k] = n
		}
	}
	agent, guests, cluster := ts["gpupass-host-agent.service"], ts["pve-guests.service"], ts["pve-cluster.service"]
	if cluster["ActiveEnterTimestampMonotonic"] > agent["InactiveExitTimestampMonotonic"] {
		t.Errorf("the host agent started (%d µs) before pve-cluster was up (%d µs)", agent["InactiveExitTimestampMonotonic"], cluster["ActiveEnterTimestampMonotonic"])
	}
	if agent["ActiveEnterTimestampMonotonic"] > guests["InactiveExitTimestampMonotonic"] {
		t.Errorf("pve-guests started (%d µs) before the host agent was ready (%d µs)", guests["InactiveExitTimestampMonotonic"], agent["ActiveEnterTimestampMonotonic"])
	}
	t.Logf("boot (monotonic): pve-cluster up %.3f s; host agent started %.3f s, READY %.3f s; pve-guests started %.3f s",
		sec(cluster["ActiveEnterTimestampMonotonic"]), sec(agent["InactiveExitTimestampMonotonic"]), sec(agent["ActiveEnterTimestampMonotonic"]), sec(guests["InactiveExitTimestampMonotonic"]))

	// What a person would look at: the critical chain and the journal.
	chain, _ := c.Attach(t, "systemd-analyze", "critical-chain", "--no-pager", "pve-guests.service")
	t.Logf("systemd-analyze critical-chain pve-guests.service:\n%s", chain)
	if !strings.Contains(chain, "gpupass-host-agent.service") {
		t.Errorf("the critical chain of pve-guests.service does not pass through gpupass-host-agent.service:\n%s", chain)
	}
	order := []string{"Started gpupass-host-agent.service", "Starting pve-guests.service"}
	at := -1
	for _, want := range order {
		i := strings.Index(journal, want)
		if i < 0 {
			t.Errorf("journal has no %q:\n%s", want, tail(journal, 4000))
			break
		}
		if i < at {
			t.Errorf("journal: %q comes before %q:\n%s", want, order[0], tail(journal, 4000))
		}
		at = i
	}
	if ag, _ := c.Attach(t, "journalctl", "-b", "--no-pager", "-o", "cat", "-u", "gpupass-host-agent.service"); !strings.Contains(ag, "host agent ready") {
		t.Errorf("the host agent's journal does not say ready:\n%s", tail(ag, 3000))
	}
}

func sec(us int64) float64 { return float64(us) / 1e6 }
