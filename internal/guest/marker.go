package guest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gpupass/internal/atomicfile"
	pb "gpupass/proto/gpupass/v1"
)

// The running agent's own state inside the container, for apps and `wait`: a plain
// directory (never the host's socket directory, which lives at /dev/gpupass) on the
// container's /run, so a reboot clears it.
const (
	// DefaultStateDir holds ReadyFile, StatusFile and PIDFile.
	DefaultStateDir = "/run/gpupass"
	// ReadyFile exists exactly while the agent's latest verdict is ready.
	ReadyFile = "ready"
	// StatusFile is the latest verdict in the form of `--once -o json` (JSONReport).
	StatusFile = "status.json"
	// PIDFile names the running agent's PID (decimal), so that `wait` knows it runs.
	PIDFile = "agent.pid"
)

// Marker keeps the state directory true: ReadyFile exists exactly while the latest
// verdict says ready, StatusFile says why not. Only the running agent writes it.
type Marker struct {
	dir   string
	ready bool
	last  []byte
}

// NewMarker makes dir (0755) and writes the PID file. It refuses a directory that holds
// the host's socket (agent.sock): that is the host's directory, bind-mounted by a config
// written before the socket moved to /dev/gpupass, not this container's own.
func NewMarker(dir string, pid int) (*Marker, error) {
	if _, err := os.Lstat(filepath.Join(dir, "agent.sock")); err == nil {
		return nil, fmt.Errorf("make the ready marker in %s: it holds the host's agent.sock (the container was started with the old /run/gpupass mount): restart the container so that the socket is at /dev/gpupass", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make the ready marker: %w", err)
	}
	m := &Marker{dir: dir}
	if err := os.Remove(m.readyPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("make the ready marker: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("make the ready marker: %w", err)
	}
	return m, nil
}

func (m *Marker) readyPath() string { return filepath.Join(m.dir, ReadyFile) }

// Update records a verdict. Becoming ready writes the status before the marker appears;
// leaving ready removes the marker first, so that a reader never sees the marker beside a
// not-ready status.
func (m *Marker) Update(r *pb.GuestReport) error {
	j := ToJSON(r)
	j.Time = "" // the status changes with the verdict, not with every heartbeat
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("update the ready marker: %w", err)
	}
	b = append(b, '\n')
	if !r.GetReady() {
		if err := m.setReady(false); err != nil {
			return err
		}
	}
	if !bytes.Equal(b, m.last) {
		if err := atomicfile.Write(filepath.Join(m.dir, StatusFile), b, 0o644); err != nil {
			return fmt.Errorf("update the ready marker: %w", err)
		}
		m.last = b
	}
	if r.GetReady() {
		return m.setReady(true)
	}
	return nil
}

func (m *Marker) setReady(ready bool) error {
	if ready == m.ready {
		return nil
	}
	var err error
	if ready {
		err = atomicfile.Write(m.readyPath(), nil, 0o644)
	} else if err = os.Remove(m.readyPath()); errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("update the ready marker: %w", err)
	}
	m.ready = ready
	return nil
}

// Close removes the marker and the PID file: an agent that stops no longer keeps the
// marker true, so it must not claim anything.
func (m *Marker) Close() error {
	err := m.setReady(false)
	if e := os.Remove(filepath.Join(m.dir, PIDFile)); e != nil && !errors.Is(e, fs.ErrNotExist) {
		err = errors.Join(err, fmt.Errorf("remove the pid file: %w", e))
	}
	return err
}

// RunningAgent returns the PID of the guest agent that keeps dir, or 0 when none runs:
// the PID file names a live process whose command is the guest agent.
func RunningAgent(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, PIDFile))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	comm, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "comm"))
	// comm is the executable's name cut to 15 bytes: "gpupass-guest-a".
	if err != nil || !strings.HasPrefix("gpupass-guest-agent", strings.TrimSpace(string(comm))) || len(strings.TrimSpace(string(comm))) < 8 {
		return 0
	}
	return pid
}

// ReadStatus reads the running agent's latest verdict from dir.
func ReadStatus(dir string) (JSONReport, error) {
	var j JSONReport
	b, err := readLimited(filepath.Join(dir, StatusFile), MaxReportFrame)
	if err != nil {
		return j, fmt.Errorf("read the agent's status: %w", err)
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return j, fmt.Errorf("read the agent's status %s: %w", filepath.Join(dir, StatusFile), err)
	}
	return j, nil
}
