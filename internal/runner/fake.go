package runner

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Response is what a Fake answers for one command.
type Response struct {
	Stdout   string
	Stderr   string
	ExitCode int
}

// Fake is a Runner for tests: it answers from a table keyed by the joined argv and records
// every call in a transcript.
type Fake struct {
	mu         sync.Mutex
	Responses  map[string][]Response // joined argv -> answers, consumed in order; the last repeats
	Hook       func(argv []string)   // optional, called for every command (e.g. to change state)
	transcript []string
}

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, argv ...string) ([]byte, error) {
	key := strings.Join(argv, " ")
	f.mu.Lock()
	f.transcript = append(f.transcript, key)
	rs, ok := f.Responses[key]
	var r Response
	if ok && len(rs) > 0 {
		r = rs[0]
		if len(rs) > 1 {
			f.Responses[key] = rs[1:]
		}
	}
	hook := f.Hook
	f.mu.Unlock()
	if hook != nil {
		hook(argv)
	}
	if !ok {
		return nil, &ExitError{Argv: argv, ExitCode: 127, Stderr: fmt.Sprintf("fake: no response for %q", key)}
	}
	if r.ExitCode != 0 {
		return []byte(r.Stdout), &ExitError{Argv: argv, ExitCode: r.ExitCode, Stderr: r.Stderr, Stdout: r.Stdout}
	}
	return []byte(r.Stdout), nil
}

// Transcript returns the commands run so far.
func (f *Fake) Transcript() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.transcript...)
}
