package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gpupass/internal/lxctest"
)

// initScript is the container's own init: it starts the baked-in guest agent in the
// background and then idles as PID 1. Nothing from outside ever execs the agent.
const initScript = `#!/bin/sh
# gpupass e2e container init: start the guest agent, then idle as PID 1.
/usr/local/bin/gpupass-guest-agent --log-level debug >>/var/log/gpupass-guest-agent.log 2>&1 &
exec /bin/sleep 2147483647
`

// guestAgentPath is where the guest agent is baked into every container.
const guestAgentPath = "/usr/local/bin/gpupass-guest-agent"

// ctOpts shape a test container.
type ctOpts struct {
	// Config lines appended to the generated config (before anything gpupass writes).
	Config []string
	// Files are extra rootfs files: container path -> content.
	Files map[string]string
	// Systemd boots the Debian 12 rootfs with systemd as PID 1 (as Proxmox's Debian and
	// Ubuntu templates do) and runs the guest agent as the shipped unit
	// (packaging/gpupass-guest-agent.service, enabled); default: busybox and initScript.
	Systemd bool
	// OpenRC boots the Debian 12 rootfs with sysvinit running OpenRC and runs the guest
	// agent from the shipped init script (packaging/gpupass-guest-agent.openrc, enabled).
	OpenRC bool
}

// container is a busybox (or systemd) container on a host, with the guest agent baked
// into its rootfs and started by its init. Every lxc-* command runs in the host's network
// namespace.
type container struct {
	h       *host
	c       *lxctest.Container
	name    string
	systemd bool
}

// newContainer builds a (stopped) container on h. short names it within the test; the
// full name carries the run id, because cgroup names (lxc.payload.<name>) are global.
func (h *host) newContainer(t *testing.T, short string, opts ctOpts) *container {
	t.Helper()
	name := fmt.Sprintf("gpe%s-%s", h.f.id, short)
	spec := lxctest.Spec{
		Name:        name,
		LXCPath:     h.lxcPath,
		Init:        []string{"/bin/sh", "/etc/gpupass-init.sh"},
		ExtraConfig: opts.Config,
	}
	switch {
	case opts.Systemd:
		spec.Kind, spec.Init = lxctest.KindSystemd, nil
	case opts.OpenRC:
		spec.Kind, spec.Init = lxctest.KindOpenRC, nil
	}
	c := lxctest.NewContainer(t, spec)
	ct := &container{h: h, c: c, name: name, systemd: opts.Systemd}
	// Runs before lxctest's own cleanup (cleanups are LIFO), which cannot reach the
	// container's monitor from outside the host's network namespace.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("e2e: container %s: config:\n%s\nguest agent log (end):\n%s", name, ct.readConfig(), tail(ct.guestLog(t), 3000))
		}
		ct.h.lxc(t, 20*time.Second, "lxc-stop", name, "-k")
		ct.h.lxc(t, 20*time.Second, "lxc-wait", name, "-s", "STOPPED", "-t", "10")
	})
	files := map[string]string{}
	switch {
	case opts.Systemd:
		// Baked in as docs/guest-agent.md says: the binary and the shipped unit, enabled.
		c.EnableUnit(t, filepath.Join(repoRoot(t), "packaging", "gpupass-guest-agent.service"))
	case opts.OpenRC:
		c.EnableOpenRCService(t, filepath.Join(repoRoot(t), "packaging", "gpupass-guest-agent.openrc"), "gpupass-guest-agent")
	default:
		files["/etc/gpupass-init.sh"] = initScript
	}
	for k, v := range opts.Files {
		files[k] = v
	}
	for p, content := range files {
		ct.writeFile(t, p, content, 0o755)
	}
	if err := copyFile(h.f.bin.GuestAgent, filepath.Join(c.Rootfs(), guestAgentPath), 0o755); err != nil {
		t.Fatalf("e2e: bake the guest agent into %s: %v", name, err)
	}
	return ct
}

// clone makes a new container whose config is a copy of ct's (a `pct clone` / `lxc-copy`
// of a GPU container: it inherits the parent's GPU lines), with its own rootfs.
func (ct *container) clone(t *testing.T, short string) *container {
	t.Helper()
	cl := ct.h.newContainer(t, short, ctOpts{})
	cfg := strings.ReplaceAll(ct.readConfig(), ct.name, cl.name)
	if err := os.WriteFile(cl.c.ConfigPath(), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return cl
}

func (ct *container) writeFile(t testing.TB, p, content string, mode os.FileMode) {
	t.Helper()
	full := filepath.Join(ct.c.Rootfs(), p)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Start starts the container by hand (as a person or another tool would: no gpupass
// record of the start) and waits until it runs.
func (ct *container) Start(t testing.TB) {
	t.Helper()
	log := filepath.Join(ct.h.dir, ct.name+".start.log")
	if r := ct.h.lxc(t, 30*time.Second, "lxc-start", ct.name, "-o", log, "-l", "INFO"); r.Code != 0 {
		b, _ := os.ReadFile(log)
		if strings.Contains(string(b), "Failed to clone a new set of namespaces") {
			t.Fatalf("e2e: lxc-start %s: %s (log: %s)", ct.name, lxctest.NamespacesRefused, log)
		}
		t.Fatalf("e2e: lxc-start %s: exit %d: %s\n%s", ct.name, r.Code, r.Stderr, tail(string(b), 3000))
	}
	if r := ct.h.lxc(t, 30*time.Second, "lxc-wait", ct.name, "-s", "RUNNING", "-t", "10"); r.Code != 0 {
		t.Fatalf("e2e: %s did not reach RUNNING: %s", ct.name, r.Stderr)
	}
}

// Kill stops the container at once (lxc-stop -k).
func (ct *container) Kill(t testing.TB) {
	t.Helper()
	ct.h.lxc(t, 20*time.Second, "lxc-stop", ct.name, "-k")
	if r := ct.h.lxc(t, 20*time.Second, "lxc-wait", ct.name, "-s", "STOPPED", "-t", "10"); r.Code != 0 {
		t.Fatalf("e2e: %s did not stop: %s", ct.name, r.Stderr)
	}
}

// State is RUNNING or STOPPED.
func (ct *container) State(t testing.TB) string {
	t.Helper()
	r := ct.h.lxc(t, 20*time.Second, "lxc-info", ct.name, "-s", "-H")
	return strings.TrimSpace(r.Stdout)
}

// InitPID is the host PID of the running container's init.
func (ct *container) InitPID(t testing.TB) int {
	t.Helper()
	r := ct.h.lxc(t, 20*time.Second, "lxc-info", ct.name, "-p", "-H")
	pid, err := strconv.Atoi(strings.TrimSpace(r.Stdout))
	if err != nil || pid <= 0 {
		t.Fatalf("e2e: init pid of %s: %q (is it running?)", ct.name, r.Stdout)
	}
	return pid
}

// Attach runs argv inside the container (lxc-attach, from the test only: gpupass never
// execs into containers) and returns stdout+stderr and the exit code.
func (ct *container) Attach(t testing.TB, argv ...string) (string, int) {
	t.Helper()
	args := append([]string{"--clear-env", "-v", "PATH=/bin:/usr/bin:/sbin:/usr/sbin", "--"}, argv...)
	r := ct.h.lxc(t, 20*time.Second, "lxc-attach", ct.name, args...)
	return r.Stdout + r.Stderr, r.Code
}

// devNodes lists what the running container's /dev really has, seen from the host through
// /proc/<init>/root (no exec).
func (ct *container) devNodes(t testing.TB) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root/dev", ct.InitPID(t)))
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	out := map[string]bool{}
	for _, e := range ents {
		out["/dev/"+e.Name()] = true
	}
	return out
}

func (ct *container) readConfig() string {
	b, _ := os.ReadFile(ct.c.ConfigPath())
	return string(b)
}

func (ct *container) writeConfig(t testing.TB, s string) {
	t.Helper()
	if err := os.WriteFile(ct.c.ConfigPath(), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// appendConfig appends lines with a plain write, as `echo >>` in the bash orchestrator did.
func (ct *container) appendConfig(t testing.TB, lines ...string) {
	t.Helper()
	ct.c.AppendConfig(t, lines...)
}

// guestLog is the guest agent's log: its file under busybox, its journal under systemd.
func (ct *container) guestLog(t testing.TB) string {
	if ct.systemd {
		if ct.State(t) != "RUNNING" {
			return "(container not running: no journal)"
		}
		out, _ := ct.Attach(t, "journalctl", "--no-pager", "-o", "short-precise", "-u", "gpupass-guest-agent.service")
		st, _ := ct.Attach(t, "systemctl", "status", "--no-pager", "gpupass-guest-agent.service")
		return out + "\n" + st
	}
	b, _ := os.ReadFile(filepath.Join(ct.c.Rootfs(), "var/log/gpupass-guest-agent.log"))
	return string(b)
}
