package pvelab

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"gpupass/internal/gpu"
	"gpupass/internal/testenv"
)

// GPUHost is a simulated GPU host laid over the real machine for one test.
type GPUHost struct {
	// Nodes are the stand-in device nodes, at their real /dev paths.
	Nodes []gpu.SimNode
	// Fixture is the directory gpu.WriteSimulatedHost wrote (its proc/ is bound over /proc).
	Fixture string
}

// SimulateGPUHost makes this machine look like an NVIDIA GPU host to PVE and to a host agent
// running with host_root "/", beside the real /etc/pve:
//   - the stand-in nodes of gpu.SimulatedNodes(opts) at their real paths (/dev/nvidia0,
//     /dev/nvidiactl, /dev/nvidia-uvm, ...), where PVE's hooks stat devN entries
//     (pve-container:src/PVE/LXC.pm) and lxc binds mount entries from;
//   - /proc/devices and /proc/driver replaced, in this test binary's private mount namespace
//     only, by bind mounts of the fixture gpu.WriteSimulatedHost wrote.
//
// /dev is one filesystem for every mount namespace, so the nodes are visible machine-wide
// while the test runs: an exclusive lock (/run/gpupass-pvelab/gpuhost.lock) serialises the
// tests that simulate a GPU host, across test binaries, and cleanup removes the nodes. It
// refuses to run where a real NVIDIA driver is loaded.
func SimulateGPUHost(t testing.TB, opts gpu.SimOptions) *GPUHost {
	t.Helper()
	Require(t)
	if _, err := os.Stat("/proc/driver/nvidia/version"); err == nil {
		if _, err := os.Stat(gpu.SimulatedMarker); err != nil {
			testenv.Skip(t, "a real NVIDIA driver is loaded here: the lab does not lay a simulated GPU host over it")
		}
	}
	lock := lockFile(t, filepath.Join(RunDir, "gpuhost.lock"))
	t.Cleanup(func() { lock.Close() })

	fix := t.TempDir()
	if err := gpu.WriteSimulatedHost(fix, opts); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(fix, "proc/driver"), 0o755); err != nil {
		t.Fatalf("pvelab: %v", err)
	}
	h := &GPUHost{Nodes: gpu.SimulatedNodes(opts), Fixture: fix}
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
	for _, p := range []string{"/proc/devices", "/proc/driver"} {
		bind(t, filepath.Join(fix, p), p)
	}
	t.Logf("pvelab: simulated GPU host: %d stand-in nodes in /dev, /proc/devices and /proc/driver bound from %s", len(h.Nodes), fix)
	return h
}

// bind mounts src on dst for the rest of the test (this mount namespace only).
func bind(t testing.TB, src, dst string) {
	t.Helper()
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("pvelab: bind %s on %s: %v", src, dst, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dst, unix.MNT_DETACH); err != nil {
			t.Errorf("pvelab: unmount %s: %v", dst, err)
		}
	})
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
