package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	req := IssueRequest{Name: name}
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
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for usage %v: %v", usage, err)
		}
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
	mustIssue(t, other, "intruder", Options{})
	mustIssue(t, dir, "expired", Options{Now: past, Validity: time.Hour})
	mustIssue(t, dir, "expiredhost", Options{Now: past, Validity: time.Hour}, "127.0.0.1")
	ca := filepath.Join(dir, "ca.crt")
	p := func(d, n string) (string, string) { return filepath.Join(d, n+".crt"), filepath.Join(d, n+".key") }

	server := func(name string) *tls.Config {
		c, k := p(dir, name)
		cfg, err := ServerTLS(ca, c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
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
		{"host cert also works as client", server("host"), client(dir, "host", "127.0.0.1"), true},
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
	_, err = ServerTLS(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "missing.crt"), filepath.Join(dir, "missing.key"))
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
	server, err := ServerTLS(ca, filepath.Join(dir, "host.crt"), filepath.Join(dir, "host.key"))
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
		client.ClientSessionCache = cache
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
