package pki

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzLoadSessionCache: a corrupt TLS session cache file never fails a command and never
// panics; whatever loads is served (Get) and survives a save and a reload.
func FuzzLoadSessionCache(f *testing.F) {
	f.Add([]byte(`{"version":1,"sessions":{"127.0.0.1:7420":{"ticket":"AQID","state":"AQID","saved":"` + time.Now().UTC().Format(time.RFC3339) + `"}}}`))
	f.Add([]byte(`{"version":1,"sessions":{"k":{"ticket":null,"state":"","saved":"2001-01-01T00:00:00Z"}}}`))
	f.Add([]byte(`{"version":2,"sessions":{}}`))
	f.Add([]byte(`{"version":1,"sessions":null}`))
	f.Add([]byte(`not json`))
	dir := f.TempDir()
	path, saved := filepath.Join(dir, "in.json"), filepath.Join(dir, "out.json")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := LoadSessionCache(path)
		if c == nil {
			t.Fatalf("nil cache (error %v)", err)
		}
		if err != nil && c.Len() != 0 {
			t.Fatalf("error %v but %d sessions loaded", err, c.Len())
		}
		c.mu.Lock()
		keys := make([]string, 0, len(c.entries))
		for k := range c.entries {
			keys = append(keys, k)
		}
		c.mu.Unlock()
		for _, k := range keys {
			c.Get(k) // a corrupt state or ticket is a miss, not a panic
		}
		if c.Len() == 0 {
			return
		}
		_ = os.Remove(saved)
		c.path, c.dirty = saved, true
		if err := c.Save(); err != nil {
			t.Fatalf("save: %v", err)
		}
		back, err := LoadSessionCache(saved)
		if err != nil || back.Len() != c.Len() {
			t.Fatalf("reload: %d sessions, %v; want %d", back.Len(), err, c.Len())
		}
	})
}

// FuzzParseKeyAndCert: the PEM readers behind LoadCA never panic, and what they accept is
// a usable ECDSA key or a certificate.
func FuzzParseKeyAndCert(f *testing.F) {
	dir := f.TempDir()
	ca, err := InitCA(dir, Options{})
	if err != nil {
		f.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Name: "host"}, Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(certPEM)
	f.Add(keyPEM)
	f.Add(ca.PEM)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, err := parseKey(b); err == nil {
			if k == nil || k.Curve == nil {
				t.Fatalf("parseKey accepted an unusable key %v", k)
			}
			if _, err := k.Bytes(); err != nil {
				t.Fatalf("parseKey accepted an unusable key: %v", err)
			}
		}
		if c, err := parseCert(b); err == nil && c == nil {
			t.Fatal("parseCert returned no certificate and no error")
		}
	})
}
