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
	// KindSystemd is a Debian 12 rootfs (test/rootfs/debian.sh) that boots systemd as
	// PID 1, as every Debian and Ubuntu template on Proxmox does.
	KindSystemd
	// KindOpenRC is a Debian 12 rootfs (test/rootfs/debian.sh) whose PID 1 is sysvinit
	// running OpenRC's sysinit, boot and default runlevels (Debian's openrc package).
	KindOpenRC
)

// RootfsCacheEnv names the directory of the tarballs instead of DefaultRootfsCache.
const RootfsCacheEnv = "GPUPASS_ROOTFS_CACHE"

// DefaultRootfsCache is where test/rootfs/debian.sh caches bookworm-<flavor>.tar.zst.
const DefaultRootfsCache = "/var/cache/gpupass/rootfs"

// flavor is the rootfs flavor of a kind (test/rootfs/debian.sh's argument).
func (k Kind) flavor() string {
	switch k {
	case KindSystemd:
		return "systemd"
	case KindOpenRC:
		return "openrc"
	}
	return ""
}

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

// openrcConfig is the config of a container whose PID 1 is sysvinit running OpenRC:
// as systemdConfig, with LXC's default halt signal and cgroups as LXC mounts them by default.
var openrcConfig = []string{
	"lxc.cap.drop = mac_admin mac_override sys_time sys_module sys_rawio",
	"lxc.mount.auto = cgroup:mixed proc:mixed sys:mixed",
	"lxc.autodev = 1",
	"lxc.environment = container=lxc",
	"lxc.signal.halt = SIGPWR",
	"lxc.tty.max = 0",
	"lxc.pty.max = 16",
	"lxc.apparmor.profile = unconfined",
}

// commonSeccomp is LXC's stock seccomp profile (kexec, module loading, open_by_handle_at).
const commonSeccomp = "/usr/share/lxc/config/common.seccomp"

type rootfsOnce struct {
	once sync.Once
	path string
	err  error
}

var rootfsTarballs sync.Map // Kind -> *rootfsOnce

// RootfsTarball returns the cached Debian 12 rootfs tarball of a systemd or OpenRC kind.
// When it is missing and the test runs as root it runs test/rootfs/debian.sh for it once
// (1-2.5 minutes from the Debian mirror; scripts/test.sh does it before the tests);
// otherwise it skips the test (fails it in CI).
func RootfsTarball(t testing.TB, kind Kind) string {
	t.Helper()
	v, _ := rootfsTarballs.LoadOrStore(kind, &rootfsOnce{})
	r := v.(*rootfsOnce)
	r.once.Do(func() { r.path, r.err = findOrBuildRootfs(kind.flavor()) })
	if r.err != nil {
		testenv.Skip(t, r.err.Error())
	}
	return r.path
}

func findOrBuildRootfs(flavor string) (string, error) {
	if flavor == "" {
		return "", errors.New("no rootfs tarball for this kind")
	}
	dir := os.Getenv(RootfsCacheEnv)
	if dir == "" {
		dir = DefaultRootfsCache
	}
	p := filepath.Join(dir, "bookworm-"+flavor+".tar.zst")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("no %s rootfs at %s: run test/rootfs/debian.sh %s as root", flavor, p, flavor)
	}
	script, err := buildScript()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", script, flavor).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the %s rootfs: bash %s %s: %w\n%s", flavor, script, flavor, err, tail(out, 3000))
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("build the %s rootfs: %s did not make %s:\n%s", flavor, script, p, tail(out, 3000))
	}
	return p, nil
}

// buildScript finds test/rootfs/debian.sh above the working directory (the
// module root holds go.mod).
func buildScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the rootfs script: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "test", "rootfs", "debian.sh"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the rootfs script: no go.mod above the working directory")
		}
		dir = parent
	}
}

// haltOnPowerfail makes sysvinit halt on SIGPWR (openrcConfig's lxc.signal.halt), as
// Proxmox does to every Debian container at start (pve-container:
// src/PVE/LXC/Setup/Debian.pm:88-97: the power lines removed, "p0::powerfail:/sbin/init
// 0" added). Debian's own inittab runs /etc/init.d/powerfail, which the rootfs lacks, so
// a clean lxc-stop would otherwise wait out its whole timeout.
func haltOnPowerfail(rootfs string) error {
	p := filepath.Join(rootfs, "etc", "inittab")
	b, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("halt on powerfail: %w", err)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if t := strings.TrimSpace(l); len(t) >= 3 && t[0] == 'p' && strings.ContainsRune("fno0", rune(t[1])) && t[2] == ':' {
			continue
		}
		keep = append(keep, l)
	}
	keep = append(keep, "p0::powerfail:/sbin/init 0")
	return os.WriteFile(p, []byte(strings.Join(keep, "\n")+"\n"), 0o644)
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

// EnableOpenRCService installs an OpenRC init script into the container's rootfs as
// /etc/init.d/<name> and enables it in the default runlevel, as `rc-update add <name>
// default` would (a symlink in /etc/runlevels/default).
func (c *Container) EnableOpenRCService(t testing.TB, script, name string) {
	t.Helper()
	b, err := os.ReadFile(script)
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	initd := filepath.Join(c.Rootfs(), "etc", "init.d", name)
	link := filepath.Join(c.Rootfs(), "etc", "runlevels", "default", name)
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.WriteFile(initd, b, 0o755); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.Symlink("/etc/init.d/"+name, link); err != nil && !errors.Is(err, fs.ErrExist) {
		t.Fatalf("lxctest: enable %s: %v", name, err)
	}
	if c.unpriv {
		for _, p := range []string{initd, link} {
			if err := os.Lchown(p, SubIDStart, SubIDStart); err != nil {
				t.Fatalf("lxctest: %v", err)
			}
		}
	}
}

// WaitBooted waits until the init inside says the boot is over and returns its word:
// systemd's `systemctl is-system-running` answering running or degraded, OpenRC's
// `rc-status --runlevel` answering default.
func (c *Container) WaitBooted(t testing.TB, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var state string
		if c.kind == KindOpenRC {
			out, _, _ := c.AttachFull(t, "rc-status", "--runlevel")
			if state = strings.TrimSpace(out); state == "default" {
				return state
			}
		} else {
			out, _, _ := c.AttachFull(t, "systemctl", "is-system-running")
			if state = strings.TrimSpace(out); state == "running" || state == "degraded" {
				return state
			}
		}
		if time.Now().After(deadline) {
			jobs := ""
			if c.kind != KindOpenRC {
				jobs, _, _ = c.AttachFull(t, "systemctl", "list-jobs", "--no-pager")
			}
			t.Fatalf("lxctest: %s: init did not finish booting in %v (state %q)\n%s", c.name, timeout, state, jobs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
