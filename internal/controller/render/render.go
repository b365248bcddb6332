// Package render shows the controller's reports: the JSON contract, aligned tables with
// colour only on a terminal, the live apply progress, watch lines and doctor's
// explanation.
package render

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"gpupass/internal/controller"
)

// Style says how to draw.
type Style struct {
	Color bool // ANSI colours (stdout is a terminal and NO_COLOR is unset)
	Width int  // terminal width for the live progress display; 0: unknown
}

const (
	reset  = "\x1b[0m"
	bold   = "\x1b[1m"
	red    = "\x1b[31m"
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	blue   = "\x1b[34m"
	grey   = "\x1b[90m"
)

func (s Style) paint(color, text string) string {
	if !s.Color || color == "" || text == "" {
		return text
	}
	return color + text + reset
}

// StateColor is the colour of a container state.
func StateColor(state string) string {
	switch state {
	case controller.StateReady:
		return green
	case controller.StatePending, controller.StateStopped:
		return yellow
	case controller.StateNotReady, controller.StateUnreachable, controller.StateError:
		return red
	}
	return ""
}

// JSON writes v as indented JSON (the contract for reports).
func JSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	b = append(b, '\n')
	_, err = w.Write(b)
	return err
}

func jsonLine(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode JSON: %w", err)
	}
	return append(b, '\n'), nil
}

// cell is one table cell: plain text and an optional colour.
type cell struct {
	text, color string
}

func c(text string) cell         { return cell{text: text} }
func cc(text, color string) cell { return cell{text: text, color: color} }
func orDash(s string) string     { return map[bool]string{true: "-", false: s}[s == ""] }
func yesNo(b bool) string        { return map[bool]string{true: "yes", false: "no"}[b] }
func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// table aligns columns by their plain text width and colours cells after padding, so that
// escape codes never disturb the alignment (what text/tabwriter cannot do).
type table struct {
	rows [][]cell
}

func (t *table) add(cells ...cell) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer, s Style) {
	var widths []int
	for _, r := range t.rows {
		for i, cl := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(cl.text))
		}
	}
	var b strings.Builder
	for _, r := range t.rows {
		b.Reset()
		for i, cl := range r {
			text := cl.text
			if i < len(r)-1 {
				text += strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cl.text)+2)
				b.WriteString(s.paint(cl.color, cl.text) + text[len(cl.text):])
			} else {
				b.WriteString(s.paint(cl.color, cl.text))
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
