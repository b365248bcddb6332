// Package pki makes the fleet's certificate authority and the certificates that host agents
// and the controller present to each other, and builds the mutual TLS 1.3 configurations
// that use them. Keys are ECDSA P-256; key files are written 0600.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"gpupass/internal/atomicfile"
)

// File names inside a PKI directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Default validity periods.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 2 * 365 * 24 * time.Hour
)

// ErrExists is returned when a CA (or certificate) already exists and Force is not set.
var ErrExists = errors.New("already exists")

// ErrNoCA is returned when the directory holds no CA.
var ErrNoCA = errors.New("no CA")

// Options tune certificate creation; the zero value gives the defaults.
type Options struct {
	Force    bool             // overwrite an existing CA or certificate
	Validity time.Duration    // default DefaultCAValidity / DefaultCertValidity
	Now      func() time.Time // default time.Now; tests issue expired certificates with it
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// CA is a loaded certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte // the certificate, PEM encoded
}

// InitCA creates dir/ca.crt and dir/ca.key (0600). It refuses to replace an existing CA
// unless opts.Force is set.
func InitCA(dir string, opts Options) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if !opts.Force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Stat(p); err == nil {
				return nil, fmt.Errorf("init CA: %s %w (use --force to replace it; every issued certificate then stops working)", p, ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init CA: generate key: %w", err)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultCAValidity
	}
	now := opts.now()
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "gpupass fleet CA", Organization: []string{"gpupass"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("init CA: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("init CA: parse certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM, err := marshalKey(key)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// LoadCA reads dir/ca.crt and dir/ca.key.
func LoadCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load CA: %s: %w (run: gpupass pki init --dir %s)", certPath, ErrNoCA, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", certPath, err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", keyPath, err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s does not belong to %s", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: key, PEM: certPEM}, nil
}

// Role says what a certificate may do in the fleet. It is written into the certificate's
// subject (organizational unit) and its extended key usage: a host certificate only serves
// (server auth), a controller certificate is only a client (client auth). Host agents serve
// controller-role client certificates only, so a host's key cannot act as the controller.
type Role string

// The roles.
const (
	RoleHost       Role = "host"
	RoleController Role = "controller"
)

// ParseRole checks a --role value.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleHost, RoleController:
		return r, nil
	}
	return "", fmt.Errorf("parse role: %q: use host or controller", s)
}

// DefaultRole is the role of a certificate issued without one: controller for the name
// "controller", host for every other name.
func DefaultRole(name string) Role {
	if name == string(RoleController) {
		return RoleController
	}
	return RoleHost
}

// RoleOf reads the role from a certificate; "" for a certificate issued before roles
// existed (or by something else).
func RoleOf(cert *x509.Certificate) Role {
	var role Role
	for _, ou := range cert.Subject.OrganizationalUnit {
		r, ok := strings.CutPrefix(ou, roleOUPrefix)
		if !ok {
			continue
		}
		if role != "" {
			return "" // two roles: none
		}
		parsed, err := ParseRole(r)
		if err != nil {
			return ""
		}
		role = parsed
	}
	return role
}

// roleOUPrefix marks the organizational unit that carries the role.
const roleOUPrefix = "gpupass-role="

// IssueRequest names the certificate to issue.
type IssueRequest struct {
	Name string   // common name and file name stem; also a DNS SAN when it is a valid host name
	Role Role     // "" means DefaultRole(Name)
	IPs  []net.IP // IP SANs
	DNS  []string // further DNS SANs
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
var dnsRE = regexp.MustCompile(`^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// Issue signs a certificate for req.Role (a host certificate is a TLS server certificate, a
// controller certificate a TLS client certificate) and returns the certificate and key, PEM
// encoded.
func (ca *CA) Issue(req IssueRequest, opts Options) (certPEM, keyPEM []byte, err error) {
	if !nameRE.MatchString(req.Name) {
		return nil, nil, fmt.Errorf("issue certificate: name %q: use letters, digits, '.', '_' and '-' (at most 63)", req.Name)
	}
	role := req.Role
	if role == "" {
		role = DefaultRole(req.Name)
	}
	if _, err := ParseRole(string(role)); err != nil {
		return nil, nil, fmt.Errorf("issue certificate: %w", err)
	}
	eku := x509.ExtKeyUsageServerAuth
	if role == RoleController {
		eku = x509.ExtKeyUsageClientAuth
	}
	dns := []string{}
	if dnsRE.MatchString(req.Name) {
		dns = append(dns, req.Name)
	}
	for _, d := range req.DNS {
		if !dnsRE.MatchString(d) {
			return nil, nil, fmt.Errorf("issue certificate: --dns %q is not a DNS name", d)
		}
		if !contains(dns, d) {
			dns = append(dns, d)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate: generate key: %w", err)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = DefaultCertValidity
	}
	now := opts.now()
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: req.Name, Organization: []string{"gpupass"}, OrganizationalUnit: []string{roleOUPrefix + string(role)}},
		NotBefore:      now.Add(-5 * time.Minute),
		NotAfter:       now.Add(validity),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{eku},
		DNSNames:       dns,
		IPAddresses:    req.IPs,
		AuthorityKeyId: ca.Cert.SubjectKeyId,
	}
	if !now.Add(validity).Before(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate: %w", err)
	}
	keyPEM, err = marshalKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// IssueFiles loads the CA in dir and writes dir/<name>.crt and dir/<name>.key (0600). It
// refuses to replace an existing certificate unless opts.Force is set.
func IssueFiles(dir string, req IssueRequest, opts Options) (certPath, keyPath string, err error) {
	ca, err := LoadCA(dir)
	if err != nil {
		return "", "", err
	}
	if req.Name == "ca" {
		return "", "", fmt.Errorf("issue certificate: name %q is reserved for the CA", req.Name)
	}
	certPath, keyPath = filepath.Join(dir, req.Name+".crt"), filepath.Join(dir, req.Name+".key")
	if !opts.Force {
		for _, p := range []string{certPath, keyPath} {
			if _, err := os.Stat(p); err == nil {
				return "", "", fmt.Errorf("issue certificate: %s %w (use --force to replace it)", p, ErrExists)
			}
		}
	}
	certPEM, keyPEM, err := ca.Issue(req, opts)
	if err != nil {
		return "", "", err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("issue certificate: %w", err)
	}
	if err := atomicfile.Write(certPath, certPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("issue certificate: %w", err)
	}
	return certPath, keyPath, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}

func keyID(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("marshal public key: %w", err)
	}
	// RFC 7093 method 1: the leftmost 160 bits of the SHA-256 of the key.
	sum := sha256.Sum256(der)
	return sum[:20], nil
}

func marshalKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate found")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM key found")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		if ek, err2 := x509.ParseECPrivateKey(blk.Bytes); err2 == nil {
			return ek, nil
		}
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ECDSA", k)
	}
	return ek, nil
}
