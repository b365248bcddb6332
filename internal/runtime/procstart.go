package runtime

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of /proc/<pid>/stat times: USER_HZ, 100 on every Linux architecture
// the agent supports.
const userHZ = 100

// startTicks returns field 22 of /proc/<pid>/stat: when the process started, in ticks since
// boot. With the PID it identifies one process instance across PID reuse.
func startTicks(procRoot string, pid int) (uint64, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "stat")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read process start: %w", err)
	}
	return parseStartTicks(b)
}

// parseStartTicks parses /proc/<pid>/stat. The command name (field 2) is in parentheses and
// may itself contain blanks and parentheses: fields are counted from the last ')'.
func parseStartTicks(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/<pid>/stat: no command name in %q", truncate(b))
	}
	f := strings.Fields(string(b[i+1:]))
	const idx = 22 - 3 // the first field after ')' is field 3
	if len(f) <= idx {
		return 0, fmt.Errorf("parse /proc/<pid>/stat: %d fields after the command name, want > %d", len(f), idx)
	}
	v, err := strconv.ParseUint(f[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc/<pid>/stat: start time %q: %w", f[idx], err)
	}
	return v, nil
}

// StartTicks is when pid started, in USER_HZ ticks since boot (CLOCK_BOOTTIME), from
// <procDir>/<pid>/stat; the guest channel uses it to tell a peer from a process that got
// its pid later.
func StartTicks(procDir string, pid int) (uint64, error) { return startTicks(procDir, pid) }

// UserHZ is the unit of StartTicks per second.
const UserHZ = userHZ

// processStart returns the wall-clock start time of pid: now - uptime + start ticks. Its
// error is about 20 ms (both /proc values have 10 ms resolution).
func processStart(procRoot string, pid int, now time.Time) (time.Time, error) {
	ticks, err := startTicks(procRoot, pid)
	if err != nil {
		return time.Time{}, err
	}
	b, err := os.ReadFile(filepath.Join(procRoot, "uptime"))
	if err != nil {
		return time.Time{}, fmt.Errorf("read uptime: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return time.Time{}, fmt.Errorf("parse %s: empty", filepath.Join(procRoot, "uptime"))
	}
	up, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse %s: %w", filepath.Join(procRoot, "uptime"), err)
	}
	boot := now.Add(-time.Duration(up * float64(time.Second)))
	return boot.Add(time.Duration(ticks) * time.Second / userHZ), nil
}

func truncate(b []byte) []byte {
	if len(b) > 80 {
		return b[:80]
	}
	return b
}
