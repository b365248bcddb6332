package lxctest

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/testenv"
)

// Kind is what a test container boots.
type Kind int

const (
	// KindBusybox is a hand-built busybox rootfs whose init is Spec.Init (default).
	KindBusybox Kind = iota
	// KindSystemd is a Debian 12 rootfs (test/rootfs/debian-systemd.sh) that boots
	// systemd as PID 1, as every Debian and Ubuntu template on Proxmox does.
	KindSystemd
)

// SystemdRootfsEnv names the tarball to use instead of the default cache path.
const SystemdRootfsEnv = "GPUPASS_SYSTEMD_ROOTFS"

// DefaultSystemdRootfs is where test/rootfs/debian-systemd.sh caches the tarball.
const DefaultSystemdRootfs = "/var/cache/gpupass/rootfs/bookworm-systemd.tar.zst"

// systemdConfig is the config of a systemd container (FACTS.md, "Added in turn 2"): the
// parts of LXC's common.conf that matter, written out rather than included, because
// common.conf also includes common.conf.d/, where a Proxmox install (or its lab) puts
// hooks that expect a Proxmox container; cgroup:rw:force so that systemd can manage its
// own cgroups in the pure cgroup2 namespace; container=lxc so that systemd knows where
// it runs; SIGRTMIN+3 is systemd's halt signal.
var systemdConfig = []string{
	"lxc.cap.drop = mac_admin mac_override sys_time sys_module sys_rawio",
	"lxc.mount.auto = cgroup:rw:force proc:mixed sys:mixed",
	"lxc.autodev = 1",
	"lxc.environment = container=lxc",
	"lxc.signal.halt = SIGRTMIN+3",
	"lxc.tty.max = 0",
	"lxc.pty.max = 16",
	"lxc.apparmor.profile = unconfined",
}

// commonSeccomp is LXC's stock seccomp profile (kexec, module loading, open_by_handle_at).
const commonSeccomp = "/usr/share/lxc/config/common.seccomp"

var systemdRootfs struct {
	once sync.Once
	path string
	err  error
}

// SystemdRootfs returns the cached Debian 12 systemd rootfs tarball. When it is missing
// and the test runs as root it runs test/rootfs/debian-systemd.sh once (about 80 s from
// the Debian mirror; scripts/test.sh does it before the tests); otherwise it skips the
// test (fails it in CI).
func SystemdRootfs(t testing.TB) string {
	t.Helper()
	systemdRootfs.once.Do(func() {
		p := os.Getenv(SystemdRootfsEnv)
		if p == "" {
			p = DefaultSystemdRootfs
		}
		if _, err := os.Stat(p); err == nil {
			systemdRootfs.path = p
			return
		}
		if os.Geteuid() != 0 || os.Getenv(SystemdRootfsEnv) != "" {
			systemdRootfs.err = fmt.Errorf("no systemd rootfs at %s: run test/rootfs/debian-systemd.sh as root", p)
			return
		}
		script, err := buildScript()
		if err != nil {
			systemdRootfs.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "bash", script).CombinedOutput()
		if err != nil {
			systemdRootfs.err = fmt.Errorf("build the systemd rootfs: bash %s: %w\n%s", script, err, tail(out, 3000))
			return
		}
		if _, err := os.Stat(p); err != nil {
			systemdRootfs.err = fmt.Errorf("build the systemd rootfs: %s did not make %s:\n%s", script, p, tail(out, 3000))
			return
		}
		systemdRootfs.path = p
	})
	if systemdRootfs.err != nil {
		testenv.Skip(t, systemdRootfs.err.Error())
	}
	return systemdRootfs.path
}

// buildScript finds test/rootfs/debian-systemd.sh above the working directory (the
// module root holds go.mod).
func buildScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the rootfs script: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "test", "rootfs", "debian-systemd.sh"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the rootfs script: no go.mod above the working directory")
		}
		dir = parent
	}
}

// unpackRootfs unpacks the tarball into dir (made 0755: dbus refuses a root it cannot
// traverse) and, for an unprivileged container, shifts every owner into the mapped
// range.
func unpackRootfs(tarball, dir string, unpriv bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tar", "--numeric-owner", "--xattrs", "-I", "zstd", "-xpf", tarball, "-C", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("unpack %s: %w: %s", tarball, err, strings.TrimSpace(string(out)))
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if !unpriv {
		return nil
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("shift owner of %s: no stat", p)
		}
		if st.Uid >= SubIDStart { // a hard link already shifted through another name
			return nil
		}
		if err := os.Lchown(p, SubIDStart+int(st.Uid), SubIDStart+int(st.Gid)); err != nil {
			return err
		}
		// chown clears set-id bits; put them back (su, passwd, ...).
		if fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid) != 0 && fi.Mode()&fs.ModeSymlink == 0 {
			return os.Chmod(p, fi.Mode())
		}
		return nil
	})
}

// EnableUnit installs a systemd unit file into the container's rootfs and enables it
// for multi-user.target, as `systemctl enable` would (a symlink in
// multi-user.target.wants).
func (c *Container) EnableUnit(t testing.TB, unitFile string) {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	name := filepath.Base(unitFile)
	sys := filepath.Join(c.Rootfs(), "etc", "systemd", "system")
	wants := filepath.Join(sys, "multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.WriteFile(filepath.Join(sys, name), b, 0o644); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.Symlink("../"+name, filepath.Join(wants, name)); err != nil && !errors.Is(err, fs.ErrExist) {
		t.Fatalf("lxctest: enable %s: %v", name, err)
	}
	if c.unpriv {
		for _, p := range []string{filepath.Join(sys, name), filepath.Join(wants, name)} {
			if err := os.Lchown(p, SubIDStart, SubIDStart); err != nil {
				t.Fatalf("lxctest: %v", err)
			}
		}
	}
}

// WaitBooted waits until systemd inside says the boot is over (`systemctl
// is-system-running --wait` answers running or degraded) and returns its answer.
func (c *Container) WaitBooted(t testing.TB, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _, _ := c.AttachFull(t, "systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			return state
		}
		if time.Now().After(deadline) {
			jobs, _, _ := c.AttachFull(t, "systemctl", "list-jobs", "--no-pager")
			t.Fatalf("lxctest: %s: systemd did not finish booting in %v (state %q); jobs:\n%s", c.name, timeout, state, jobs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
