package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"gpupass/internal/hostconfig"
)

// newCheckConfigCmd is `gpupass-host-agent check-config`: the unit's ExecCondition and the
// package's postinst run it, so that the agent starts only once its configuration parses
// and names a certificate, key and CA that exist and load (a fresh install has the
// commented default config and no certificates yet: the unit is enabled, not started).
func newCheckConfigCmd() *cobra.Command {
	configPath := hostconfig.DefaultPath
	c := &cobra.Command{
		Use:   "check-config",
		Short: "Check that the configuration parses and its TLS files exist and load (exit 0), else say why (exit 1)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkConfig(configPath); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", configPath)
			return nil
		},
	}
	c.Flags().StringVar(&configPath, "config", configPath, "host agent configuration file")
	return c
}

func checkConfig(path string) error {
	cfg, err := hostconfig.Load(path)
	if err != nil {
		return err
	}
	if _, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key); err != nil {
		return fmt.Errorf("check %s: tls.cert %s, tls.key %s: %w (issue them with gpupass pki issue --name <host> --ip <address> and copy them there)", path, cfg.TLS.Cert, cfg.TLS.Key, err)
	}
	ca, err := os.ReadFile(cfg.TLS.CA)
	if err != nil {
		return fmt.Errorf("check %s: tls.ca: %w (copy the fleet's ca.crt there)", path, err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return fmt.Errorf("check %s: tls.ca %s: no PEM certificate in it", path, cfg.TLS.CA)
	}
	return nil
}
