package e2e

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/lxctest"
)

// ownerFile names the process that owns a run's work directory.
const ownerFile = "owner.pid"

// reapStale removes what earlier runs left behind when their test process was killed
// (cleanups never ran): their containers and LXC monitors (through cgroup.kill of their
// cgroups), host agents, network namespace files and work directories. A run whose owner
// still lives is left alone, as is a directory without an owner younger than 10 minutes.
func reapStale(t *testing.T) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*"))
	for _, d := range dirs {
		id := strings.TrimPrefix(filepath.Base(d), namePrefix)
		if b, err := os.ReadFile(filepath.Join(d, ownerFile)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && syscall.Kill(pid, 0) == nil {
				continue
			}
		} else if fi, err := os.Stat(d); err != nil || time.Since(fi.ModTime()) < 10*time.Minute {
			continue
		}
		t.Logf("e2e: reaping the left-overs of run %s", id)
		var cgroups []string
		for _, pat := range []string{"lxc.payload.gpe" + id + "-*", "lxc.monitor.gpe" + id + "-*"} {
			m, _ := filepath.Glob(filepath.Join(lxctest.CgroupRoot, pat))
			cgroups = append(cgroups, m...)
		}
		for _, cg := range cgroups {
			_ = os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0)
		}
		killMentioning(d)
		time.Sleep(200 * time.Millisecond)
		for _, cg := range cgroups {
			removeCgroup(cg)
		}
		ns, _ := filepath.Glob(filepath.Join(netnsDir, namePrefix+id+"-*"))
		for _, n := range ns {
			_ = unix.Unmount(n, unix.MNT_DETACH)
			_ = os.Remove(n)
		}
		if err := os.RemoveAll(d); err != nil {
			t.Logf("e2e: reap %s: %v", d, err)
		}
	}
}

// killMentioning SIGKILLs every process whose command line mentions dir (host agents,
// commands they were running).
func killMentioning(dir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	self := os.Getpid()
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != self {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeCgroup removes a cgroup directory and its children, deepest first.
func removeCgroup(cg string) {
	var dirs []string
	_ = filepath.WalkDir(cg, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}
