package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Names and addresses of the test network. Everything the suite creates carries the
// prefix plus a random run id, so parallel or left-over runs never collide; addresses
// exist only inside network namespaces the suite creates.
const (
	namePrefix = "gp-e2e-"
	subnet     = "10.77.0."
	bridgeIP   = subnet + "1" // the controller's address, in the bridge namespace
	agentPort  = "7420"
	netnsDir   = "/run/netns"
)

// fabric is one run's shared infrastructure: a work directory, the binaries, the fleet
// PKI, and a network namespace holding the bridge that every host's veth joins. The
// controller runs in that bridge namespace.
type fabric struct {
	id   string // random run id (6 hex digits)
	dir  string // /tmp/gp-e2e-<id>: short paths (unix sockets are limited to 108 bytes)
	bin  bins
	pki  string
	brNS string
	// ctlHere runs the controller in the test's own network namespace instead of brNS
	// (the PVE lab's host agent listens there, on 127.0.0.1).
	ctlHere bool

	mu     sync.Mutex
	nextIP int
	hosts  int
}

// newFabric sets up the run. Its cleanup removes the bridge namespace and the work
// directory; hosts and containers clean up after themselves first (cleanups run in
// reverse order).
func newFabric(t *testing.T) *fabric {
	t.Helper()
	reapStale(t)
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	f := &fabric{id: hex.EncodeToString(rnd[:]), nextIP: 11}
	f.dir = filepath.Join(os.TempDir(), namePrefix+f.id)
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("GPUPASS_E2E_KEEP") != "" {
			t.Logf("e2e: keeping %s (GPUPASS_E2E_KEEP)", f.dir)
			return
		}
		if err := os.RemoveAll(f.dir); err != nil {
			t.Errorf("e2e: cleanup: %v", err)
		}
	})
	f.bin = buildBinaries(t, filepath.Join(f.dir, "bin"))

	f.pki = filepath.Join(f.dir, "pki")
	f.gpupass(t, "pki", "init", "--dir", f.pki)
	f.gpupass(t, "pki", "issue", "--dir", f.pki, "--name", "controller")

	f.brNS = f.netnsName("br")
	addNetns(t, f.brNS)
	mustRun(t, "ip", "-n", f.brNS, "link", "set", "lo", "up")
	// A fixed MAC: a bridge otherwise takes the lowest MAC of its ports, which changes as
	// hosts come and go, and the agents' ARP entries for the controller go stale (every
	// session to the controller then stalls for half a minute).
	mustRun(t, "ip", "-n", f.brNS, "link", "add", "br0", "address", "02:77:00:00:00:01", "type", "bridge")
	mustRun(t, "ip", "-n", f.brNS, "addr", "add", bridgeIP+"/24", "dev", "br0")
	mustRun(t, "ip", "-n", f.brNS, "link", "set", "br0", "up")
	return f
}

func (f *fabric) netnsName(suffix string) string { return namePrefix + f.id + "-" + suffix }

// ctlNS is the network namespace the controller runs in.
func (f *fabric) ctlNS() string {
	if f.ctlHere {
		return ""
	}
	return f.brNS
}

// allocIP returns the next free host address on the bridge.
func (f *fabric) allocIP() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	ip := fmt.Sprintf("%s%d", subnet, f.nextIP)
	f.nextIP++
	return ip
}

// gpupass runs the controller binary outside any host (pki commands) and fails on error.
func (f *fabric) gpupass(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, f.bin.Controller, args...)
}

// addNetns creates a named network namespace and deletes it when the test ends.
func addNetns(t testing.TB, name string) {
	t.Helper()
	mustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("e2e: cleanup: ip netns del %s: %v: %s", name, err, out)
		}
	})
}

// cmdResult is what a command did.
type cmdResult struct {
	Stdout, Stderr string
	Code           int
	Elapsed        time.Duration
}

// run runs argv with a deadline; a command that cannot be started or times out is an error,
// a non-zero exit is not (see Code).
func run(ctx context.Context, timeout time.Duration, env []string, argv ...string) (cmdResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), env...)
	cmd.Stdin = nil
	cmd.WaitDelay = 10 * time.Second // generous: a loaded 2-core machine can starve the I/O copy
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	res := cmdResult{Stdout: o.String(), Stderr: e.String(), Elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("%s: no answer within %v (stderr: %s)", strings.Join(argv, " "), timeout, strings.TrimSpace(res.Stderr))
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
		return res, nil
	case err != nil:
		return res, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	return res, nil
}

// mustRun runs a command that must succeed and returns its standard output.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	res, err := run(context.Background(), 60*time.Second, nil, append([]string{name}, args...)...)
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	if res.Code != 0 {
		t.Fatalf("e2e: %s %s: exit %d: %s%s", name, strings.Join(args, " "), res.Code, res.Stderr, res.Stdout)
	}
	return res.Stdout
}

// inNetns argv runs argv inside the named network namespace. nsenter (unlike
// `ip netns exec`) keeps this process's mount namespace, so the pure cgroup2 mount stays
// in place.
func inNetns(ns string, argv ...string) []string {
	if ns == "" { // the test's own network namespace (the PVE lab's host, pvelab_linux_test.go)
		return argv
	}
	return append([]string{"nsenter", "--net=" + filepath.Join(netnsDir, ns), "--"}, argv...)
}

// dialFromNetns opens a TCP connection from inside the named network namespace: the
// socket is created on a thread that joined the namespace, and the thread is discarded
// afterwards (the goroutine exits while locked).
func dialFromNetns(ctx context.Context, ns, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// The thread joins the namespace for the dial and then goes back. It must not
		// die instead: the agents are started with Pdeathsig, which the kernel sends when
		// the thread that forked them exits, and this may be that thread.
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open own netns: %w", err)}
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(filepath.Join(netnsDir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open netns %s: %w", ns, err)}
			runtime.UnlockOSThread()
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
			runtime.UnlockOSThread()
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: the goroutine exits locked and the thread, still in ns, dies with it
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
