package render

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"gpupass/internal/controller"
	"gpupass/internal/fleet"
)

// Progress shows apply progress: on a terminal a block of one line per host and container,
// redrawn in place; otherwise one plain line per step.
type Progress struct {
	mu    sync.Mutex
	w     io.Writer
	live  bool
	style Style
	start time.Time
	keys  []string
	lines map[string]string
	drawn int
}

// NewProgress prepares the display for the fleet's hosts and containers. live selects the
// redrawn block (stdout is a terminal).
func NewProgress(w io.Writer, f *fleet.Fleet, live bool, s Style) *Progress {
	p := &Progress{w: w, live: live, style: s, start: time.Now(), lines: map[string]string{}}
	byHost := f.ByHost()
	for _, h := range f.Hosts {
		p.keys = append(p.keys, h.Name)
		p.lines[h.Name] = "waiting"
		for _, ct := range byHost[h.Name] {
			p.keys = append(p.keys, ct.Key())
			p.lines[ct.Key()] = "waiting"
		}
	}
	return p
}

func stepColor(step string) string {
	switch step {
	case "done":
		return green
	case "failed", "rollback":
		return red
	case "restart", "start", "write":
		return yellow
	}
	return blue
}

// Update shows one step; it is safe for concurrent use.
func (p *Progress) Update(ev controller.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := ev.Host
	if ev.Container != "" {
		key = ev.Host + "/" + ev.Container
	}
	if !p.live {
		fmt.Fprintf(p.w, "%s %s %s: %s\n", ev.Time.UTC().Format("15:04:05"), key, ev.Step, ev.Message)
		return
	}
	if _, ok := p.lines[key]; !ok {
		p.keys = append(p.keys, key)
	}
	p.lines[key] = p.style.paint(stepColor(ev.Step), ev.Step) + " " + ev.Message
	p.redraw()
}

func (p *Progress) redraw() {
	var b strings.Builder
	if p.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", p.drawn)
	}
	label := func(k string) string {
		if strings.Contains(k, "/") {
			return "  " + k
		}
		return k
	}
	width := 0
	for _, k := range p.keys {
		width = max(width, utf8.RuneCountInString(label(k)))
	}
	for _, k := range p.keys {
		line := fmt.Sprintf("%-*s  %s", width, label(k), p.lines[k])
		if p.style.Width > 0 {
			line = truncate(line, p.style.Width-1)
		}
		b.WriteString("\x1b[2K" + line + "\n")
	}
	fmt.Fprintf(&b, "\x1b[2K%s elapsed\n", time.Since(p.start).Truncate(100*time.Millisecond))
	p.drawn = len(p.keys) + 1
	_, _ = io.WriteString(p.w, b.String())
}

// truncate shortens s to n visible runes, keeping escape sequences whole.
func truncate(s string, n int) string {
	var b strings.Builder
	visible, inEsc, cut := 0, false, false
	for _, r := range s {
		switch {
		case r == '\x1b':
			inEsc = true
			b.WriteRune(r)
		case inEsc:
			b.WriteRune(r)
			if r >= '@' && r <= '~' && r != '[' {
				inEsc = false
			}
		case visible < n:
			b.WriteRune(r)
			visible++
		default:
			cut = true
		}
	}
	if cut {
		b.WriteString(reset)
	}
	return b.String()
}

// Finish ends the display (the summary follows it).
func (p *Progress) Finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live {
		p.redraw()
	}
}
