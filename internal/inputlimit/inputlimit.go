// Package inputlimit reads input files (fleet.yaml, host-agent.yaml, container configs, JSON
// plans) with a size bound checked before anything is parsed: an oversized file is refused
// at once, after reading at most the bound, so a huge or endless input costs neither time nor
// memory.
package inputlimit

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Bounds of the inputs gpupass reads. Real files are far below them: a PVE container config
// is a few KiB (PVE itself refuses configs over 1 MiB when it writes them), a fleet of
// thousands of containers a few hundred KiB.
const (
	FleetFile      = 8 << 20  // fleet.yaml
	HostConfigFile = 1 << 20  // host-agent.yaml
	ContainerConf  = 1 << 20  // /etc/pve/lxc/<id>.conf, <lxcpath>/<name>/config
	PlanJSON       = 64 << 20 // gpupass plan -o json, read back by apply --plan
	PhoenixJSON    = 64 << 20 // phoenix_lxc_configs.json (gpupass import phoenix)
)

// ErrTooLarge is wrapped by the error for an input over its bound.
var ErrTooLarge = errors.New("too large")

// ReadFile reads path if it holds at most limit bytes.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > limit {
		return nil, tooLarge(path, fi.Size(), limit)
	}
	return Read(f, path, limit)
}

// Read reads r (named name in the error) if it gives at most limit bytes.
func Read(r io.Reader, name string, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, tooLarge(name, -1, limit)
	}
	return b, nil
}

func tooLarge(name string, size, limit int64) error {
	if size >= 0 {
		return fmt.Errorf("%s: %w: %s, the limit is %s; is it the right file?", name, ErrTooLarge, human(size), human(limit))
	}
	return fmt.Errorf("%s: %w: more than %s; is it the right file?", name, ErrTooLarge, human(limit))
}

func human(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}
