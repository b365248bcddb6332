package cli

import (
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"gpupass/internal/fleet"
	"gpupass/internal/inputlimit"
	"gpupass/internal/pki"
)

func newImport(io *IO) *cobra.Command {
	imp := &cobra.Command{
		Use:   "import",
		Short: "Convert another tool's configuration into fleet.yaml",
	}
	var host, address string
	phoenix := &cobra.Command{
		Use:   "phoenix phoenix_lxc_configs.json --host NAME",
		Short: "Write fleet.yaml (stdout) from the bash orchestrator's phoenix_lxc_configs.json",
		Long: `Reads lxc_configs.<ctid>.gpu_assignment ("0", "0,1", "0, 1", "none" or absent): a
container gets GPUs iff its assignment names some; every other container gets gpus: []
so that gpupass removes GPU entries it may have inherited. All containers are placed on
--host. What is not carried over is listed as warnings on stderr.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := inputlimit.ReadFile(args[0], inputlimit.PhoenixJSON)
			if err != nil {
				return fmt.Errorf("import phoenix: %w", err)
			}
			out, warnings, err := fleet.ImportPhoenix(args[0], b, fleet.PhoenixOptions{Host: host, Address: address})
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintf(io.Stderr, "warning: %s\n", w)
			}
			_, err = io.Stdout.Write(out)
			return err
		},
	}
	phoenix.Flags().StringVar(&host, "host", "", "fleet host name of the Proxmox host these containers are on (required)")
	phoenix.Flags().StringVar(&address, "address", "", "its host agent address (default HOST:7420)")
	_ = phoenix.MarkFlagRequired("host")
	imp.AddCommand(phoenix)
	return imp
}

func newPKI(io *IO) *cobra.Command {
	p := &cobra.Command{
		Use:   "pki",
		Short: "Make the fleet CA and the certificates of host agents and the controller",
	}
	var dir string
	var force bool
	initCmd := &cobra.Command{
		Use:   "init --dir D",
		Short: "Create the fleet CA: D/ca.crt and D/ca.key (ECDSA P-256, key 0600)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := pki.InitCA(dir, pki.Options{Force: force}); err != nil {
				return err
			}
			fmt.Fprintf(io.Stdout, "wrote %s/%s and %s/%s (keep ca.key offline or at least private)\n", dir, pki.CACertFile, dir, pki.CAKeyFile)
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "pki", "directory for the CA")
	initCmd.Flags().BoolVar(&force, "force", false, "replace an existing CA (every issued certificate stops working)")

	var name string
	var ips []net.IP
	var dns []string
	var ifForce bool
	var role string
	issue := &cobra.Command{
		Use:   "issue --dir D --name N [--role host|controller] [--ip IP]... [--dns NAME]...",
		Short: "Issue D/N.crt and D/N.key (0600): a host (server) or controller (client) certificate",
		Long: `Issues a certificate signed by the fleet CA in D, with a role. A host certificate
(--role host) only serves: its IP or DNS names must match the address in fleet.yaml (N itself
is added as a DNS name). A controller certificate (--role controller) is only a client; host
agents serve controller certificates only, so a host's key never acts as the controller.
Without --role, the name "controller" gets the controller role and any other name the host
role. Copy ca.crt, N.crt and N.key to the host.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := pki.IssueRequest{Name: name, IPs: ips, DNS: dns}
			if role != "" {
				r, err := pki.ParseRole(role)
				if err != nil {
					return fmt.Errorf("--role: %w", err)
				}
				req.Role = r
			}
			certPath, keyPath, err := pki.IssueFiles(dir, req, pki.Options{Force: ifForce})
			if err != nil {
				return err
			}
			fmt.Fprintf(io.Stdout, "wrote %s and %s\n", certPath, keyPath)
			return nil
		},
	}
	issue.Flags().StringVar(&dir, "dir", "pki", "directory of the CA")
	issue.Flags().StringVar(&name, "name", "", "certificate name: the host name, or controller (required)")
	issue.Flags().StringVar(&role, "role", "", "host (serves) or controller (client); default controller for --name controller, else host")
	issue.Flags().IPSliceVar(&ips, "ip", nil, "IP address SAN (repeatable)")
	issue.Flags().StringSliceVar(&dns, "dns", nil, "DNS name SAN (repeatable)")
	issue.Flags().BoolVar(&ifForce, "force", false, "replace an existing certificate")
	_ = issue.MarkFlagRequired("name")
	p.AddCommand(initCmd, issue)
	return p
}
