package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// ErrRole is returned when a certificate's role does not allow what it is used for.
var ErrRole = errors.New("wrong certificate role")

// ServerTLS returns the host agent's TLS configuration: TLS 1.3 only, presenting certFile,
// and requiring a client certificate that chains to the CA in caFile, has the controller
// role and, when allowedControllers is not empty, one of those names (its common name).
// The check runs on every connection, resumed ones included (tls.Config.VerifyConnection).
func ServerTLS(caFile, certFile, keyFile string, allowedControllers []string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if r := RoleOf(cert.Leaf); r == RoleController {
		return nil, fmt.Errorf("load certificate %s: %w: it is a controller certificate; a host agent serves with a host certificate (gpupass pki issue --role host --name HOST --ip/--dns ...)", certFile, ErrRole)
	}
	allowed := map[string]bool{}
	for _, n := range allowedControllers {
		allowed[n] = true
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkController(cs, allowed)
		},
	}, nil
}

// checkController admits a verified client certificate with the controller role (and an
// allowed name, where names are pinned).
func checkController(cs tls.ConnectionState, allowed map[string]bool) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("check client certificate: %w: none presented", ErrRole)
	}
	leaf := cs.PeerCertificates[0]
	name := leaf.Subject.CommonName
	switch r := RoleOf(leaf); r {
	case RoleController:
	case "":
		return fmt.Errorf("check client certificate %q: %w: it has no gpupass role (issued before roles); issue a controller certificate: gpupass pki issue --role controller --name %s", name, ErrRole, name)
	default:
		return fmt.Errorf("check client certificate %q: %w: it is a %s certificate; only controller certificates are served", name, ErrRole, r)
	}
	if len(allowed) > 0 && !allowed[name] {
		return fmt.Errorf("check client certificate %q: %w: not in allowed_controllers", name, ErrRole)
	}
	return nil
}

// ClientTLS returns the controller's TLS configuration: TLS 1.3 only, presenting certFile,
// and verifying the server's certificate against the CA in caFile for serverName (a DNS
// name or an IP address). Callers talking to many hosts clone it and set ServerName per host.
func ClientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	cert, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	if r := RoleOf(cert.Leaf); r != RoleController {
		what := "a " + string(r) + " certificate"
		if r == "" {
			what = "a certificate without a gpupass role (issued before roles)"
		}
		return nil, fmt.Errorf("load certificate %s: %w: it is %s; host agents serve controller certificates only (gpupass pki issue --role controller --name controller)", certFile, ErrRole, what)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
		// Resumption skips the certificate exchange on repeated connections to a host
		// within one process (status --watch reconnects, benchmarks).
		ClientSessionCache: tls.NewLRUClientSessionCache(4096),
	}, nil
}

func loadPool(caFile string) (*x509.CertPool, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("load CA certificate: %s: no PEM certificate in it", caFile)
	}
	return pool, nil
}

func loadKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate %s with key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}
