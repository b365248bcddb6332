package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustCA(t *testing.T, dir string) *CA {
	t.Helper()
	ca, err := InitCA(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func mustIssue(t *testing.T, dir, name string, opts Options, ips ...string) (string, string) {
	t.Helper()
	return mustIssueRole(t, dir, name, "", opts, ips...)
}

func mustIssueRole(t *testing.T, dir, name string, role Role, opts Options, ips ...string) (string, string) {
	t.Helper()
	req := IssueRequest{Name: name, Role: role}
	for _, ip := range ips {
		req.IPs = append(req.IPs, net.ParseIP(ip))
	}
	c, k, err := IssueFiles(dir, req, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func TestInitCAFilesAndOverwrite(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, dir)
	if !ca.Cert.IsCA {
		t.Fatal("CA certificate is not a CA")
	}
	for name, want := range map[string]os.FileMode{"ca.key": 0o600, "ca.crt": 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if _, err := InitCA(dir, Options{}); !errors.Is(err, ErrExists) {
		t.Fatalf("second init: err = %v, want ErrExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if string(before) != string(after) {
		t.Fatal("refused init still changed ca.crt")
	}
	if _, err := InitCA(dir, Options{Force: true}); err != nil {
		t.Fatalf("forced init: %v", err)
	}
	forced, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if string(forced) == string(before) {
		t.Fatal("forced init kept the old CA")
	}
}

func TestIssueChainsAndSANs(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, dir)
	certPath, keyPath, err := IssueFiles(dir, IssueRequest{
		Name: "pve1", IPs: []net.IP{net.ParseIP("10.0.0.11")}, DNS: []string{"pve1.example.org"},
	}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(keyPath); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(certPath)
	cert, err := parseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "pve1" {
		t.Errorf("CN = %q", cert.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("verify as server: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("a host certificate verifies as a client certificate")
	}
	if r := RoleOf(cert); r != RoleHost {
		t.Errorf("role = %q, want host", r)
	}
	for _, host := range []string{"pve1", "pve1.example.org", "10.0.0.11"} {
		if err := cert.VerifyHostname(host); err != nil {
			t.Errorf("VerifyHostname(%s): %v", host, err)
		}
	}
	if err := cert.VerifyHostname("10.0.0.12"); err == nil {
		t.Error("certificate valid for an IP it does not name")
	}
	if _, _, err := IssueFiles(dir, IssueRequest{Name: "pve1"}, Options{}); !errors.Is(err, ErrExists) {
		t.Errorf("reissue without force: err = %v, want ErrExists", err)
	}
}

// Each role gets its own key usage and the role in its subject; without --role the name
// decides.
func TestIssueRoles(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, dir)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	tests := []struct {
		name       string
		req        IssueRequest
		wantRole   Role
		wantServer bool
		wantClient bool
	}{
		{"explicit controller", IssueRequest{Name: "ci", Role: RoleController}, RoleController, false, true},
		{"explicit host", IssueRequest{Name: "pve2", Role: RoleHost}, RoleHost, true, false},
		{"name controller defaults to controller", IssueRequest{Name: "controller"}, RoleController, false, true},
		{"other names default to host", IssueRequest{Name: "pve3"}, RoleHost, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _, err := IssueFiles(dir, tt.req, Options{})
			if err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(c)
			cert, err := parseCert(b)
			if err != nil {
				t.Fatal(err)
			}
			verifies := func(u x509.ExtKeyUsage) bool {
				_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}})
				return err == nil
			}
			got := []any{RoleOf(cert), verifies(x509.ExtKeyUsageServerAuth), verifies(x509.ExtKeyUsageClientAuth)}
			want := []any{tt.wantRole, tt.wantServer, tt.wantClient}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("role, server, client (-got +want)\n%s", diff)
			}
		})
	}
	if _, _, err := IssueFiles(dir, IssueRequest{Name: "x", Role: "admin"}, Options{}); err == nil || !strings.Contains(err.Error(), "use host or controller") {
		t.Errorf("role admin: err = %v", err)
	}
}

// issueLegacy writes dir/name.crt and .key as gpupass issued them before roles: usable as
// server and client, no role.
func issueLegacy(t *testing.T, dir, name string) {
	t.Helper()
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: name, Organization: []string{"gpupass"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := marshalKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".key"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestIssueRefusals(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := IssueFiles(dir, IssueRequest{Name: "pve1"}, Options{}); !errors.Is(err, ErrNoCA) {
		t.Fatalf("issue without CA: err = %v, want ErrNoCA", err)
	}
	mustCA(t, dir)
	for name, req := range map[string]IssueRequest{
		"empty name":     {Name: ""},
		"slash in name":  {Name: "../etc/x"},
		"ca is reserved": {Name: "ca"},
		"bad dns":        {Name: "ok", DNS: []string{"not a name"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, _, err := IssueFiles(dir, req, Options{}); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// handshake runs a real TLS 1.3 handshake over loopback and returns the server's and the
// client's error.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3 clients learn of a refused client certificate only on first read.
			_, err = tc.Write([]byte("ok"))
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	clientErr = tc.Handshake()
	if clientErr == nil {
		buf := make([]byte, 2)
		_, clientErr = io.ReadFull(tc, buf)
	}
	tc.Close()
	return <-done, clientErr
}

func TestMutualTLS(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	mustCA(t, dir)
	mustCA(t, other)
	past := func() time.Time { return time.Now().Add(-48 * time.Hour) }
	mustIssue(t, dir, "host", Options{}, "127.0.0.1")
	mustIssue(t, dir, "controller", Options{})
	mustIssueRole(t, other, "intruder", RoleController, Options{})
	mustIssueRole(t, dir, "expired", RoleController, Options{Now: past, Validity: time.Hour})
	mustIssue(t, dir, "expiredhost", Options{Now: past, Validity: time.Hour}, "127.0.0.1")
	mustIssueRole(t, dir, "ci", RoleController, Options{})
	mustIssueRole(t, dir, "ctlserver", RoleController, Options{}, "127.0.0.1")
	issueLegacy(t, dir, "legacy")
	ca := filepath.Join(dir, "ca.crt")
	p := func(d, n string) (string, string) { return filepath.Join(d, n+".crt"), filepath.Join(d, n+".key") }

	server := func(name string, allowed ...string) *tls.Config {
		c, k := p(dir, name)
		cfg, err := ServerTLS(ca, c, k, allowed)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	// raw presents a certificate whatever its role (ClientTLS and ServerTLS refuse wrong
	// roles themselves).
	raw := func(name string) *tls.Config {
		c, k := p(dir, name)
		cert, err := tls.LoadX509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(ca)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(b)
		return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, ServerName: "127.0.0.1"}
	}
	client := func(d, name, serverName string) *tls.Config {
		c, k := p(d, name)
		cfg, err := ClientTLS(ca, c, k, serverName)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	noCert := client(dir, "controller", "127.0.0.1")
	noCert.Certificates = nil
	tls12 := client(dir, "controller", "127.0.0.1")
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name   string
		server *tls.Config
		client *tls.Config
		ok     bool
	}{
		{"controller to host", server("host"), client(dir, "controller", "127.0.0.1"), true},
		{"host certificate as client refused", server("host"), raw("host"), false},
		{"certificate without role as client refused", server("host"), raw("legacy"), false},
		{"pinned controller", server("host", "controller"), client(dir, "controller", "127.0.0.1"), true},
		{"controller not pinned refused", server("host", "controller"), client(dir, "ci", "127.0.0.1"), false},
		{"controller certificate cannot serve", raw("ctlserver"), client(dir, "controller", "127.0.0.1"), false},
		{"no client certificate", server("host"), noCert, false},
		{"client from another CA", server("host"), client(other, "intruder", "127.0.0.1"), false},
		{"expired client certificate", server("host"), client(dir, "expired", "127.0.0.1"), false},
		{"expired server certificate", server("expiredhost"), client(dir, "controller", "127.0.0.1"), false},
		{"server name not in SANs", server("host"), client(dir, "controller", "10.9.9.9"), false},
		{"TLS 1.2 refused", server("host"), tls12, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serr, cerr := handshake(t, tt.server, tt.client)
			if tt.ok && (serr != nil || cerr != nil) {
				t.Fatalf("want success; server: %v; client: %v", serr, cerr)
			}
			if !tt.ok && serr == nil && cerr == nil {
				t.Fatal("want refusal, both sides succeeded")
			}
		})
	}
}

func TestLoadErrorsNameFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := ClientTLS(filepath.Join(dir, "nope.crt"), "a", "b", "x")
	if err == nil || !strings.Contains(err.Error(), "nope.crt") {
		t.Fatalf("err = %v, want the file named", err)
	}
	mustCA(t, dir)
	_, err = ServerTLS(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "missing.crt"), filepath.Join(dir, "missing.key"), nil)
	if err == nil || !strings.Contains(err.Error(), "missing.crt") {
		t.Fatalf("err = %v, want the file named", err)
	}
}

func TestSessionCacheResumesAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	mustCA(t, dir)
	mustIssue(t, dir, "host", Options{}, "127.0.0.1")
	mustIssue(t, dir, "controller", Options{})
	ca := filepath.Join(dir, "ca.crt")
	server, err := ServerTLS(ca, filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	cachePath := filepath.Join(dir, "cache", "tls-sessions.json")
	resumed := func() bool {
		t.Helper()
		cache, err := LoadSessionCache(cachePath)
		if err != nil {
			t.Fatal(err)
		}
		client, err := ClientTLS(ca, filepath.Join(dir, "controller.crt"), filepath.Join(dir, "controller.key"), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		scoped, err := cache.For(ca, filepath.Join(dir, "controller.crt"))
		if err != nil {
			t.Fatal(err)
		}
		client.ClientSessionCache = scoped
		var didResume bool
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			didResume = cs.DidResume
			return nil
		}
		if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
			t.Fatalf("handshake: %v / %v", serr, cerr)
		}
		if err := cache.Save(); err != nil {
			t.Fatal(err)
		}
		return didResume
	}
	if resumed() {
		t.Fatal("first run resumed from an empty cache")
	}
	fi, err := os.Stat(cachePath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("cache mode %v, want 0600", fi.Mode().Perm())
	}
	if !resumed() {
		t.Error("second run (a new cache loaded from the file) did not resume")
	}
	if err := os.WriteFile(cachePath, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := LoadSessionCache(cachePath); err == nil || c.Len() != 0 {
		t.Errorf("corrupt cache: err=%v len=%d, want an error and an empty cache", err, c.Len())
	}
}

// The on-disk session cache is keyed by the client certificate and the CA as well as the
// host: a fleet file pointing at another certificate, or at another CA bundle, makes a full
// handshake, and the host agent sees (and checks) the certificate named, never the old one.
// Real TLS 1.3 handshakes over loopback, one host agent configuration throughout.
func TestSessionCacheKeyedByIdentity(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	mustCA(t, dir)
	mustCA(t, other)
	mustIssue(t, dir, "host", Options{}, "127.0.0.1")
	mustIssue(t, dir, "controller", Options{})
	mustIssueRole(t, dir, "ci", RoleController, Options{})
	ca := filepath.Join(dir, "ca.crt")
	// A CA bundle during a CA rotation: the old CA and the new one. It still trusts the
	// host, but it is another trust decision, so it must not reuse the old sessions.
	bundle := filepath.Join(dir, "bundle.crt")
	a, _ := os.ReadFile(ca)
	b, _ := os.ReadFile(filepath.Join(other, "ca.crt"))
	if err := os.WriteFile(bundle, append(a, b...), 0o644); err != nil {
		t.Fatal(err)
	}
	server, err := ServerTLS(ca, filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var seen string
	check := server.VerifyConnection
	server.VerifyConnection = func(cs tls.ConnectionState) error {
		seen = cs.PeerCertificates[0].Subject.CommonName
		return check(cs)
	}
	cachePath := filepath.Join(dir, "cache", "tls-sessions.json")
	type result struct {
		Resumed bool
		Seen    string
	}
	run := func(caFile, name string) result {
		t.Helper()
		cache, err := LoadSessionCache(cachePath)
		if err != nil {
			t.Fatal(err)
		}
		client, err := ClientTLS(caFile, filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		scoped, err := cache.For(caFile, filepath.Join(dir, name+".crt"))
		if err != nil {
			t.Fatal(err)
		}
		client.ClientSessionCache = scoped
		var r result
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			r.Resumed = cs.DidResume
			return nil
		}
		if serr, cerr := handshake(t, server, client); serr != nil || cerr != nil {
			t.Fatalf("handshake: %v / %v", serr, cerr)
		}
		if err := cache.Save(); err != nil {
			t.Fatal(err)
		}
		r.Seen = seen
		return r
	}
	steps := []struct {
		name   string
		ca     string
		client string
		want   result
	}{
		{"first run", ca, "controller", result{false, "controller"}},
		{"same identity resumes", ca, "controller", result{true, "controller"}},
		{"another certificate: full handshake", ca, "ci", result{false, "ci"}},
		{"back to the first: resumes its own session", ca, "controller", result{true, "controller"}},
		{"another CA file: full handshake", bundle, "controller", result{false, "controller"}},
	}
	for _, st := range steps {
		if diff := cmp.Diff(run(st.ca, st.client), st.want); diff != "" {
			t.Errorf("%s (-got +want)\n%s", st.name, diff)
		}
	}
}

// ClientTLS refuses a certificate that is not a controller's, naming the file and the fix;
// ServerTLS refuses to serve with a controller certificate.
func TestTLSConfigRefusesWrongRole(t *testing.T) {
	dir := t.TempDir()
	mustCA(t, dir)
	mustIssue(t, dir, "host", Options{}, "127.0.0.1")
	mustIssue(t, dir, "controller", Options{})
	issueLegacy(t, dir, "legacy")
	ca := filepath.Join(dir, "ca.crt")
	f := func(n string) (string, string) { return filepath.Join(dir, n+".crt"), filepath.Join(dir, n+".key") }
	for _, n := range []string{"host", "legacy"} {
		c, k := f(n)
		if _, err := ClientTLS(ca, c, k, ""); !errors.Is(err, ErrRole) || !strings.Contains(err.Error(), c) || !strings.Contains(err.Error(), "--role controller") {
			t.Errorf("ClientTLS with %s: err = %v, want ErrRole naming the file and the fix", n, err)
		}
	}
	c, k := f("controller")
	if _, err := ServerTLS(ca, c, k, nil); !errors.Is(err, ErrRole) {
		t.Errorf("ServerTLS with a controller certificate: err = %v, want ErrRole", err)
	}
}
