package observe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Cgroup returns the cgroup v2 path of pid (the "0::" line of <procRoot>/<pid>/cgroup).
func Cgroup(procRoot string, pid int) (string, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "cgroup")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", p, ErrNoProcess)
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return rest, nil
		}
	}
	return "", fmt.Errorf("%s: no cgroup v2 (0::) line", p)
}

// ContainerOf returns the container a cgroup v2 path belongs to: plain LXC puts a
// container's processes under /lxc.payload.<name>, Proxmox VE under /lxc/<vmid> (its
// lxc.cgroup.dir.container), each possibly with sub-cgroups below. The monitor cgroups
// (lxc.monitor.<name>, lxc.monitor/<vmid>) are not the container.
func ContainerOf(cgroupPath string) (string, bool) {
	p := strings.TrimPrefix(cgroupPath, "/")
	first, rest, _ := strings.Cut(p, "/")
	if name, ok := strings.CutPrefix(first, "lxc.payload."); ok && name != "" {
		return name, true
	}
	if first == "lxc" {
		name, _, _ := strings.Cut(rest, "/")
		if name != "" {
			return name, true
		}
	}
	return "", false
}
