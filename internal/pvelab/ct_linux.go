package pvelab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Container ids this package hands out. The lab's range is 9900-9999 (teardown.sh stops
// those); 9950-9999 is left to other users of the lab.
const (
	FirstID = 9900
	LastID  = 9949
)

// Spec describes a lab container.
type Spec struct {
	// Hostname defaults to "ai-<id>": on Proxmox the hostname and the id differ.
	Hostname string
	// Privileged makes a privileged container; PVE 9 creates unprivileged ones by default.
	Privileged bool
	// Template is a template file name in TemplateDir (default BaseTemplate).
	Template string
	// OSType is PVE's ostype (default "debian": the lab's busybox templates carry
	// /etc/debian_version). With "unmanaged" PVE refuses to start a container with a devN
	// entry ("Device ... does not exist", a stale errno: pve-container:src/PVE/LXC/Tools.pm
	// get_device_mode_and_rdev after update_lxc_config's -f of unmanaged.common.conf).
	OSType string
	// Memory in MiB (default 128).
	Memory int
	// Conf lines are appended to /etc/pve/lxc/<id>.conf after `pct create` (raw `lxc.*`
	// keys, devN, lock, ...), in the main section.
	Conf []string
}

// CT is a container made by the real `pct create`; it is stopped and destroyed when the test
// that made it ends, also after a failure.
type CT struct {
	ID       int
	Hostname string
	spec     Spec
}

// NewCT allocates an id and runs `pct create <id> local:vztmpl/<template> --ostype debian
// --rootfs local:0 ...`, then appends spec.Conf.
func NewCT(t testing.TB, spec Spec) *CT {
	t.Helper()
	Require(t)
	id := allocID(t)
	if spec.Hostname == "" {
		spec.Hostname = fmt.Sprintf("ai-%d", id)
	}
	if spec.Template == "" {
		spec.Template = BaseTemplate
	}
	if spec.OSType == "" {
		spec.OSType = "debian"
	}
	if spec.Memory == 0 {
		spec.Memory = 128
	}
	unpriv := "1"
	if spec.Privileged {
		unpriv = "0"
	}
	ct := &CT{ID: id, Hostname: spec.Hostname, spec: spec}
	t.Cleanup(func() { ct.destroy(t) })
	MustPct(t, "create", ct.id(), "local:vztmpl/"+spec.Template, "--ostype", spec.OSType,
		"--rootfs", "local:0", "--hostname", spec.Hostname, "--unprivileged", unpriv,
		"--arch", "amd64", "--memory", strconv.Itoa(spec.Memory), "--swap", "0")
	if len(spec.Conf) > 0 {
		ct.AppendConf(t, spec.Conf...)
	}
	return ct
}

func (c *CT) id() string { return strconv.Itoa(c.ID) }

// ConfPath is /etc/pve/lxc/<id>.conf.
func (c *CT) ConfPath() string { return filepath.Join(EtcPVE, "lxc", c.id()+".conf") }

// RenderedPath is /var/lib/lxc/<id>/config, what PVE renders for lxc-start at each start.
func (c *CT) RenderedPath() string { return filepath.Join(LXCPath, c.id(), "config") }

// Conf reads /etc/pve/lxc/<id>.conf.
func (c *CT) Conf(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(c.ConfPath())
	if err != nil {
		t.Fatalf("pvelab: read config: %v", err)
	}
	return string(b)
}

// WriteConf replaces /etc/pve/lxc/<id>.conf (pmxcfs takes a whole-file write).
func (c *CT) WriteConf(t testing.TB, content string) {
	t.Helper()
	if err := os.WriteFile(c.ConfPath(), []byte(content), 0o640); err != nil {
		t.Fatalf("pvelab: write config: %v", err)
	}
}

// AppendConf adds lines to the main section of /etc/pve/lxc/<id>.conf (before any
// [snapshot] or [pve:pending] section).
func (c *CT) AppendConf(t testing.TB, lines ...string) {
	t.Helper()
	cur := c.Conf(t)
	main, rest := cur, ""
	for _, l := range strings.SplitAfter(cur, "\n") {
		if strings.HasPrefix(l, "[") {
			i := strings.Index(cur, "\n"+l)
			main, rest = cur[:i+1], cur[i+1:]
			break
		}
	}
	if main != "" && !strings.HasSuffix(main, "\n") {
		main += "\n"
	}
	c.WriteConf(t, main+strings.Join(lines, "\n")+"\n"+rest)
}

// RenderedConfig reads /var/lib/lxc/<id>/config.
func (c *CT) RenderedConfig(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(c.RenderedPath())
	if err != nil {
		t.Fatalf("pvelab: read rendered config: %v", err)
	}
	return string(b)
}

// Start runs `pct start <id>` and fails the test unless it succeeds.
func (c *CT) Start(t testing.TB) Result { t.Helper(); return MustPct(t, "start", c.id()) }

// Stop runs `pct stop <id>` and fails the test unless it succeeds.
func (c *CT) Stop(t testing.TB) Result { t.Helper(); return MustPct(t, "stop", c.id()) }

// Reboot runs `pct reboot <id>` and fails the test unless it succeeds.
func (c *CT) Reboot(t testing.TB) Result { t.Helper(); return MustPct(t, "reboot", c.id()) }

// Status is the word of `pct status <id>` ("running", "stopped").
func (c *CT) Status(t testing.TB) string {
	t.Helper()
	r := MustPct(t, "status", c.id())
	return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(r.Stdout), "status:"))
}

// InitPID is the host pid of the container's init, from lxc-info (0 when not running).
func (c *CT) InitPID(t testing.TB) int {
	t.Helper()
	out, err := exec.Command("lxc-info", "-n", c.id(), "-p", "-H").Output()
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return pid
}

// Exec runs argv in the running container (lxc-attach; faster than `pct exec`, which
// loads the PVE stack and then runs lxc-attach too).
func (c *CT) Exec(t testing.TB, argv ...string) (stdout string, code int) {
	t.Helper()
	cmd := exec.Command("lxc-attach", append([]string{"-n", c.id(), "--clear-env", "--"}, argv...)...)
	out, err := cmd.Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("pvelab: lxc-attach %d: %v", c.ID, err)
	}
	return string(out), 0
}

// WaitRunning waits until lxc reports the container RUNNING with an init pid different from
// notPID (0: any), e.g. after a reboot that pct started but does not wait for.
func (c *CT) WaitRunning(t testing.TB, notPID int, within time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if pid := c.InitPID(t); pid > 0 && pid != notPID {
			return pid
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("pvelab: container %d not running with a new init within %s", c.ID, within)
	return 0
}

// destroy stops the container, clears a lock a test set, and destroys it with its volume.
func (c *CT) destroy(t testing.TB) {
	if err := destroyCT(c.ID); err != nil {
		t.Errorf("pvelab: %v", err)
	}
}

func destroyCT(id int) error {
	sid := strconv.Itoa(id)
	conf := filepath.Join(EtcPVE, "lxc", sid+".conf")
	b, err := os.ReadFile(conf)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if exec.Command("lxc-info", "-n", sid, "-p", "-H").Run() == nil {
		// lxc-stop -k is immediate; the poststop hook and the shim's stop wrapper still run.
		_ = exec.Command("lxc-stop", "-n", sid, "-k").Run()
	}
	if strings.Contains("\n"+string(b), "\nlock:") {
		if r, err := pct("unlock", sid); err != nil || r.Code != 0 {
			return fmt.Errorf("unlock container %d: %v %s", id, err, r.Stderr)
		}
	}
	var last Result
	for i := 0; i < 20; i++ {
		r, err := pct("destroy", sid, "--purge")
		if err != nil {
			return fmt.Errorf("destroy container %d: %w", id, err)
		}
		if r.Code == 0 {
			return nil
		}
		last = r
		time.Sleep(500 * time.Millisecond) // the stop may still be finishing
	}
	return fmt.Errorf("destroy container %d: %s", id, last)
}

// allocID takes the first free id in FirstID..LastID: free means its lock file under
// /run/gpupass-pvelab/ids can be flock'ed, which holds across test binaries and mount
// namespaces. The lock is held until the test ends. A container left by a test binary that
// died is destroyed first.
func allocID(t testing.TB) int {
	t.Helper()
	dir := filepath.Join(RunDir, "ids")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("pvelab: create id lock directory: %v", err)
	}
	for id := FirstID; id <= LastID; id++ {
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(id)+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatalf("pvelab: open id lock: %v", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		if err := destroyCT(id); err != nil {
			t.Logf("pvelab: id %d has a leftover container that cannot be removed, skipping it: %v", id, err)
			f.Close()
			continue
		}
		t.Cleanup(func() { f.Close() })
		return id
	}
	t.Fatalf("pvelab: no free container id in %d-%d", FirstID, LastID)
	return 0
}
