// Package log is the only place that touches logrus: every component gets an entry with
// fixed fields, text on a terminal and JSON otherwise.
package log

import (
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/term"
)

// Fields are structured key/value pairs attached to a log line.
type Fields = logrus.Fields

// Entry is a logger with fixed fields.
type Entry = logrus.Entry

// Options configure the root logger.
type Options struct {
	Out    io.Writer // default os.Stderr
	Level  string    // debug|info|warn|error; default info (or $GPUPASS_LOG_LEVEL)
	Format string    // text|json|auto; default auto: text on a terminal, JSON otherwise
}

// New builds a root logger.
func New(opts Options) *logrus.Logger {
	l := logrus.New()
	out := opts.Out
	if out == nil {
		out = os.Stderr
	}
	l.SetOutput(out)
	level := opts.Level
	if level == "" {
		level = os.Getenv("GPUPASS_LOG_LEVEL")
	}
	if lv, err := logrus.ParseLevel(level); err == nil && level != "" {
		l.SetLevel(lv)
	} else {
		l.SetLevel(logrus.InfoLevel)
	}
	format := opts.Format
	if format == "" {
		format = os.Getenv("GPUPASS_LOG_FORMAT")
	}
	if format == "" || format == "auto" {
		format = "json"
		if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	if strings.EqualFold(format, "text") {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true, TimestampFormat: time.RFC3339Nano})
	} else {
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	}
	return l
}

// Component returns an entry carrying the component field.
func Component(l *logrus.Logger, name string) *Entry {
	return l.WithField("component", name)
}

// Discard returns an entry that drops everything.
func Discard() *Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

// TB is the part of testing.TB that ForTest needs.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Cleanup(func())
}

// ForTest returns an entry whose lines go to t.Log, and stop when the test ends.
func ForTest(t TB, component string) *Entry {
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	l := logrus.New()
	l.SetOutput(w)
	l.SetLevel(logrus.DebugLevel)
	l.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true, TimestampFormat: "15:04:05.000000"})
	return l.WithField("component", component)
}

type testWriter struct {
	mu   sync.Mutex
	t    TB
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// Limiter lets one line through per interval per key; retry loops and hostile peers use
// it so that a flood of the same event is logged once.
type Limiter struct {
	mu    sync.Mutex
	every time.Duration
	last  map[string]time.Time
	now   func() time.Time
}

// NewLimiter returns a limiter allowing one line per key per interval.
func NewLimiter(every time.Duration) *Limiter {
	return &Limiter{every: every, last: map[string]time.Time{}, now: time.Now}
}

// Allow reports whether a line for key may be logged now.
func (r *Limiter) Allow(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.now()
	if last, ok := r.last[key]; ok && t.Sub(last) < r.every {
		return false
	}
	if len(r.last) > 4096 {
		r.last = map[string]time.Time{}
	}
	r.last[key] = t
	return true
}
