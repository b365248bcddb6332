package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"gpupass/internal/gpumetrics"
)

// newGPUSnapshotCmd prints what NVML says now (driver, GPUs, per-process memory and
// utilisation) as JSON: the raw input of the per-container GPU metrics, for debugging and
// for recording fixtures (scripts/gpu-metrics).
func newGPUSnapshotCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "gpu-snapshot",
		Short:  "Print NVML's view of the GPUs and their processes as JSON",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := gpumetrics.OpenNVML()
			if err != nil {
				return err
			}
			defer n.Close()
			s, err := n.Snapshot()
			if err != nil {
				return err
			}
			b, err := json.MarshalIndent(s, "", "  ")
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return nil
		},
	}
}
