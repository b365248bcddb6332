package hostdriver

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

// Running is what a running container got from the driver hook at its start (its Marker,
// read through /proc/<pid>/root): nothing (Present false) for a container started without
// the hook.
type Running struct {
	Present bool
	Version string
}

// ReadRunning reads the marker of the container whose init is pid, as the host sees it.
func ReadRunning(procRoot string, pid int) (Running, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "root", Marker))
	if errors.Is(err, os.ErrNotExist) {
		return Running{}, nil
	}
	if err != nil {
		return Running{}, fmt.Errorf("read %s of the running container: %w", Marker, err)
	}
	r := Running{Present: true}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "version="); ok {
			r.Version = v
		}
	}
	return r, nil
}

// Forecast is what a host driver change to a version does to one container (gpupass
// plan --driver-version): Realigns for driver: host (the hook provides the new
// userspace at the next start), else whether the container's own userspace matches.
type Forecast struct {
	Realigns bool
	Breaks   bool
	Text     string
}

// ForecastUpgrade judges one container for a host driver change to version to.
// ownUserspace is the userspace version its guest reported ("" when unknown).
func ForecastUpgrade(wantHost bool, ownUserspace, to string) Forecast {
	switch {
	case wantHost:
		return Forecast{Realigns: true, Text: "realigns by itself: driver: host gets the " + to + " userspace at its next start (gpupass apply restarts it)"}
	case ownUserspace == "":
		return Forecast{Text: "no userspace driver reported (none installed, or no guest report yet): after the change it needs the " + to + " userspace, or driver: host"}
	case ownUserspace == to:
		return Forecast{Text: "keeps matching: its own userspace is " + to}
	}
	return Forecast{Breaks: true, Text: fmt.Sprintf("would break: its own userspace is %s, the module would be %s (\"Driver/library version mismatch\"); fix: driver: host in fleet.yaml, or install the %s userspace in the container", ownUserspace, to, to)}
}
