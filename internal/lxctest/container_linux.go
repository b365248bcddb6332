package lxctest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gpupass/internal/testenv"
)

// Spec describes a busybox test container.
type Spec struct {
	// Name is the container name; default: derived from t.Name() plus a random suffix,
	// unique across test binaries running at the same time.
	Name string
	// LXCPath is the lxcpath (lxc-* -P); default: a fresh directory under t.TempDir().
	LXCPath string
	// ExtraConfig lines ("key = value") are appended to the generated config.
	ExtraConfig []string
	// Init is the container's init command; default: a long sleep.
	Init []string
	// Binds are read-only bind mounts of host files or directories: {host path, container
	// path}. The container path is created (a file for a file, a directory for a directory).
	Binds [][2]string
	// Unprivileged maps root to 100000:65536 (added to /etc/subuid and /etc/subgid if absent).
	Unprivileged bool
	// Kind is what the container boots: busybox with Init (default), or systemd or OpenRC
	// from a Debian 12 rootfs (Init is then ignored).
	Kind Kind
}

// Container is a hand-built busybox container. It is stopped and removed when the test
// that made it ends, whatever the outcome.
type Container struct {
	name, lxcpath string
	unpriv        bool
	kind          Kind
}

// Subordinate id range used for unprivileged containers.
const (
	SubIDStart = 100000
	SubIDCount = 65536
)

// cmdTimeout bounds each lxc-* command; a hanging command fails the test with its argv.
const cmdTimeout = 20 * time.Second

// DefaultDeviceRules is the container's own device cgroup list: deny everything, allow the
// basic nodes. Unlike LXC's stock common.conf it does not allow fuse (10:229) or tun
// (10:200), which the simulated GPU host of FACTS.md §2 uses as stand-ins.
var DefaultDeviceRules = []string{
	"lxc.cgroup2.devices.deny = a",
	"lxc.cgroup2.devices.allow = c 1:3 rwm",
	"lxc.cgroup2.devices.allow = c 1:5 rwm",
	"lxc.cgroup2.devices.allow = c 1:7 rwm",
	"lxc.cgroup2.devices.allow = c 1:8 rwm",
	"lxc.cgroup2.devices.allow = c 1:9 rwm",
	"lxc.cgroup2.devices.allow = c 5:* rwm",
	"lxc.cgroup2.devices.allow = c 136:* rwm",
}

// NewContainer builds the rootfs and config of a container (not started). It skips the test
// (fails it in CI) without root, LXC or pure cgroup2.
func NewContainer(t testing.TB, spec Spec) *Container {
	t.Helper()
	testenv.RequireLXC(t)
	RequireCgroup2(t)
	var bb, tarball string
	if spec.Kind != KindBusybox {
		tarball = RootfsTarball(t, spec.Kind)
	} else {
		var err error
		if bb, err = staticBusybox(); err != nil {
			testenv.Skip(t, err.Error())
		}
	}
	if spec.Name == "" {
		spec.Name = nameFor(t.Name())
	}
	if spec.LXCPath == "" {
		spec.LXCPath = t.TempDir()
	}
	if err := makeTraversable(spec.LXCPath); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	c := &Container{name: spec.Name, lxcpath: spec.LXCPath, unpriv: spec.Unprivileged, kind: spec.Kind}
	dir := filepath.Join(c.lxcpath, c.name)
	if _, err := os.Stat(dir); err == nil {
		t.Fatalf("lxctest: container directory %s already exists: pick another Spec.Name", dir)
	}
	if err := register(c.lxcpath, c.name); err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	t.Cleanup(func() { c.destroy(t) })
	if spec.Unprivileged {
		for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
			if err := ensureSubIDs(f); err != nil {
				t.Fatalf("lxctest: %v", err)
			}
		}
	}
	if spec.Kind != KindBusybox {
		if err := unpackRootfs(tarball, c.Rootfs(), spec.Unprivileged); err != nil {
			t.Fatalf("lxctest: %v", err)
		}
		// The init sets the hostname from /etc/hostname at boot: the container's name, as
		// lxc-create's templates (and pct, with the config's hostname) write it.
		if err := os.WriteFile(filepath.Join(c.Rootfs(), "etc", "hostname"), []byte(c.name+"\n"), 0o644); err != nil {
			t.Fatalf("lxctest: %v", err)
		}
		if spec.Kind == KindOpenRC {
			if err := haltOnPowerfail(c.Rootfs()); err != nil {
				t.Fatalf("lxctest: %v", err)
			}
		}
	} else if err := buildRootfs(c.Rootfs(), bb, spec.Unprivileged); err != nil {
		t.Fatalf("lxctest: build rootfs: %v", err)
	}
	cfg, err := renderConfig(c, spec)
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	if err := os.WriteFile(c.ConfigPath(), []byte(cfg), 0o644); err != nil {
		t.Fatalf("lxctest: write config: %v", err)
	}
	return c
}

func renderConfig(c *Container, spec Spec) (string, error) {
	init := spec.Init
	if len(init) == 0 {
		init = []string{"/bin/sleep", "2147483647"}
	}
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("# written by gpupass/internal/lxctest")
	line("lxc.uts.name = %s", c.name)
	line("lxc.rootfs.path = dir:%s", c.Rootfs())
	line("lxc.net.0.type = empty")
	if spec.Kind != KindBusybox {
		if _, err := os.Stat(commonSeccomp); err == nil {
			line("lxc.seccomp.profile = %s", commonSeccomp)
		}
		cfg := systemdConfig
		if spec.Kind == KindOpenRC {
			cfg = openrcConfig
		}
		for _, l := range cfg {
			line("%s", l)
		}
	} else {
		line("lxc.init.cmd = %s", strings.Join(init, " "))
		line("lxc.mount.auto = proc:mixed sys:ro")
		line("lxc.autodev = 1")
		line("lxc.signal.halt = SIGKILL") // a clean lxc-stop is instant with any init
		line("lxc.tty.max = 0")
		line("lxc.pty.max = 16")
	}
	if spec.Unprivileged {
		line("lxc.idmap = u 0 %d %d", SubIDStart, SubIDCount)
		line("lxc.idmap = g 0 %d %d", SubIDStart, SubIDCount)
	}
	for _, r := range DefaultDeviceRules {
		line("%s", r)
	}
	for _, bm := range spec.Binds {
		host, target := bm[0], strings.TrimLeft(bm[1], "/")
		fi, err := os.Stat(host)
		if err != nil {
			return "", fmt.Errorf("bind %s: %w", host, err)
		}
		if target == "" || strings.ContainsAny(host+target, " \t\n") {
			return "", fmt.Errorf("bind %s -> %q: need a container path without blanks", host, bm[1])
		}
		create := "file"
		if fi.IsDir() {
			create = "dir"
		}
		line("lxc.mount.entry = %s %s none ro,bind,create=%s 0 0", host, target, create)
	}
	for _, l := range spec.ExtraConfig {
		line("%s", l)
	}
	return b.String(), nil
}

// Name is the container name (the lxc-* -n argument, and the id in lxc.payload.<name>).
func (c *Container) Name() string { return c.name }

// LXCPath is the lxcpath (the lxc-* -P argument).
func (c *Container) LXCPath() string { return c.lxcpath }

// ConfigPath is <lxcpath>/<name>/config.
func (c *Container) ConfigPath() string { return filepath.Join(c.lxcpath, c.name, "config") }

// Rootfs is <lxcpath>/<name>/rootfs.
func (c *Container) Rootfs() string { return filepath.Join(c.lxcpath, c.name, "rootfs") }

// LogPath is the LXC debug log of the latest start.
func (c *Container) LogPath() string { return filepath.Join(c.lxcpath, c.name, "lxctest.log") }

// AppendConfig appends lines to the config file (for example after the start, to show that
// the running container does not see them).
func (c *Container) AppendConfig(t testing.TB, lines ...string) {
	t.Helper()
	f, err := os.OpenFile(c.ConfigPath(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := fmt.Fprintln(f, l); err != nil {
			t.Fatalf("lxctest: append to %s: %v", c.ConfigPath(), err)
		}
	}
}

// Start starts the container (daemonized) and waits until it is RUNNING.
func (c *Container) Start(t testing.TB) {
	t.Helper()
	_ = os.Remove(c.LogPath())
	if _, _, err := c.lxc("lxc-start", "-l", "DEBUG", "-o", c.LogPath()); err != nil {
		log, _ := os.ReadFile(c.LogPath())
		t.Fatal(startFailure(c.name, err, log, c.LogPath()))
	}
	if _, _, err := c.lxc("lxc-wait", "-s", "RUNNING", "-t", "10"); err != nil {
		t.Fatalf("lxctest: wait for %s to run: %v", c.name, err)
	}
}

// Stop kills the container (lxc-stop -k) and waits until it is STOPPED.
func (c *Container) Stop(t testing.TB) {
	t.Helper()
	if err := c.kill(); err != nil {
		t.Fatalf("lxctest: stop %s: %v", c.name, err)
	}
}

func (c *Container) kill() error {
	state, err := c.state()
	if err != nil {
		return err
	}
	if state == "STOPPED" {
		return nil
	}
	if _, _, err := c.lxc("lxc-stop", "-k"); err != nil {
		return err
	}
	_, _, err = c.lxc("lxc-wait", "-s", "STOPPED", "-t", "10")
	return err
}

// State returns the lxc-info state (RUNNING, STOPPED, ...).
func (c *Container) State(t testing.TB) string {
	t.Helper()
	s, err := c.state()
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	return s
}

func (c *Container) state() (string, error) {
	out, _, err := c.lxc("lxc-info", "-s", "-H")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// InitPID returns the host PID of the running container's init.
func (c *Container) InitPID(t testing.TB) int {
	t.Helper()
	out, _, err := c.lxc("lxc-info", "-p", "-H")
	if err != nil {
		t.Fatalf("lxctest: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil || pid <= 0 {
		t.Fatalf("lxctest: init pid of %s: %q is not a pid (is it running?)", c.name, out)
	}
	return pid
}

// Attach runs argv inside the container (lxc-attach --clear-env) and returns its standard
// output and exit code; standard error goes to the test log. Failing to run lxc-attach at
// all fails the test.
func (c *Container) Attach(t testing.TB, argv ...string) (stdout string, exitCode int) {
	t.Helper()
	stdout, stderr, code := c.AttachFull(t, argv...)
	if stderr != "" {
		t.Logf("lxctest: %s: %v: stderr: %s", c.name, argv, strings.TrimSpace(stderr))
	}
	return stdout, code
}

// AttachAs is Attach as the container's user uid (and group uid).
func (c *Container) AttachAs(t testing.TB, uid int, argv ...string) (stdout string, exitCode int) {
	t.Helper()
	id := strconv.Itoa(uid)
	stdout, stderr, code := c.attach(t, []string{"-u", id, "-g", id}, argv...)
	if stderr != "" {
		t.Logf("lxctest: %s: uid %d: %v: stderr: %s", c.name, uid, argv, strings.TrimSpace(stderr))
	}
	return stdout, code
}

// AttachFull is Attach returning standard error too.
func (c *Container) AttachFull(t testing.TB, argv ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	return c.attach(t, nil, argv...)
}

func (c *Container) attach(t testing.TB, opts []string, argv ...string) (stdout, stderr string, exitCode int) {
	t.Helper()
	args := append(append([]string{"lxc-attach"}, opts...), "--clear-env", "-v", "PATH=/bin:/usr/bin:/sbin:/usr/sbin", "--")
	args = append(args, argv...)
	stdout, stderr, err := c.lxc(args...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout, stderr, 0
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		return stdout, stderr, ee.ExitCode()
	default:
		t.Fatalf("lxctest: attach %s %v: %v", c.name, argv, err)
		return "", "", -1
	}
}

// lxc runs an lxc-* command for this container (-P lxcpath -n name inserted after argv[0]).
func (c *Container) lxc(argv ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	args := append([]string{"-P", c.lxcpath, "-n", c.name}, argv[1:]...)
	cmd := exec.CommandContext(ctx, argv[0], args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = time.Second
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %s: timed out after %v: %w", argv[0], strings.Join(args, " "), cmdTimeout, err)
	} else if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return o.String(), e.String(), &cmdError{ExitError: ee, argv: append(argv[:1:1], args...), stderr: e.String()}
		}
		err = fmt.Errorf("%s: %w", argv[0], err)
	}
	return o.String(), e.String(), err
}

type cmdError struct {
	*exec.ExitError
	argv   []string
	stderr string
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("%s: exit %d: %s", strings.Join(e.argv, " "), e.ExitCode(), strings.TrimSpace(e.stderr))
}

func (e *cmdError) Unwrap() error { return e.ExitError }

// destroy stops the container and removes its directory.
func (c *Container) destroy(t testing.TB) {
	if err := c.kill(); err != nil {
		t.Errorf("lxctest: cleanup: stop %s: %v", c.name, err)
	}
	if err := os.RemoveAll(filepath.Join(c.lxcpath, c.name)); err != nil {
		t.Errorf("lxctest: cleanup: %v", err)
	}
}

// nameFor derives a short container name from a test name: lower-case letters and digits of
// its last part, then a random suffix.
func nameFor(testName string) string {
	if i := strings.LastIndexByte(testName, '/'); i >= 0 && i+1 < len(testName) {
		testName = testName[i+1:]
	}
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimPrefix(testName, "Test")) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
		if b.Len() == 12 {
			break
		}
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	return "lt" + b.String() + "-" + hex.EncodeToString(rnd[:])
}

// NamespacesRefused is what a test says when the kernel refuses LXC a new set of
// namespaces: the usual cause is a chroot (the kernel refuses user namespaces to a chrooted
// caller), or user namespaces switched off.
const NamespacesRefused = "LXC cannot create namespaces here (\"Failed to clone a new set of namespaces\"): " +
	"the LXC tests need root on a real root filesystem (not a chroot) with user namespaces allowed " +
	"(kernel.unprivileged_userns_clone / user.max_user_namespaces); see README.md, Requirements"

// namespacesSaid is set once a test has said NamespacesRefused with the log.
var namespacesSaid atomic.Bool

// startFailure explains a failed lxc-start. When the kernel refused the namespaces, every
// such test says NamespacesRefused, and only the first adds the end of its log; otherwise
// it is the error and the end of the log (the full log stays at logPath).
func startFailure(name string, err error, log []byte, logPath string) string {
	if bytes.Contains(log, []byte("Failed to clone a new set of namespaces")) {
		if namespacesSaid.CompareAndSwap(false, true) {
			return fmt.Sprintf("lxctest: start %s: %s\nlog (end; all of it in %s):\n%s", name, NamespacesRefused, logPath, tail(log, 1000))
		}
		return fmt.Sprintf("lxctest: start %s: %s", name, NamespacesRefused)
	}
	return fmt.Sprintf("lxctest: start %s: %v\nlog (end; all of it in %s):\n%s", name, err, logPath, tail(log, 3000))
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
