package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"gpupass/internal/hostdriver"
)

// newDriverCmd is `driver show` (what `driver: host` containers get) and `driver hook`
// (the lxc.hook.mount that binds it in at every start; docs/driver.md).
func newDriverCmd() *cobra.Command {
	var hostRoot string
	cmd := &cobra.Command{
		Use:   "driver",
		Short: "The host's NVIDIA userspace driver that driver: host containers get",
		Args:  cobra.NoArgs,
	}
	cmd.PersistentFlags().StringVar(&hostRoot, "host-root", "/", "prefix for /proc and the driver's files (test and simulated hosts)")
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the libraries, tools and vendor files of the loaded module's version, as JSON (exit 1 on a mismatch)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := hostdriver.Find(hostRoot)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetIndent("", "  ")
			return enc.Encode(set)
		},
	}
	hook := &cobra.Command{
		Use:   "hook [name lxc mount]",
		Short: "lxc.hook.mount: bind the host's driver into the starting container (LXC_ROOTFS_MOUNT)",
		Long: `hook runs as an lxc.hook.mount (LXC appends the container name, "lxc" and "mount").
It refuses the start when the host's userspace does not match the loaded kernel module.`,
		Args: cobra.MaximumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := hostdriver.Mount(hostdriver.MountOptions{Root: hostRoot, Rootfs: os.Getenv("LXC_ROOTFS_MOUNT")})
			if err != nil {
				// LXC logs a hook's stdout (at DEBUG: lxc-6.0.5:src/lxc/utils.c:560, pct
				// start --debug shows it); stderr reaches the terminal of a foreground start.
				fmt.Fprintln(cmd.OutOrStdout(), "gpupass-host-agent: driver hook:", err)
				return fmt.Errorf("driver hook: %w", err)
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "gpupass-host-agent: driver hook: warning:", w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "gpupass driver hook: host driver %s: %d libraries, %d tools at %s, %d vendor files at their own paths\n", res.Set.Version, len(res.Set.Libs), len(res.Set.Tools), hostdriver.ContainerDir, len(res.Set.Configs))
			return nil
		},
	}
	cmd.AddCommand(show, hook)
	return cmd
}
