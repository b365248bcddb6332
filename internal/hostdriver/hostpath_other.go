//go:build !linux

package hostdriver

// hostPath is where host path p is under root (links are followed as this machine
// follows them: only Linux resolves them inside root).
func hostPath(root, p string) (string, error) { return join(root, p), nil }
