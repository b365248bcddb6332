// Package journal is the host agent's write-ahead record of every apply: one JSON-lines
// file per operation under <state_dir>/journal, fsynced at each step. The first line is
// the intent (the config's digest before, the digest the apply will write and the backup
// of the old bytes), written before anything changes, so that a restarted agent can tell
// from the file's digest alone whether the write happened. Finished operations move to
// done/, unreadable ones to quarantine/, and both they and the config backups are bounded
// (the last Keep per container, and everything younger than KeepFor).
package journal

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gpupass/internal/atomicfile"
)

// Steps of one apply, in the order they happen.
const (
	StepBegin      = "begin"       // the intent: nothing written yet
	StepWritten    = "written"     // the config holds the After bytes
	StepRestart    = "restart"     // a restart (or start) was issued
	StepReady      = "ready"       // the guest reported ready
	StepNotReady   = "not-ready"   // it did not; Detail says why
	StepRollback   = "rollback"    // undoing began; Detail says why
	StepUndo       = "undo"        // one undo ran; Detail names it, Error says how it failed
	StepRolledBack = "rolled-back" // every undo succeeded
	StepDone       = "done"        // Outcome says how it ended
)

// Outcomes recorded by StepDone.
const (
	OutcomeDesired = "as-desired"
	OutcomeAsWas   = "as-it-was"
	OutcomeFailed  = "failed"
	// OutcomeConflict: the config was changed by someone else while the operation was
	// unfinished; gpupass left it as it found it.
	OutcomeConflict = "conflict"
)

// MaxEntryBytes bounds one journal line; a longer line is a broken journal.
const MaxEntryBytes = 1 << 20

// Entry is one line of an operation's journal file.
type Entry struct {
	Op         string          `json:"op"`
	Step       string          `json:"step"`
	Time       time.Time       `json:"time"`
	Container  string          `json:"container"`
	Spec       json.RawMessage `json:"spec,omitempty"`
	WasRunning bool            `json:"was_running,omitempty"`
	// Digest is the config's digest before the apply (the begin entry).
	Digest string `json:"digest,omitempty"`
	// After is the digest the apply will write ("" or Digest: it writes nothing).
	After string `json:"after,omitempty"`
	// Backup holds the config's bytes before the apply.
	Backup string `json:"backup,omitempty"`
	// GuestDirCreated says the apply created the guest socket directory.
	GuestDirCreated bool   `json:"guest_dir_created,omitempty"`
	Outcome         string `json:"outcome,omitempty"`
	Detail          string `json:"detail,omitempty"`
	Error           string `json:"error,omitempty"`
}

// Journal is the journal directory.
type Journal struct {
	Dir string
	Now func() time.Time
	// Keep and KeepFor bound done/ (and, through Prune's callers, the backups): an entry is
	// removed only when it is not among the last Keep of its container and older than
	// KeepFor. Keep <= 0 keeps everything.
	Keep    int
	KeepFor time.Duration
}

// Op is one journaled operation.
type Op struct {
	j         *Journal
	ID        string
	Container string
	Path      string
}

func (j *Journal) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

// DoneDir holds finished operations.
func (j *Journal) DoneDir() string { return filepath.Join(j.Dir, "done") }

// QuarantineDir holds journal files that could not be read.
func (j *Journal) QuarantineDir() string { return filepath.Join(j.Dir, "quarantine") }

// ConflictDir holds the latest conflict of each container until an apply resolves it.
func (j *Journal) ConflictDir() string { return filepath.Join(j.Dir, "conflicts") }

const stampLayout = "20060102T150405.000000"

// Begin journals the intent of an apply to container (fsynced) before anything is
// written. intent carries Spec, WasRunning, Digest, After, Backup and GuestDirCreated.
func (j *Journal) Begin(container string, intent Entry) (*Op, error) {
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := fmt.Sprintf("%s-%s-%s", j.now().UTC().Format(stampLayout), Sanitize(container), hex.EncodeToString(rnd[:]))
	op := &Op{j: j, ID: id, Container: container, Path: filepath.Join(j.Dir, id+".jsonl")}
	intent.Step = StepBegin
	if err := op.append(intent); err != nil {
		return nil, err
	}
	return op, syncDir(j.Dir)
}

// Sanitize makes a container id safe as part of a file name.
func Sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// Step appends a step. A nil Op (an apply that changes nothing journals nothing) does
// nothing.
func (op *Op) Step(step string, e Entry) error {
	if op == nil {
		return nil
	}
	e.Step = step
	return op.append(e)
}

// Done records the outcome and moves the file to done/. A conflict is also recorded in
// conflicts/<container>.json; any other outcome clears it (an apply went through since).
func (op *Op) Done(outcome, detail string) error {
	if op == nil {
		return nil
	}
	if err := op.append(Entry{Step: StepDone, Outcome: outcome, Detail: detail}); err != nil {
		return err
	}
	j := op.j
	if err := os.MkdirAll(j.DoneDir(), 0o700); err != nil {
		return fmt.Errorf("create journal done dir: %w", err)
	}
	if err := os.Rename(op.Path, filepath.Join(j.DoneDir(), filepath.Base(op.Path))); err != nil {
		return fmt.Errorf("finish journal %s: %w", op.Path, err)
	}
	cf := filepath.Join(j.ConflictDir(), Sanitize(op.Container)+".json")
	if outcome != OutcomeConflict {
		if err := os.Remove(cf); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("clear conflict %s: %w", cf, err)
		}
		return nil
	}
	b, _ := json.Marshal(Entry{Op: op.ID, Container: op.Container, Step: StepDone, Outcome: outcome, Detail: detail, Time: j.now().UTC()})
	if err := os.MkdirAll(j.ConflictDir(), 0o700); err != nil {
		return fmt.Errorf("record conflict: %w", err)
	}
	return atomicfile.Write(cf, b, 0o600)
}

func (op *Op) append(e Entry) error {
	e.Op = op.ID
	e.Container = op.Container
	e.Time = op.j.now().UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode journal entry: %w", err)
	}
	f, err := os.OpenFile(op.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", op.Path, err)
	}
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("write journal %s: %w", op.Path, err)
	}
	return nil
}

// Pending is an operation whose journal has no done step.
type Pending struct {
	Op      *Op
	Entries []Entry
}

// Intent is the begin entry.
func (p Pending) Intent() Entry { return p.Entries[0] }

// Last is the last step reached.
func (p Pending) Last() Entry { return p.Entries[len(p.Entries)-1] }

// Has reports whether step was reached.
func (p Pending) Has(step string) (Entry, bool) {
	for _, e := range p.Entries {
		if e.Step == step {
			return e, true
		}
	}
	return Entry{}, false
}

// Broken is a journal file that could not be read; it was moved to quarantine/.
type Broken struct {
	File        string // its name in the journal directory
	Container   string // from the file name ("" when it names none)
	Err         error
	Quarantined string // where it is now ("" when the move failed too)
}

// Pending lists the unfinished operations, oldest first, each read on its own: a file
// that cannot be read (no begin line, an unreadable file, a begin line for another
// operation) is quarantined and returned in broken, and the others are still listed. A
// torn last line (a crash during the write) is ignored: the step it recorded had not
// completed. An empty file (a crash before the first line) is removed.
func (j *Journal) Pending() (ops []Pending, broken []Broken, err error) {
	ents, err := os.ReadDir(j.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read journal dir: %w", err)
	}
	for _, de := range ents {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".jsonl") {
			continue
		}
		path := filepath.Join(j.Dir, de.Name())
		entries, rerr := readEntries(path)
		if rerr == nil && len(entries) == 0 {
			_ = os.Remove(path)
			continue
		}
		if rerr == nil {
			rerr = checkEntries(de.Name(), entries)
		}
		if rerr != nil {
			broken = append(broken, j.Quarantine(de.Name(), rerr))
			continue
		}
		op := &Op{j: j, ID: entries[0].Op, Container: entries[0].Container, Path: path}
		ops = append(ops, Pending{Op: op, Entries: entries})
	}
	sort.Slice(ops, func(a, b int) bool { return ops[a].Op.ID < ops[b].Op.ID })
	return ops, broken, nil
}

func checkEntries(name string, es []Entry) error {
	first := es[0]
	switch {
	case first.Step != StepBegin:
		return fmt.Errorf("read journal %s: first entry is %q, not the begin entry", name, first.Step)
	case first.Op+".jsonl" != name || first.Container == "":
		return fmt.Errorf("read journal %s: begin entry names operation %q of container %q", name, first.Op, first.Container)
	}
	for i, e := range es {
		if e.Op != first.Op {
			return fmt.Errorf("read journal %s: line %d belongs to operation %q", name, i+1, e.Op)
		}
	}
	return nil
}

// Quarantine moves the journal file name to quarantine/ with a note of why
// (<name>.why), so that it no longer blocks recovery and is kept for a person to read.
func (j *Journal) Quarantine(name string, why error) Broken {
	b := Broken{File: name, Container: ContainerOfName(name), Err: why}
	qd := j.QuarantineDir()
	if err := os.MkdirAll(qd, 0o700); err != nil {
		b.Err = errors.Join(why, fmt.Errorf("quarantine: %w", err))
		return b
	}
	dst := filepath.Join(qd, name)
	if err := os.Rename(filepath.Join(j.Dir, name), dst); err != nil {
		b.Err = errors.Join(why, fmt.Errorf("quarantine: %w", err))
		return b
	}
	_ = atomicfile.Write(dst+".why", []byte(why.Error()+"\n"), 0o600)
	b.Quarantined = dst
	return b
}

// Quarantined lists the files in quarantine/ with the note of why each is there.
func (j *Journal) Quarantined() []Broken {
	ents, _ := os.ReadDir(j.QuarantineDir())
	var out []Broken
	for _, de := range ents {
		if !strings.HasSuffix(de.Name(), ".jsonl") {
			continue
		}
		p := filepath.Join(j.QuarantineDir(), de.Name())
		why, _ := os.ReadFile(p + ".why")
		out = append(out, Broken{File: de.Name(), Container: ContainerOfName(de.Name()), Err: errors.New(strings.TrimSpace(string(why))), Quarantined: p})
	}
	return out
}

// Conflicts returns the unresolved conflict of each container.
func (j *Journal) Conflicts() map[string]Entry {
	out := map[string]Entry{}
	ents, _ := os.ReadDir(j.ConflictDir())
	for _, de := range ents {
		b, err := os.ReadFile(filepath.Join(j.ConflictDir(), de.Name()))
		if err != nil {
			continue
		}
		var e Entry
		if json.Unmarshal(b, &e) == nil && e.Container != "" {
			out[e.Container] = e
		}
	}
	return out
}

// ContainerOfName is the container an operation's file name names
// (<stamp>-<container>-<random>.jsonl), "" when it has no such shape.
func ContainerOfName(name string) string {
	base := strings.TrimSuffix(name, ".jsonl")
	first, last := strings.Index(base, "-"), strings.LastIndex(base, "-")
	if first < 0 || last <= first+1 {
		return ""
	}
	return base[first+1 : last]
}

// ReadFile reads one journal file (torn tail ignored).
func ReadFile(path string) ([]Entry, error) { return readEntries(path) }

func readEntries(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), MaxEntryBytes)
	n := 0
	for sc.Scan() {
		n++
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// A torn tail is the last line; a bad line with more after it is damage.
			if sc.Scan() {
				return nil, fmt.Errorf("read journal %s: line %d: %w", filepath.Base(path), n, err)
			}
			break
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read journal %s: %w", filepath.Base(path), err)
	}
	return out, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
