package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string // build-output, build-fail
}

// Failing tests show this many of their last output lines, each cut to lineMax bytes.
const (
	tailLines = 8
	lineMax   = 240
)

type pkgResult struct {
	passed, failed, skipped int
	done                    bool
	output                  []string // the package's own lines (no test): build errors, panics
}

type testKey struct{ pkg, test string }

type report struct {
	out, log io.Writer
	logPath  string
	pkgs     map[string]*pkgResult
	order    []string
	outputs  map[testKey][]string // each test's own output lines
	failures []testKey            // in the order they failed
	build    map[string][]string  // build output by import path
	badPkgs  int
}

func newReport(out, log io.Writer, logPath string) *report {
	return &report{out: out, log: log, logPath: logPath, pkgs: map[string]*pkgResult{},
		outputs: map[testKey][]string{}, build: map[string][]string{}}
}

func (r *report) pkg(name string) *pkgResult {
	p, ok := r.pkgs[name]
	if !ok {
		p = &pkgResult{}
		r.pkgs[name] = p
		r.order = append(r.order, name)
	}
	return p
}

// read consumes the stream; a line that is not JSON (go's own messages) is shown and logged.
func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		var ev event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil {
			fmt.Fprintf(r.log, "%s\n", line)
			fmt.Fprintf(r.out, "%s\n", line)
			continue
		}
		r.event(ev)
	}
	return sc.Err()
}

func (r *report) event(ev event) {
	switch ev.Action {
	case "build-output":
		io.WriteString(r.log, ev.Output)
		// "pkg [pkg.test]": the build of the package's test binary.
		name, _, _ := strings.Cut(ev.ImportPath, " ")
		r.build[name] = append(r.build[name], strings.TrimRight(ev.Output, "\n"))
		return
	case "build-fail":
		return
	}
	if ev.Package == "" {
		return
	}
	p := r.pkg(ev.Package)
	key := testKey{ev.Package, ev.Test}
	switch ev.Action {
	case "output":
		io.WriteString(r.log, ev.Output)
		line := strings.TrimRight(ev.Output, "\n")
		if ev.Test == "" {
			p.output = append(p.output, line)
		} else if !strings.HasPrefix(strings.TrimSpace(line), "=== ") {
			r.outputs[key] = append(r.outputs[key], line)
		}
	case "pass", "fail", "skip":
		if ev.Test != "" {
			r.testEnded(p, key, ev.Action)
			return
		}
		p.done = true
		r.pkgEnded(ev.Package, p, ev.Action, ev.Elapsed)
	}
}

func (r *report) testEnded(p *pkgResult, key testKey, action string) {
	// A parent fails with its subtests, which end first: name only the innermost failures.
	if action == "fail" && !slices.ContainsFunc(r.failures, func(k testKey) bool {
		return k.pkg == key.pkg && strings.HasPrefix(k.test, key.test+"/")
	}) {
		r.failures = append(r.failures, key)
	}
	if strings.Contains(key.test, "/") {
		return // counts are of top-level tests
	}
	switch action {
	case "pass":
		p.passed++
	case "fail":
		p.failed++
	case "skip":
		p.skipped++
	}
}

func counts(passed, failed, skipped int) string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", passed, failed, skipped)
}

// pkgEnded prints the package's line, as go test does, with its counts.
func (r *report) pkgEnded(name string, p *pkgResult, action string, elapsed float64) {
	switch {
	case action == "skip" || (action == "pass" && p.passed+p.failed+p.skipped == 0 && hasNoTestFiles(p.output)):
		fmt.Fprintf(r.out, "?   \t%s\t[no test files]\n", name)
	case action == "pass":
		fmt.Fprintf(r.out, "ok  \t%s\t%.3fs\t%s\n", name, elapsed, counts(p.passed, p.failed, p.skipped))
	default:
		r.badPkgs++
		fmt.Fprintf(r.out, "FAIL\t%s\t%.3fs\t%s\n", name, elapsed, counts(p.passed, p.failed, p.skipped))
		if p.failed == 0 {
			// No test failed: the package did not build, panicked or timed out; say how.
			for _, l := range tail(append(r.build[name], p.output...), 2*tailLines) {
				fmt.Fprintf(r.out, "    %s\n", cut(l))
			}
		}
	}
}

func hasNoTestFiles(lines []string) bool {
	return slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "[no test files]") })
}

// finish prints the failing tests and the totals and returns the plain totals line.
func (r *report) finish() string {
	var passed, failed, skipped int
	for _, name := range r.order {
		p := r.pkgs[name]
		passed, failed, skipped = passed+p.passed, failed+p.failed, skipped+p.skipped
		if !p.done {
			// The stream ended before the package did (go test killed).
			r.badPkgs++
			fmt.Fprintf(r.out, "FAIL\t%s\t(no result: the run ended first)\n", name)
		}
	}
	if len(r.failures) > 0 {
		fmt.Fprintf(r.out, "\nFailing tests (the full output of each is in %s):\n", r.logPath)
		for _, k := range r.failures {
			fmt.Fprintf(r.out, "--- FAIL: %s (%s)\n", k.test, k.pkg)
			var own []string
			for _, l := range r.outputs[k] {
				if t := strings.TrimSpace(l); !strings.HasPrefix(t, "--- ") && t != "" {
					own = append(own, l)
				}
			}
			for _, l := range tail(own, tailLines) {
				fmt.Fprintf(r.out, "    %s\n", cut(strings.TrimSpace(l)))
			}
		}
	}
	totals := counts(passed, failed, skipped)
	fmt.Fprintf(r.out, "\ntests: %s in %d packages (%d failed); full log: %s\n", totals, len(r.order), r.badPkgs, r.logPath)
	return totals
}

func (r *report) failed() bool { return r.badPkgs > 0 || len(r.failures) > 0 }

func tail(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

func cut(s string) string {
	if len(s) > lineMax {
		return s[:lineMax] + " ..."
	}
	return s
}
