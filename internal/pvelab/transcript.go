package pvelab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// WriteTranscript writes pct calls as a transcript in the format of
// internal/runtime/testdata/pct/README.md: "$ argv", the standard output lines, "! " before
// each standard error line, "= N" for a non-zero exit code; header lines are "# " comments.
func WriteTranscript(path string, header []string, calls ...Result) error {
	var b strings.Builder
	for _, h := range header {
		fmt.Fprintf(&b, "# %s\n", h)
	}
	for _, c := range calls {
		fmt.Fprintf(&b, "$ %s\n", strings.Join(c.Argv, " "))
		for _, l := range lines(c.Stdout) {
			b.WriteString(l + "\n")
		}
		for _, l := range lines(c.Stderr) {
			b.WriteString("! " + l + "\n")
		}
		if c.Code != 0 {
			fmt.Fprintf(&b, "= %d\n", c.Code)
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write transcript: %w", err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write transcript: %w", err)
	}
	return nil
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
