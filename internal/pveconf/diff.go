package pveconf

import (
	"fmt"
	"strings"

	"github.com/aymanbagabas/go-udiff"
)

// Op is the kind of an Edit.
type Op int

const (
	// Equal keeps a line.
	Equal Op = iota
	// Delete removes a line of the old text.
	Delete
	// Insert adds a line of the new text.
	Insert
)

// Edit is one step of a line diff.
type Edit struct {
	Op Op
	// Text is the line without its line end; NoEOL marks a last line without a newline.
	Text  string
	NoEOL bool
	// OldLine and NewLine are 1-based line numbers (0 where the line is not in that text).
	OldLine, NewLine int
}

// Edits is a line edit script from a to b, lines compared with their line ends. The
// longest common subsequence comes from github.com/aymanbagabas/go-udiff (the diff of
// golang.org/x/tools, which bounds its work on large inputs); the script and its line
// numbers are ours.
func Edits(a, b []byte) []Edit {
	as, bs := string(a), string(b)
	al := splitKeepEOL(as)
	out := make([]Edit, 0, len(al))
	ai, bi, off := 0, 0, 0 // next old line, next new line, byte offset of old line ai
	emit := func(op Op, s string) {
		e := Edit{Op: op}
		switch op {
		case Insert:
			bi++
			e.NewLine = bi
		case Delete:
			ai++
			e.OldLine = ai
		default:
			ai, bi = ai+1, bi+1
			e.OldLine, e.NewLine = ai, bi
		}
		if op != Insert {
			off += len(s)
		}
		e.Text, e.NoEOL = trimEOL(s)
		out = append(out, e)
	}
	for _, d := range udiff.Lines(as, bs) { // sorted, at line boundaries
		for off < d.Start {
			emit(Equal, al[ai])
		}
		for off < d.End {
			emit(Delete, al[ai])
		}
		for _, l := range splitKeepEOL(d.New) {
			emit(Insert, l)
		}
	}
	for ai < len(al) {
		emit(Equal, al[ai])
	}
	return out
}

func splitKeepEOL(s string) []string {
	out := make([]string, 0, strings.Count(s, "\n")+1)
	for len(s) > 0 {
		i := strings.IndexByte(s, '\n')
		if i < 0 {
			out = append(out, s)
			break
		}
		out = append(out, s[:i+1])
		s = s[i+1:]
	}
	return out
}

func trimEOL(s string) (string, bool) {
	if t, ok := strings.CutSuffix(s, "\n"); ok {
		return strings.TrimSuffix(t, "\r"), false
	}
	return s, true
}

// Unified renders a unified diff of a and b with three lines of context, "" when they are
// equal.
func Unified(oldLabel, newLabel string, a, b []byte) string {
	return UnifiedEdits(oldLabel, newLabel, Edits(a, b))
}

// UnifiedEdits renders edits (from Edits) as a unified diff.
func UnifiedEdits(oldLabel, newLabel string, edits []Edit) string {
	const ctx = 3
	var sb strings.Builder
	i := 0
	for i < len(edits) {
		// Find the next change.
		for i < len(edits) && edits[i].Op == Equal {
			i++
		}
		if i == len(edits) {
			break
		}
		if sb.Len() == 0 {
			fmt.Fprintf(&sb, "--- %s\n+++ %s\n", oldLabel, newLabel)
		}
		start := max(i-ctx, 0)
		end := i
		// Extend while the gap to the next change is small.
		for {
			for end < len(edits) && edits[end].Op != Equal {
				end++
			}
			gap := end
			for gap < len(edits) && edits[gap].Op == Equal {
				gap++
			}
			if gap < len(edits) && gap-end <= 2*ctx {
				end = gap
				continue
			}
			end = min(end+ctx, len(edits))
			break
		}
		writeHunk(&sb, edits[start:end])
		i = end
	}
	return sb.String()
}

func writeHunk(sb *strings.Builder, h []Edit) {
	oldStart, newStart, oldN, newN := 0, 0, 0, 0
	for _, e := range h {
		if e.Op != Insert {
			if oldStart == 0 {
				oldStart = e.OldLine
			}
			oldN++
		}
		if e.Op != Delete {
			if newStart == 0 {
				newStart = e.NewLine
			}
			newN++
		}
	}
	// A hunk carries context, so an empty range means that side is empty: line 0.
	fmt.Fprintf(sb, "@@ -%s +%s @@\n", hunkRange(oldStart, oldN), hunkRange(newStart, newN))
	for _, e := range h {
		prefix := " "
		switch e.Op {
		case Delete:
			prefix = "-"
		case Insert:
			prefix = "+"
		}
		sb.WriteString(prefix)
		sb.WriteString(e.Text)
		sb.WriteByte('\n')
		if e.NoEOL {
			sb.WriteString("\\ No newline at end of file\n")
		}
	}
}

func hunkRange(start, n int) string {
	if n == 1 {
		return fmt.Sprint(start)
	}
	return fmt.Sprintf("%d,%d", start, n)
}
