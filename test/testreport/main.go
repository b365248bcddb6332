// Command testreport reads `go test -json` on stdin and keeps a test run readable: every
// line of output goes to a log file, the terminal gets one line per package as it ends
// (like go test: ok/FAIL/?, with its passed, failed and skipped counts), then the failing
// tests by name with the last lines of their own output (not whole LXC debug logs), and a
// totals line. scripts/test.sh runs it.
//
//	go test -json ./... 2>&1 | testreport --log FILE [--summary FILE]
//
// The exit status is 1 when a test or a package failed, 0 otherwise.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	logPath := flag.String("log", "", "write the run's full output here (required)")
	summaryPath := flag.String("summary", "", "also write the totals line (N passed, N failed, N skipped) here")
	flag.Parse()
	if *logPath == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: go test -json ./... 2>&1 | testreport --log FILE [--summary FILE]")
		os.Exit(2)
	}
	log, err := os.Create(*logPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
		os.Exit(2)
	}
	r := newReport(os.Stdout, log, *logPath)
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: read go test output: %v\n", err)
	}
	totals := r.finish()
	if err := log.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: write %s: %v\n", *logPath, err)
	}
	if *summaryPath != "" {
		if err := os.WriteFile(*summaryPath, []byte(totals+"\n"), 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "testreport: %v\n", err)
		}
	}
	if r.failed() {
		os.Exit(1)
	}
}
