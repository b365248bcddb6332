package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"gpupass/internal/gpu"
)

// newSimulateCmd writes a simulated GPU host tree, for demos and tests on machines
// without a GPU.
func newSimulateCmd() *cobra.Command {
	var root string
	var opts gpu.SimOptions
	cmd := &cobra.Command{
		Use:   "simulate-host --root DIR",
		Short: "write a SIMULATED NVIDIA GPU host tree (for demos and tests without a GPU)",
		Long: `simulate-host writes /proc/driver/nvidia, /proc/devices and /dev/nvidia* nodes under DIR
for a host that has no GPU. The nodes use the numbers of char devices whose drivers exist on
any Linux machine (vcs, misc), so containers given them really open them; /proc/devices names
those majors as the NVIDIA ones. Point host_root at DIR. Everything built on it is labelled
simulated. --real-majors uses NVIDIA's numbers instead (open() then fails with ENXIO: the
no-driver case).`,
		Example: `  gpupass-host-agent simulate-host --root /var/lib/gpupass-demo/host --gpus 2`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if root == "" {
				return fmt.Errorf("--root is required")
			}
			if err := gpu.WriteSimulatedHost(root, opts); err != nil {
				return err
			}
			inv, err := gpu.Discover(root)
			if err != nil {
				return fmt.Errorf("check simulated host: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "SIMULATED GPU host at %s: driver %s, %d GPU(s)\n", root, inv.DriverVersion, len(inv.GPUs))
			for _, g := range inv.GPUs {
				fmt.Fprintf(cmd.OutOrStdout(), "  GPU %s\n", g)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&root, "root", "", "directory to write the simulated host into")
	cmd.Flags().IntVar(&opts.GPUs, "gpus", 2, "number of GPUs (1-4)")
	cmd.Flags().BoolVar(&opts.SwapMinors, "swap-minors", false, "give GPUs their minors in reverse bus order (index != minor)")
	cmd.Flags().BoolVar(&opts.MIG, "mig", false, "add MIG capability nodes")
	cmd.Flags().BoolVar(&opts.RealMajors, "real-majors", false, "use NVIDIA's real majors (nodes give ENXIO: no driver)")
	cmd.Flags().StringVar(&opts.DriverVersion, "driver-version", "", "kernel driver version to claim (default 580.159.04)")
	return cmd
}
