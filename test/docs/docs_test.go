// Package docs holds the documentation to the code: every test, fuzz target, benchmark
// and end-to-end scenario a page names as proof of a promise must exist.
package docs

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	// funcName is a Go test, fuzz target or benchmark named in prose, tables or code spans.
	funcName = regexp.MustCompile(`\b(?:Test|Fuzz|Benchmark)[A-Z][A-Za-z0-9_]*`)
	// codeSpan is a Markdown code span.
	codeSpan = regexp.MustCompile("`([^`\n]+)`")
	// scenarioName is an end-to-end or lab scenario (Row04_ShrinkRemovesGPU0_CloneGetsNone,
	// Contract_ModelAppliesToRunningContainers): a capital, a word, an underscore, more,
	// with a lower-case letter somewhere (FRAME_TOO_LARGE is a constant, not a scenario).
	scenarioName = regexp.MustCompile(`^[A-Z][A-Za-z0-9]*_[A-Za-z0-9_]+$`)
	lower        = regexp.MustCompile(`[a-z]`)
	// defined are the definitions in test files.
	funcDef = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz|Benchmark)[A-Za-z0-9_]*)\(`)
	literal = regexp.MustCompile(`"([A-Z][A-Za-z0-9]*_[A-Za-z0-9_]+)"`)
)

// TestDocsNameRealTests reads docs/*.md and README.md: every Test, Fuzz or Benchmark name
// in them must be a function in a _test.go file of the module, and every scenario name in
// a code span (alone or as a subtest: `TestPVELab/DriverHost_UpgradeRestartsThroughPct`)
// must be a string in one (the scenario tables of test/e2e and test/pve). A page that
// names a test which was renamed or removed is a promise with no proof.
func TestDocsNameRealTests(t *testing.T) {
	root := filepath.Join("..", "..")
	funcs, scenarios := map[string]bool{}, map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range funcDef.FindAllStringSubmatch(string(b), -1) {
			funcs[m[1]] = true
		}
		for _, m := range literal.FindAllStringSubmatch(string(b), -1) {
			scenarios[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(funcs) < 100 || !funcs["TestDocsNameRealTests"] || !scenarios["Contract_ModelAppliesToRunningContainers"] {
		t.Fatalf("found %d test functions and %d scenario names under %s: not the module's test files", len(funcs), len(scenarios), root)
	}

	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join(root, "README.md"))
	checked := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, page)
		missing := map[string]bool{}
		for i, line := range strings.Split(string(b), "\n") {
			for _, n := range funcName.FindAllString(line, -1) {
				checked++
				if n != "FuzzX" && !funcs[n] { // FuzzX: the placeholder in "func FuzzX(f *testing.F)"
					missing[n] = true
					t.Errorf("%s:%d names %s, which no _test.go file defines: rename or drop it", rel, i+1, n)
				}
			}
			for _, span := range codeSpan.FindAllStringSubmatch(line, -1) {
				for _, part := range strings.Split(span[1], "/") {
					if !scenarioName.MatchString(part) || !lower.MatchString(part) || missing[part] {
						continue
					}
					checked++
					if !scenarios[part] && !funcs[part] {
						missing[part] = true
						t.Errorf("%s:%d names the scenario %s, which no _test.go file has: rename or drop it", rel, i+1, part)
					}
				}
			}
		}
	}
	t.Logf("%d names in %d pages checked against %d test functions and %d scenario names", checked, len(pages), len(funcs), len(scenarios))
}
