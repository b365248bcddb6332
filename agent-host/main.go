// Command gpupass-host-agent is the gpupass daemon on every Proxmox (or plain LXC) host:
// it applies GPU assignments by the restart rule, owns the guest channel and answers the
// controller over mutual TLS. `gpupass-host-agent conf` edits one config file locally.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"gpupass/internal/buildinfo"
	"gpupass/internal/conftool"
	"gpupass/internal/hostagent"
	"gpupass/internal/hostconfig"
	"gpupass/internal/log"
	"gpupass/internal/manpage"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRoot().ExecuteContext(ctx)
	stop()
	if err != nil {
		os.Exit(conftool.Report(os.Stderr, "gpupass-host-agent", err))
	}
}

func newRoot() *cobra.Command {
	var configPath string
	root := &cobra.Command{
		Use:   "gpupass-host-agent",
		Short: "gpupass host agent: gives LXC containers on this host their NVIDIA GPUs, reliably",
		Long: `gpupass-host-agent runs on every Proxmox VE (or plain LXC) host. It serves the gpupass
controller over mutual TLS, edits container configs idempotently (it owns the GPU lines and
nothing else), restarts a container only when what it runs with differs from what is desired,
and receives readiness pushes from the guest agents over per-container unix sockets.

Run it under systemd (packaging/gpupass-host-agent.service, Type=notify).`,
		Example: `  gpupass-host-agent --config /etc/gpupass/host-agent.yaml
  gpupass-host-agent conf plan --conf /etc/pve/lxc/901.conf --gpus 0,1`,
		Version:       buildinfo.Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), configPath)
		},
	}
	root.Flags().StringVar(&configPath, "config", hostconfig.DefaultPath, "host agent configuration file")
	root.AddCommand(conftool.NewCommand(), newSimulateCmd(), newCheckConfigCmd(), newGPUSnapshotCmd(), newDriverCmd(), manpage.Command("8", buildinfo.Version))
	return root
}

func run(ctx context.Context, configPath string) error {
	cfg, err := hostconfig.Load(configPath)
	if err != nil {
		return err
	}
	logger := log.Component(log.New(log.Options{}), "host-agent")
	svc := &hostagent.Service{Config: cfg, Log: logger}
	return svc.Run(ctx)
}
