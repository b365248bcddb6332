// Package manpage renders man pages (roff) and shell completion for a cobra command tree,
// for the Debian packages (make deb): one page per visible command, like git's
// git-<command>(1) pages, generated from the same Use, Short, Long, Example and flags that
// --help shows, so the pages cannot drift from the CLI.
package manpage

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// Page renders cmd's man page in section (1 or 8). version and date go in the footer.
func Page(cmd *cobra.Command, section, version, date string) []byte {
	var b bytes.Buffer
	name := pageName(cmd)
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", quote(strings.ToUpper(name)), section, quote(date),
		quote(cmd.Root().Name()+" "+version), quote(cmd.Root().Name()+" manual"))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", escape(name), escape(cmd.Short))
	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n", escape(cmd.UseLine()))
	b.WriteString(".SH DESCRIPTION\n")
	desc := cmd.Long
	if desc == "" {
		desc = cmd.Short
	}
	paragraphs(&b, desc)
	if fl := cmd.NonInheritedFlags().FlagUsages(); fl != "" {
		b.WriteString(".SH OPTIONS\n")
		preformatted(&b, fl)
	}
	if fl := cmd.InheritedFlags().FlagUsages(); fl != "" {
		b.WriteString(".SH OPTIONS INHERITED FROM PARENT COMMANDS\n")
		preformatted(&b, fl)
	}
	if cmd.Example != "" {
		b.WriteString(".SH EXAMPLES\n")
		preformatted(&b, cmd.Example)
	}
	var see []string
	if cmd.HasParent() {
		see = append(see, pageName(cmd.Parent())+"("+section+")")
	}
	for _, c := range Visible(cmd) {
		see = append(see, pageName(c)+"("+section+")")
	}
	if len(see) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		b.WriteString(escape(strings.Join(see, ", ")) + "\n")
	}
	return b.Bytes()
}

// Visible lists cmd's subcommands that --help lists (not hidden, not help itself).
func Visible(cmd *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" {
			out = append(out, c)
		}
	}
	return out
}

// WriteTree writes one page per visible command of root's tree into dir, named
// <root>-<sub>-....<section>, and returns the files written.
func WriteTree(root *cobra.Command, dir, section, version, date string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("write man pages: %w", err)
	}
	var files []string
	var walk func(c *cobra.Command) error
	walk = func(c *cobra.Command) error {
		p := filepath.Join(dir, pageName(c)+"."+section)
		if err := os.WriteFile(p, Page(c, section, version, date), 0o644); err != nil {
			return fmt.Errorf("write man page: %w", err)
		}
		files = append(files, p)
		for _, s := range Visible(c) {
			if err := walk(s); err != nil {
				return err
			}
		}
		return nil
	}
	return files, walk(root)
}

// Command is a hidden `gen-docs DIR` command for a root: it writes the tree's man pages
// in section into DIR/man and the bash completion into DIR/bash-completion/<root>.
func Command(section, version string) *cobra.Command {
	var date string
	c := &cobra.Command{
		Use:    "gen-docs DIR",
		Short:  "Write the man pages and the bash completion into DIR (for packaging)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			if _, err := WriteTree(root, filepath.Join(args[0], "man"), section, version, date); err != nil {
				return err
			}
			dir := filepath.Join(args[0], "bash-completion")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("write bash completion: %w", err)
			}
			if err := root.GenBashCompletionFileV2(filepath.Join(dir, root.Name()), true); err != nil {
				return fmt.Errorf("write bash completion: %w", err)
			}
			return nil
		},
	}
	c.Flags().StringVar(&date, "date", "", "the date in the pages' footer (e.g. the commit's date, for reproducible pages)")
	return c
}

func pageName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

// paragraphs renders text: blank lines separate paragraphs, indented lines stay as they are.
func paragraphs(b *bytes.Buffer, text string) {
	for i, para := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		if strings.Contains(para, "\n  ") || strings.HasPrefix(para, "  ") {
			preformatted(b, para)
			continue
		}
		b.WriteString(escape(strings.Join(strings.Fields(para), " ")) + "\n")
	}
}

func preformatted(b *bytes.Buffer, text string) {
	b.WriteString(".PP\n.RS\n.nf\n")
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString(escape(l) + "\n")
	}
	b.WriteString(".fi\n.RE\n")
}

// escape makes text safe in roff: backslashes and hyphens escaped, and a line that
// would start with a control character ('.' or ”') gets a zero-width prefix.
func escape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `\(dq`) + `"` }
