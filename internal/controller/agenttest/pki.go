// Package agenttest runs in-process host agents for the controller's tests and benchmarks:
// real wire sessions over real mutual TLS on loopback, answering host.Inventory,
// host.Plan, host.Apply, host.Status and host.Watch from a small, consistent model of a
// GPU host and its containers. The model renders config lines, diffs and digests with the
// agent's own rules and decides restarts with internal/restartrule on the evidence its
// state stands for, and words its reasons with the one renderer (pb.RenderReason). Contract
// tests run the same cases through it and the real agent and fail on any difference the
// controller's output would show: TestModelPlansAsTheAgent, TestModelStatusAsTheAgent and
// TestModelAppliesAsTheAgent (a real hostagent.Agent on a fixture GPU host, configs on
// disk: plans, stopped and unknown containers, the first watch event, applies to stopped
// containers with their progress steps and the config written), and the e2e scenario
// Contract_ModelStatusOfRunningContainers (real LXC containers with the real guest agent in
// every running state the controller's tests use; see contract.go). It also makes the hosts
// that misbehave: one where nothing listens, and one that accepts connections and never
// answers.
package agenttest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"path/filepath"
	"testing"

	"gpupass/internal/pki"
)

// PKI is a throwaway fleet CA with a controller certificate.
type PKI struct {
	Dir            string
	CA             *pki.CA
	CAFile         string
	ControllerCert string
	ControllerKey  string
	pool           *x509.CertPool
}

// NewPKI makes a CA and a controller certificate under a temporary directory.
func NewPKI(tb testing.TB) *PKI {
	tb.Helper()
	dir := tb.TempDir()
	ca, err := pki.InitCA(dir, pki.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	cert, key, err := pki.IssueFiles(dir, pki.IssueRequest{Name: "controller"}, pki.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &PKI{Dir: dir, CA: ca, CAFile: filepath.Join(dir, pki.CACertFile), ControllerCert: cert, ControllerKey: key, pool: pool}
}

// ClientTLS is the controller's TLS configuration (pki.ClientTLS).
func (p *PKI) ClientTLS(tb testing.TB) *tls.Config {
	tb.Helper()
	cfg, err := pki.ClientTLS(p.CAFile, p.ControllerCert, p.ControllerKey, "")
	if err != nil {
		tb.Fatal(err)
	}
	return cfg
}

// HostTLS issues a host certificate for name and ips and returns a server configuration
// equivalent to pki.ServerTLS's.
func (p *PKI) HostTLS(tb testing.TB, name string, ips ...net.IP) *tls.Config {
	tb.Helper()
	certPEM, keyPEM, err := p.CA.Issue(pki.IssueRequest{Name: name, IPs: ips}, pki.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.pool,
	}
}
