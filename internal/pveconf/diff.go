package pveconf

import (
	"fmt"
	"strings"
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

// maxDiffWork bounds the Myers search (edit distance times the size of the changed
// middle); beyond it the middle is shown as removed and re-added, which is still a
// correct diff.
const maxDiffWork = 20_000_000

// Edits is the shortest line edit script from a to b (Myers), lines compared with their
// line ends.
func Edits(a, b []byte) []Edit {
	al, bl := splitKeepEOL(string(a)), splitKeepEOL(string(b))
	// Common prefix and suffix.
	pre := 0
	for pre < len(al) && pre < len(bl) && al[pre] == bl[pre] {
		pre++
	}
	suf := 0
	for suf < len(al)-pre && suf < len(bl)-pre && al[len(al)-1-suf] == bl[len(bl)-1-suf] {
		suf++
	}
	out := make([]Edit, 0, len(al)+len(bl)-pre-suf)
	emit := func(op Op, ai, bi int) {
		e := Edit{Op: op}
		var s string
		if op == Insert {
			s, e.NewLine = bl[bi], bi+1
		} else {
			s, e.OldLine = al[ai], ai+1
			if op == Equal {
				e.NewLine = bi + 1
			}
		}
		e.Text, e.NoEOL = trimEOL(s)
		out = append(out, e)
	}
	for i := 0; i < pre; i++ {
		emit(Equal, i, i)
	}
	for _, st := range myers(al[pre:len(al)-suf], bl[pre:len(bl)-suf]) {
		emit(st.op, pre+st.a, pre+st.b)
	}
	for i := 0; i < suf; i++ {
		emit(Equal, len(al)-suf+i, len(bl)-suf+i)
	}
	return out
}

type step struct {
	op   Op
	a, b int
}

func myers(a, b []string) []step {
	n, m := len(a), len(b)
	if n == 0 || m == 0 || (n+m)*(n+m) > maxDiffWork && (n+m) > 4000 {
		return replaceAll(n, m)
	}
	max := n + m
	off := max
	v := make([]int, 2*max+2)
	var trace [][]int
	found := false
	for d := 0; d <= max && !found; d++ {
		if d*(n+m) > maxDiffWork {
			return replaceAll(n, m)
		}
		trace = append(trace, append([]int(nil), v...))
		for k := -d; k <= d; k += 2 {
			var x int
			if k == -d || (k != d && v[off+k-1] < v[off+k+1]) {
				x = v[off+k+1]
			} else {
				x = v[off+k-1] + 1
			}
			y := x - k
			for x < n && y < m && a[x] == b[y] {
				x++
				y++
			}
			v[off+k] = x
			if x >= n && y >= m {
				found = true
				break
			}
		}
	}
	// Backtrack.
	var rev []step
	x, y := n, m
	for d := len(trace) - 1; d >= 0; d-- {
		vv := trace[d]
		k := x - y
		var pk int
		if k == -d || (k != d && vv[off+k-1] < vv[off+k+1]) {
			pk = k + 1
		} else {
			pk = k - 1
		}
		px := vv[off+pk]
		py := px - pk
		for x > px && y > py {
			x--
			y--
			rev = append(rev, step{Equal, x, y})
		}
		if d > 0 {
			if x == px {
				rev = append(rev, step{Insert, px, py})
			} else {
				rev = append(rev, step{Delete, px, py})
			}
		}
		x, y = px, py
	}
	out := make([]step, len(rev))
	for i := range rev {
		out[i] = rev[len(rev)-1-i]
	}
	return out
}

func replaceAll(n, m int) []step {
	out := make([]step, 0, n+m)
	for i := 0; i < n; i++ {
		out = append(out, step{Delete, i, 0})
	}
	for j := 0; j < m; j++ {
		out = append(out, step{Insert, n, j})
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
