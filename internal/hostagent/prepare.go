package hostagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"gpupass/internal/gpu"
	"gpupass/internal/runner"
)

// Prepare makes sure the nodes GPU containers need exist before any container starts:
// /dev/nvidia-uvm and /dev/nvidia-uvm-tools (and the MIG capability nodes where MIG is
// on). It runs nvidia-modprobe -u -c=0 where present, else mknods them from the majors
// /proc/devices gives now. When the driver is not loaded it says so; GPU containers are
// then reported not ready with that reason.
func (a *Agent) Prepare(ctx context.Context, r runner.Runner) error {
	a.persist.mu.Lock()
	a.persist.runner = r // host.Inventory reads the persistence mode with it
	a.persist.mu.Unlock()
	err := a.prepare(ctx, r)
	a.mu.Lock()
	a.prepErr = err
	a.mu.Unlock()
	return err
}

func (a *Agent) prepare(ctx context.Context, r runner.Runner) error {
	inv, err := a.discover()
	if err != nil {
		if errors.Is(err, gpu.ErrNoDriver) {
			return fmt.Errorf("nvidia kernel driver not loaded on this host: %w", err)
		}
		if inv == nil {
			return err
		}
	}
	root := a.cfg.HostRoot
	if root == "" || root == "/" {
		if path, lerr := exec.LookPath("nvidia-modprobe"); lerr == nil {
			if _, rerr := r.Run(ctx, path, "-u", "-c=0"); rerr != nil {
				a.log.WithError(rerr).Warn("nvidia-modprobe failed; creating nodes from /proc/devices")
			} else if inv, err = a.discover(); err != nil && inv == nil {
				return err
			}
		}
	}
	uvm, ok := inv.Majors[gpu.MajorUVM]
	if !ok {
		return errors.New("nvidia-uvm is not loaded (no nvidia-uvm major in /proc/devices): load it with nvidia-modprobe -u -c=0 or modprobe nvidia-uvm")
	}
	for _, n := range []struct {
		path  string
		minor uint32
	}{{gpu.PathUVM, 0}, {gpu.PathUVMTools, 1}} {
		if err := ensureNode(inv, n.path, uvm, n.minor, 0o666); err != nil {
			return err
		}
	}
	if caps, ok := inv.Majors[gpu.MajorCaps]; ok {
		for name, c := range migCaps(root) {
			if err := ensureNode(inv, filepath.Join(gpu.DirCaps, name), caps, c.minor, c.mode); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureNode creates the node (with mode) when it is missing, or replaces one whose major
// is stale.
func ensureNode(inv *gpu.Inventory, path string, major, minor uint32, mode os.FileMode) error {
	// An existing char node whose major is current is kept whatever its minor (a
	// simulated host's stand-ins are 10:229 and 10:200); missing or stale-major nodes are
	// (re)created with the driver's minors.
	if n, ok := inv.Nodes[path]; ok && n.Char && n.Major == major {
		return nil
	}
	host := inv.HostPath(path)
	if err := os.MkdirAll(filepath.Dir(host), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(host), err)
	}
	_ = os.Remove(host)
	if err := gpu.Mknod(host, major, minor, mode); err != nil {
		return fmt.Errorf("create node %s (%d:%d): %w", host, major, minor, err)
	}
	return nil
}

// migCap is one MIG capability node as the driver describes it.
type migCap struct {
	minor uint32
	mode  os.FileMode
}

// defaultCapMode is used when a capability file names no mode: the strictest the driver
// uses (its MIG config capability), never 0666.
const defaultCapMode os.FileMode = 0o400

// migCaps reads the MIG capability files (/proc/driver/nvidia/capabilities/mig/*:
// "DeviceFileMinor: N" and "DeviceFileMode: M", M in decimal: 256 = 0400 for config, 292 =
// 0444 for monitor on the GPU test hosts) and names their nodes nvidia-cap<N>. The node
// gets the mode the driver asks for, as nvidia-modprobe -c would make it: a caps node
// lets whoever opens it reconfigure or watch MIG.
func migCaps(root string) map[string]migCap {
	dir := filepath.Join(root, "proc/driver/nvidia/capabilities/mig")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	out := map[string]migCap{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		c, ok := parseCapFile(string(b))
		if ok {
			out[fmt.Sprintf("nvidia-cap%d", c.minor)] = c
		}
	}
	return out
}

// parseCapFile reads one capability file; ok is false without a DeviceFileMinor.
func parseCapFile(s string) (c migCap, ok bool) {
	c.mode = defaultCapMode
	for _, line := range strings.Split(s, "\n") {
		k, v, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err != nil {
			continue
		}
		switch strings.TrimSpace(k) {
		case "DeviceFileMinor":
			c.minor, ok = uint32(n), true
		case "DeviceFileMode":
			c.mode = os.FileMode(n).Perm()
		}
	}
	return c, ok
}
