package guestchan

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gpupass/internal/runtime"
)

// Generation names one life of a container: its init's host pid and the init's start
// time (clock ticks since boot, /proc/<pid>/stat field 22). A restart makes a new one,
// even when the new init gets the same pid. Each guest session carries the generation of
// the container it was accepted from, and so does every report it sends: a report from
// the guest's previous life is told from one of the running container.
type Generation struct {
	InitPID    int
	StartTicks uint64
}

// IsZero says the generation is unknown.
func (g Generation) IsZero() bool { return g.InitPID == 0 }

func (g Generation) String() string {
	if g.IsZero() {
		return "unknown"
	}
	return fmt.Sprintf("init %d started at tick %d", g.InitPID, g.StartTicks)
}

// GenerationOf is the generation of the container whose init is initPID now; procRoot is
// the host root ("/": /proc/<pid>/stat is read below it).
func GenerationOf(procRoot string, initPID int) (Generation, error) {
	t, err := runtime.StartTicks(filepath.Join(procRoot, "proc"), initPID)
	if err != nil {
		return Generation{}, fmt.Errorf("generation of init %d: %w", initPID, err)
	}
	return Generation{InitPID: initPID, StartTicks: t}, nil
}

// maxInitDepth bounds the walk up the parent chain.
const maxInitDepth = 64

// ContainerInit is the default Config.PeerGeneration: the generation of the container pid
// runs in. Its init is the process of pid's pid namespace whose pid there is 1 (the last
// field of /proc/<pid>/status NSpid). The parent chain cannot tell: a process attached
// from the host (pct exec, lxc-attach) is a child of a host process, and its pid namespace
// is still the container's.
func ContainerInit(procRoot string, pid int32) (Generation, error) {
	proc := filepath.Join(procRoot, "proc")
	ns, err := os.Readlink(filepath.Join(proc, strconv.Itoa(int(pid)), "ns", "pid"))
	if err != nil {
		return Generation{}, fmt.Errorf("find init of pid %d: %w", pid, err)
	}
	// Cheap first: up the parent chain while it stays in the namespace (a guest agent that
	// its init started is a child or grandchild of it).
	cur := pid
	for i := 0; i < maxInitDepth; i++ {
		dir := filepath.Join(proc, strconv.Itoa(int(cur)))
		if nsPIDIsOne(filepath.Join(dir, "status")) {
			return GenerationOf(procRoot, int(cur))
		}
		ppid, err := parentOf(procRoot, cur)
		if err != nil || ppid <= 0 {
			break
		}
		if other, err := os.Readlink(filepath.Join(proc, strconv.Itoa(int(ppid)), "ns", "pid")); err != nil || other != ns {
			break
		}
		cur = ppid
	}
	// Attached from the host: find the namespace's pid 1 among all processes.
	ents, err := os.ReadDir(proc)
	if err != nil {
		return Generation{}, fmt.Errorf("find init of pid %d: %w", pid, err)
	}
	for _, de := range ents {
		n, err := strconv.Atoi(de.Name())
		if err != nil {
			continue
		}
		if other, err := os.Readlink(filepath.Join(proc, de.Name(), "ns", "pid")); err != nil || other != ns {
			continue
		}
		if nsPIDIsOne(filepath.Join(proc, de.Name(), "status")) {
			return GenerationOf(procRoot, n)
		}
	}
	return Generation{}, fmt.Errorf("find init of pid %d: no process is pid 1 of its pid namespace %s", pid, ns)
}

// nsPIDIsOne says whether the status file's NSpid line ends in 1: the process is the init
// of its innermost pid namespace.
func nsPIDIsOne(status string) bool {
	b, err := os.ReadFile(status)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			return len(f) > 0 && f[len(f)-1] == "1"
		}
	}
	return false
}

// parentOf reads field 4 of /proc/<pid>/stat (after the command name in parentheses,
// which may itself hold blanks and parentheses).
func parentOf(procRoot string, pid int32) (int32, error) {
	p := filepath.Join(procRoot, "proc", strconv.Itoa(int(pid)), "stat")
	b, err := os.ReadFile(p)
	if err != nil {
		return 0, fmt.Errorf("read parent of pid %d: %w", pid, err)
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("read parent of pid %d: cannot parse %s", pid, p)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, fmt.Errorf("read parent of pid %d: cannot parse %s", pid, p)
	}
	ppid, err := strconv.ParseInt(f[1], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("read parent of pid %d: %w", pid, err)
	}
	return int32(ppid), nil
}
