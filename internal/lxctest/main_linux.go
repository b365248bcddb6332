package lxctest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/testenv"
)

// envMarker is set in the re-executed test binary so that it does not re-execute again; its
// value is the registry file where NewContainer notes each container it makes, so that
// the parent can stop what a test killed by a panic or timeout left running.
const envMarker = "GPUPASS_LXCTEST_CGROUP2"

// CgroupRoot is where LXC looks for the cgroup hierarchy.
const CgroupRoot = "/sys/fs/cgroup"

// Cgroup2Main runs the tests of m and exits. When it runs as root with LXC installed and
// /sys/fs/cgroup is not already a cgroup2 mount, it first re-executes the test binary in a
// private mount namespace with cgroup2 mounted on /sys/fs/cgroup (FACTS.md §2), so that the
// lxc.cgroup2.devices rules of the containers are really enforced. Call it from TestMain:
//
//	func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }
func Cgroup2Main(m *testing.M) {
	os.Exit(cgroup2Main(m, false))
}

// PrivateCgroup2Main is Cgroup2Main that re-executes in a private mount namespace also when
// /sys/fs/cgroup is already cgroup2 (a systemd host), for tests that change mounts the rest
// of the machine must not see (internal/pvelab binds GPU fixtures over /proc files).
func PrivateCgroup2Main(m *testing.M) {
	os.Exit(cgroup2Main(m, true))
}

// InPrivateNS reports whether this process is the re-executed test binary, in a mount
// namespace of its own.
func InPrivateNS() bool { return os.Getenv(envMarker) != "" }

func cgroup2Main(m *testing.M, private bool) int {
	defer removeProbeDir()
	if os.Getenv(envMarker) != "" {
		// The re-executed child: we own this mount namespace. Take the old /sys/fs/cgroup
		// (tmpfs and v1 mounts) away rather than mounting over it: Proxmox decides its cgroup
		// mode from the first /proc/mounts entry on /sys/fs/cgroup
		// (pve-common:src/PVE/CGroup.pm, cgroup_mode), and PVE 9 hosts are pure cgroup2.
		if !IsCgroup2(CgroupRoot) {
			_ = unix.Unmount(CgroupRoot, unix.MNT_DETACH)
			if err := unix.Mount("none", CgroupRoot, "cgroup2", 0, ""); err != nil {
				fmt.Fprintf(os.Stderr, "lxctest: mount cgroup2 on %s: %v (LXC tests will not run)\n", CgroupRoot, err)
			}
		}
		return m.Run()
	}
	if IsCgroup2(CgroupRoot) && !private {
		return m.Run()
	}
	if os.Geteuid() != 0 {
		return m.Run()
	}
	if _, err := exec.LookPath("lxc-start"); err != nil {
		return m.Run()
	}
	code, err := reexecInMountNS()
	if err != nil {
		fmt.Fprintf(os.Stderr, "lxctest: re-execute in a private mount namespace: %v (running without pure cgroup2)\n", err)
		return m.Run()
	}
	return code
}

// reexecInMountNS runs this test binary again, with the same arguments, in a new private
// mount namespace (Go marks / rprivate after unshare) and returns its exit code.
func reexecInMountNS() (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, fmt.Errorf("find test binary: %w", err)
	}
	reg, err := os.CreateTemp("", "lxctest-registry-")
	if err != nil {
		return 0, fmt.Errorf("create container registry: %w", err)
	}
	reg.Close()
	defer os.Remove(reg.Name())
	defer reapLeftovers(reg.Name())
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), envMarker+"="+reg.Name())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", self, err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 1, nil
	}
	return 0, nil
}

// register notes a container in the registry of the parent process, if there is one.
func register(lxcpath, name string) error {
	reg := os.Getenv(envMarker)
	if reg == "" {
		return nil
	}
	f, err := os.OpenFile(reg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("register container: %w", err)
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s\t%s\n", lxcpath, name)
	return err
}

// reapLeftovers kills and removes the registered containers that are still there: t.Cleanup
// does not run when a test binary panics (a -timeout does that).
func reapLeftovers(reg string) {
	b, err := os.ReadFile(reg)
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		lxcpath, name, ok := strings.Cut(line, "\t")
		if !ok {
			continue
		}
		dir := filepath.Join(lxcpath, name)
		if _, err := os.Stat(dir); err != nil {
			continue // cleaned up by its test
		}
		c := &Container{name: name, lxcpath: lxcpath}
		if err := c.kill(); err != nil {
			fmt.Fprintf(os.Stderr, "lxctest: stop leftover container %s: %v\n", name, err)
		}
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "lxctest: remove leftover container: %v\n", err)
		}
		fmt.Fprintf(os.Stderr, "lxctest: removed container %s left by an interrupted test\n", dir)
		// The t.TempDir lxcpath and its parent, when now empty (Remove fails otherwise).
		if os.Remove(lxcpath) == nil && strings.HasPrefix(lxcpath, filepath.Clean(os.TempDir())+"/") {
			_ = os.Remove(filepath.Dir(lxcpath))
		}
	}
}

// IsCgroup2 reports whether dir is a cgroup2 mount.
func IsCgroup2(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC
}

// RequireCgroup2 skips the test (fails it in CI) unless /sys/fs/cgroup is a cgroup2 mount,
// the condition under which LXC enforces lxc.cgroup2.devices rules.
func RequireCgroup2(t testing.TB) {
	t.Helper()
	if !IsCgroup2(CgroupRoot) {
		testenv.Skip(t, "needs pure cgroup2 on "+CgroupRoot+": call lxctest.Cgroup2Main(m) from TestMain")
	}
}
