//go:build linux

// Command simhost writes a simulated GPU host tree (internal/gpu.WriteSimulatedHost) for
// the demo (scripts/demo.sh) and manual experiments: /proc/devices and /proc/driver/nvidia
// fixtures naming stand-in char devices as the NVIDIA ones, and the /dev nodes, marked
// SIMULATED. It needs root (mknod).
//
//	simhost --root DIR [--gpus N] [--swap-minors] [--real-majors] [--driver VERSION]
package main

import (
	"flag"
	"fmt"
	"os"

	"gpupass/internal/gpu"
)

func main() {
	root := flag.String("root", "", "directory to write the simulated host under (required)")
	gpus := flag.Int("gpus", 2, "number of GPUs, 1 to 4")
	swap := flag.Bool("swap-minors", false, "give the GPUs their minors in reverse bus order (index != minor)")
	real := flag.Bool("real-majors", false, "use NVIDIA's majors (195, ...): the nodes exist but do not open without the driver")
	driver := flag.String("driver", "", "kernel driver version to report (default 580.159.04)")
	flag.Parse()
	if *root == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: simhost --root DIR [--gpus N] [--swap-minors] [--real-majors] [--driver VERSION]")
		os.Exit(2)
	}
	opts := gpu.SimOptions{GPUs: *gpus, SwapMinors: *swap, RealMajors: *real, DriverVersion: *driver}
	if err := gpu.WriteSimulatedHost(*root, opts); err != nil {
		fmt.Fprintf(os.Stderr, "simhost: %v\n", err)
		os.Exit(1)
	}
	for _, n := range gpu.SimulatedNodes(opts) {
		fmt.Printf("  %-28s c %d:%d   (SIMULATED stand-in)\n", n.Path, n.Major, n.Minor)
	}
}
