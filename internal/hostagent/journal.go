package hostagent

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

	"google.golang.org/protobuf/encoding/protojson"

	pb "gpupass/proto/gpupass/v1"
)

// Journal steps of one apply, in order.
const (
	StepBegin      = "begin"       // nothing written yet
	StepWritten    = "written"     // the config holds the desired entries; Backup has the old bytes
	StepRestart    = "restart"     // a restart (or start) was issued
	StepReady      = "ready"       // the guest reported ready
	StepNotReady   = "not-ready"   // it did not; Detail says why
	StepRolledBack = "rolled-back" // the backup was restored and the run state brought back
	StepDone       = "done"        // Outcome says how it ended
)

// Outcomes recorded by StepDone.
const (
	OutcomeDesired = "as-desired"
	OutcomeAsWas   = "as-it-was"
	OutcomeFailed  = "failed"
)

// Entry is one line of an operation's journal file.
type Entry struct {
	Op         string          `json:"op"`
	Step       string          `json:"step"`
	Time       time.Time       `json:"time"`
	Container  string          `json:"container"`
	Spec       json.RawMessage `json:"spec,omitempty"`
	WasRunning bool            `json:"was_running,omitempty"`
	Digest     string          `json:"digest,omitempty"`
	Backup     string          `json:"backup,omitempty"`
	Outcome    string          `json:"outcome,omitempty"`
	Detail     string          `json:"detail,omitempty"`
}

// Journal records every apply under <state_dir>/journal, one JSON-lines file per
// operation, fsynced at each step. Finished operations move to journal/done.
type Journal struct {
	Dir string
	Now func() time.Time
}

// Op is one journaled operation.
type Op struct {
	j         *Journal
	ID        string
	Container string
	path      string
}

func (j *Journal) now() time.Time {
	if j.Now != nil {
		return j.Now()
	}
	return time.Now()
}

// Begin starts a journal for an apply of spec to container id.
func (j *Journal) Begin(spec *pb.ContainerSpec, wasRunning bool, digest string) (*Op, error) {
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	id := fmt.Sprintf("%s-%s-%s", j.now().UTC().Format("20060102T150405.000000"), sanitize(spec.GetId()), hex.EncodeToString(rnd[:]))
	op := &Op{j: j, ID: id, Container: spec.GetId(), path: filepath.Join(j.Dir, id+".jsonl")}
	raw, err := protojson.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	return op, op.append(Entry{Step: StepBegin, Spec: raw, WasRunning: wasRunning, Digest: digest})
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '.' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// Step appends a step.
func (op *Op) Step(step string, e Entry) error {
	e.Step = step
	return op.append(e)
}

// Done records the outcome and moves the file to journal/done.
func (op *Op) Done(outcome, detail string) error {
	if err := op.append(Entry{Step: StepDone, Outcome: outcome, Detail: detail}); err != nil {
		return err
	}
	doneDir := filepath.Join(op.j.Dir, "done")
	if err := os.MkdirAll(doneDir, 0o700); err != nil {
		return fmt.Errorf("create journal done dir: %w", err)
	}
	return os.Rename(op.path, filepath.Join(doneDir, filepath.Base(op.path)))
}

func (op *Op) append(e Entry) error {
	e.Op = op.ID
	e.Container = op.Container
	e.Time = op.j.now().UTC()
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encode journal entry: %w", err)
	}
	f, err := os.OpenFile(op.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open journal %s: %w", op.path, err)
	}
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("write journal %s: %w", op.path, err)
	}
	return nil
}

// Interrupted is an operation whose journal has no done step.
type Interrupted struct {
	Op      *Op
	Entries []Entry
	Spec    *pb.ContainerSpec
}

// Last is the last step reached.
func (in Interrupted) Last() Entry { return in.Entries[len(in.Entries)-1] }

// Has reports whether step was reached.
func (in Interrupted) Has(step string) (Entry, bool) {
	for _, e := range in.Entries {
		if e.Step == step {
			return e, true
		}
	}
	return Entry{}, false
}

// Interrupted lists unfinished operations, oldest first. A torn last line (a crash during
// the write) is ignored: the step it recorded had not completed.
func (j *Journal) Interrupted() ([]Interrupted, error) {
	ents, err := os.ReadDir(j.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read journal dir: %w", err)
	}
	var out []Interrupted
	for _, de := range ents {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".jsonl") {
			continue
		}
		path := filepath.Join(j.Dir, de.Name())
		entries, err := readEntries(path)
		if err != nil {
			return nil, err
		}
		if len(entries) == 0 {
			_ = os.Remove(path)
			continue
		}
		spec := &pb.ContainerSpec{}
		if err := protojson.Unmarshal(entries[0].Spec, spec); err != nil {
			return nil, fmt.Errorf("journal %s: decode spec: %w", path, err)
		}
		op := &Op{j: j, ID: entries[0].Op, Container: entries[0].Container, path: path}
		out = append(out, Interrupted{Op: op, Entries: entries, Spec: spec})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Op.ID < out[b].Op.ID })
	return out, nil
}

func readEntries(path string) ([]Entry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	defer f.Close()
	var out []Entry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			break // torn tail
		}
		out = append(out, e)
	}
	return out, nil
}
