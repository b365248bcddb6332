package pvelab

// The lab for programs that are not tests (make bench): the same probe, pct runner and
// clean-up as the test helpers, returning errors instead of failing a test.

// Probe says why the lab is unusable from this process (nil when it is usable): pct
// installed, /etc/pve mounted by pmxcfs and PVE choosing cgroup mode 2 (pure cgroup2) in
// this mount namespace, which the caller made private (scripts/bench.sh does).
func Probe() error {
	lab.once.Do(func() { lab.pct, lab.mode, lab.err = probe(false) })
	return lab.err
}

// SetupHint says how to set the lab up.
const SetupHint = setupHint

// RunPct runs the real pct with args and returns what happened, whatever its exit code; an
// error only when pct cannot be run at all.
func RunPct(args ...string) (Result, error) { return pct(args...) }

// DestroyCT stops container id if it runs, clears its lock and destroys it with its volume;
// nil when there is no such container.
func DestroyCT(id int) error { return destroyCT(id) }
