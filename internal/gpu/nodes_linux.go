package gpu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ScanNodes lists root/dev/nvidia* and root/dev/nvidia-caps/* with os.Lstat: char
// devices with their numbers, and anything else with Char false.
func ScanNodes(root string) (map[string]Node, error) {
	out := map[string]Node{}
	dev := filepath.Join(root, "dev")
	ents, err := os.ReadDir(dev)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "nvidia") {
			continue
		}
		hostPath := "/dev/" + e.Name()
		if hostPath == DirCaps && e.IsDir() {
			caps, err := os.ReadDir(filepath.Join(dev, e.Name()))
			if err != nil {
				return nil, err
			}
			for _, c := range caps {
				n, err := statNode(root, DirCaps+"/"+c.Name())
				if err != nil {
					return nil, err
				}
				out[n.Path] = n
			}
			continue
		}
		n, err := statNode(root, hostPath)
		if err != nil {
			return nil, err
		}
		out[n.Path] = n
	}
	return out, nil
}

func statNode(root, hostPath string) (Node, error) {
	fi, err := os.Lstat(filepath.Join(root, hostPath))
	if err != nil {
		return Node{}, fmt.Errorf("stat %s: %w", hostPath, err)
	}
	n := Node{Path: hostPath, Mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode()&os.ModeCharDevice != 0 {
		n.Char = true
		n.Major, n.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	return n, nil
}
