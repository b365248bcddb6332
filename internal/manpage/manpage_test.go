package manpage

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func tree() *cobra.Command {
	root := &cobra.Command{Use: "tool", Short: "A tool", Long: "tool does things.\n\nIt has a second paragraph with a - dash and a \\ backslash.\n\n  an indented example\n  kept as is"}
	root.PersistentFlags().StringP("file", "f", "fleet.yaml", "the fleet file")
	sub := &cobra.Command{Use: "plan", Short: "Show what would change", Example: "  tool plan -f x.yaml", Run: func(*cobra.Command, []string) {}}
	sub.Flags().Int("parallel", 4, "hosts at once")
	hidden := &cobra.Command{Use: "secret", Hidden: true, Run: func(*cobra.Command, []string) {}}
	dot := &cobra.Command{Use: "dot", Short: ".starts with a dot", Long: ".starts with a dot\n'and a quote", Run: func(*cobra.Command, []string) {}}
	root.AddCommand(sub, hidden, dot)
	return root
}

// TestPages: every visible command gets a page (hidden ones do not), and each page is
// its golden file (go test -update rewrites them).
func TestPages(t *testing.T) {
	dir := t.TempDir()
	files, err := WriteTree(tree(), dir, "1", "v1.2.3", "2026-12-02")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	if diff := cmp.Diff(names, []string{"tool.1", "tool-dot.1", "tool-plan.1"}); diff != "" {
		t.Errorf("pages (-got +want):\n%s", diff)
	}
	for _, n := range names {
		t.Run(n, func(t *testing.T) {
			got, err := os.ReadFile(filepath.Join(dir, n))
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", n)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(string(got), string(want)); diff != "" {
				t.Errorf("%s (-got +want):\n%s", n, diff)
			}
		})
	}
}

// TestGenDocs: the hidden command writes the pages and a bash completion script that
// completes the root's subcommands.
func TestGenDocs(t *testing.T) {
	root := tree()
	root.AddCommand(Command("1", "v1"))
	dir := t.TempDir()
	root.SetArgs([]string{"gen-docs", "--date", "2026-12-02", dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"man/tool.1", "man/tool-plan.1", "bash-completion/tool"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("gen-docs did not write %s: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "man", "tool-gen-docs.1")); err == nil {
		t.Errorf("the hidden gen-docs command got a page")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "bash-completion", "tool"))
	if !strings.Contains(string(b), "__start_tool") {
		t.Errorf("bash completion lacks the start function:\n%.300s", b)
	}
}
