// Command gpupass-bench runs every gpupass benchmark side by side in one run and writes
// bench/results.json and docs/benchmarks.md (see package bench). `make bench` runs it,
// as root, in a private mount namespace with cgroup2 on /sys/fs/cgroup.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"gpupass/bench"
)

func main() {
	var o bench.Options
	flag.StringVar(&o.Bin, "bin", "bin", "directory holding the built gpupass binaries")
	flag.StringVar(&o.Work, "work", "/var/lib/gpupass-bench", "scratch directory (removed at the end)")
	flag.StringVar(&o.JSON, "json", "bench/results.json", "results file to write")
	flag.StringVar(&o.Markdown, "md", "docs/benchmarks.md", "report to write")
	flag.StringVar(&o.Only, "only", "", "comma-separated sections to run (readiness,fleet,hostagent,guest,apply,pct); default all")
	flag.BoolVar(&o.Merge, "merge", false, "with -only: merge this run's figures and sections into -json and -md instead of replacing them")
	flag.IntVar(&o.Runs, "runs", 20, "runs of each readiness method")
	flag.StringVar(&o.Profile, "profile", "", "directory to write CPU profiles to (status over the largest fleet, ...)")
	sizes := flag.String("fleet-sizes", "1,10,100,1000", "fleet sizes of the status benchmark")
	flag.Parse()
	for _, f := range strings.Split(*sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 60000 {
			fmt.Fprintf(os.Stderr, "gpupass-bench: -fleet-sizes: %q is not a host count\n", f)
			os.Exit(2)
		}
		o.FleetSizes = append(o.FleetSizes, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := bench.Run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gpupass-bench:", err)
		os.Exit(1)
	}
}
