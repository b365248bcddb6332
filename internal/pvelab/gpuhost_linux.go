package pvelab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
)

// GPUHost is a simulated GPU host laid over the real machine for one test.
type GPUHost struct {
	// Nodes are the stand-in device nodes, at their real /dev paths.
	Nodes []gpu.SimNode
	// Root is the host_root to give a host agent: proc/ holds the fixture's devices and
	// driver files, and dev, etc/pve, var/lib/lxc and run are symlinks to the real ones.
	Root string
}

// SimulateGPUHost makes this machine look like an NVIDIA GPU host to PVE and to a host agent
// beside the real /etc/pve:
//   - the stand-in nodes of gpu.SimulatedNodes(opts) at their real paths (/dev/nvidia0,
//     /dev/nvidiactl, /dev/nvidia-uvm, ...), where PVE stats devN entries
//     (pve-container:src/PVE/LXC.pm, update_lxc_config) and lxc binds mount entries from;
//   - a host root (GPUHost.Root) whose proc/ is the gpu.WriteSimulatedHost fixture
//     (devices, driver/nvidia) and whose dev, etc/pve, var/lib/lxc and run lead to the real
//     ones, so the agent reads the simulated driver and the real PVE files (the agent takes
//     the containers' processes from the real /proc when root/proc is not a procfs).
//
// Binding the fixture over the real /proc/devices and /proc/driver instead does not work:
// with anything mounted over procfs entries, the kernel refuses a fresh procfs mount in a
// user namespace (fs/namespace.c, mount_too_revealing), so no unprivileged container could
// start. /dev is one filesystem for every mount namespace, so the nodes are visible
// machine-wide while the test runs: an exclusive lock (/run/gpupass-pvelab/gpuhost.lock)
// serialises the tests that simulate a GPU host, across test binaries, and cleanup removes
// the nodes. It refuses to run where a real NVIDIA driver is loaded.
func SimulateGPUHost(t testing.TB, opts gpu.SimOptions) *GPUHost {
	t.Helper()
	Require(t)
	if _, err := os.Stat("/proc/driver/nvidia"); err == nil {
		testenv.Skip(t, "a real NVIDIA driver is loaded here: the lab does not lay a simulated GPU host over it")
	}
	lock := lockFile(t, filepath.Join(RunDir, "gpuhost.lock"))
	t.Cleanup(func() { lock.Close() })

	fix := t.TempDir()
	if err := gpu.WriteSimulatedHost(fix, opts); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	// Traversable by unprivileged containers' mapped root: a raw-style mount entry names
	// <root>/dev/nvidia0 as its source.
	root := lxctest.TempDir(t)
	if err := os.Rename(filepath.Join(fix, "proc"), filepath.Join(root, "proc")); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	for _, p := range []string{"dev", "etc/pve", "var/lib/lxc", "run"} {
		link := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
			t.Fatalf("pvelab: %v", err)
		}
		if err := os.Symlink("/"+p, link); err != nil {
			t.Fatalf("pvelab: %v", err)
		}
	}
	h := &GPUHost{Nodes: gpu.SimulatedNodes(opts), Root: root}
	capsDir := false
	if _, err := os.Stat(gpu.DirCaps); errors.Is(err, os.ErrNotExist) {
		capsDir = true
	}
	t.Cleanup(func() {
		for _, n := range h.Nodes {
			if err := os.Remove(n.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("pvelab: remove stand-in node: %v", err)
			}
		}
		if capsDir {
			_ = os.Remove(gpu.DirCaps)
		}
	})
	for _, n := range h.Nodes {
		if err := gpu.Mknod(n.Path, n.Major, n.Minor, n.Mode); err != nil {
			t.Fatalf("pvelab: stand-in GPU node: %v", err)
		}
	}
	t.Logf("pvelab: simulated GPU host: %d stand-in nodes in /dev; host root %s (proc/ from the fixture, the rest the real paths)", len(h.Nodes), root)
	return h
}

// lockFile opens path and takes an exclusive flock on it, waiting for other holders.
func lockFile(t testing.TB, path string) *os.File {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("pvelab: open lock: %v", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("pvelab: lock %s: %v", path, err)
	}
	return f
}

var nodeSeq atomic.Int64

// Node makes a char device node major:minor (mode 0666) under /dev with a name of its own,
// for tests that need a stand-in device whose path PVE can stat (devN) or lxc can bind:
// /dev, unlike /run or /tmp, allows device nodes on every machine. It is removed when the
// test ends.
func Node(t testing.TB, major, minor uint32) string {
	t.Helper()
	p := fmt.Sprintf("/dev/gpupass-pvelab-%d-%d", os.Getpid(), nodeSeq.Add(1))
	if err := gpu.Mknod(p, major, minor, 0o666); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	t.Cleanup(func() { os.Remove(p) })
	return p
}
