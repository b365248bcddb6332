// Command gpupass is the controller CLI: plan, apply, status, doctor, import and pki for a
// fleet of gpupass host agents. The commands live in internal/controller/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"gpupass/internal/controller/cli"
)

func main() {
	// A short-lived process that handshakes with every host at once: trade memory for
	// fewer garbage collections (see BenchmarkStatusFanout).
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx)
	stop()
	os.Exit(code)
}

// run executes the command line; SIGINT/SIGTERM cancel ctx, which ends every host session
// (status --watch exits 0 on it).
func run(ctx context.Context) int {
	return cli.Run(ctx, os.Args[1:], cli.Stdio())
}
