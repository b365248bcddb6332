package pki

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"gpupass/internal/atomicfile"
)

// SessionCache is a tls.ClientSessionCache that is loaded from and saved to a file, so that
// successive controller runs resume TLS 1.3 sessions with the host agents instead of
// repeating the full certificate handshake with every host. The file holds resumption
// secrets, which are as sensitive as the controller's key for as long as the host agent
// accepts them (at most 7 days): it is written 0600, next to nothing else.
type SessionCache struct {
	path string
	now  func() time.Time

	mu      sync.Mutex
	entries map[string]sessionEntry
	dirty   bool
}

type sessionEntry struct {
	Ticket []byte    `json:"ticket"`
	State  []byte    `json:"state"`
	Saved  time.Time `json:"saved"`
}

type sessionFile struct {
	Version  int                     `json:"version"`
	Sessions map[string]sessionEntry `json:"sessions"`
}

const (
	sessionFileVersion = 2 // 2: keys carry the client certificate and CA fingerprints
	// sessionMaxAge: Go host agents accept a ticket for 7 days; older ones are dropped.
	sessionMaxAge = 7 * 24 * time.Hour
	// sessionMaxEntries bounds the file.
	sessionMaxEntries = 8192
)

// DefaultSessionCachePath is $XDG_CACHE_HOME/gpupass/tls-sessions.json (or the platform's
// user cache directory); "" when there is none.
func DefaultSessionCachePath() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "gpupass", "tls-sessions.json")
}

// LoadSessionCache reads path. A missing, unreadable or corrupt file gives an empty cache
// (a cache never makes a command fail); the error says why it was ignored.
func LoadSessionCache(path string) (*SessionCache, error) {
	c := &SessionCache{path: path, now: time.Now, entries: map[string]sessionEntry{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("load TLS session cache: %w", err)
	}
	var f sessionFile
	if err := json.Unmarshal(b, &f); err != nil || f.Version != sessionFileVersion {
		return c, fmt.Errorf("load TLS session cache %s: unreadable, starting afresh", path)
	}
	for k, e := range f.Sessions {
		if c.now().Sub(e.Saved) < sessionMaxAge {
			c.entries[k] = e
		}
	}
	return c, nil
}

// Get implements tls.ClientSessionCache.
func (c *SessionCache) Get(key string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	e, ok := c.entries[key]
	c.mu.Unlock()
	if !ok {
		return nil, false
	}
	st, err := tls.ParseSessionState(e.State)
	if err != nil {
		return nil, false
	}
	cs, err := tls.NewResumptionState(e.Ticket, st)
	if err != nil {
		return nil, false
	}
	return cs, true
}

// Put implements tls.ClientSessionCache; a nil cs deletes the entry.
func (c *SessionCache) Put(key string, cs *tls.ClientSessionState) {
	var e sessionEntry
	if cs != nil {
		ticket, st, err := cs.ResumptionState()
		if err != nil || st == nil {
			return
		}
		b, err := st.Bytes()
		if err != nil {
			return
		}
		e = sessionEntry{Ticket: ticket, State: b, Saved: c.now()}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dirty = true
	if cs == nil {
		delete(c.entries, key)
		return
	}
	c.entries[key] = e
}

// Len is the number of cached sessions.
func (c *SessionCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Save writes the cache (0600, atomically) if it changed.
func (c *SessionCache) Save() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dirty || c.path == "" {
		return nil
	}
	if len(c.entries) > sessionMaxEntries {
		keys := make([]string, 0, len(c.entries))
		for k := range c.entries {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return c.entries[keys[i]].Saved.After(c.entries[keys[j]].Saved) })
		for _, k := range keys[sessionMaxEntries:] {
			delete(c.entries, k)
		}
	}
	b, err := json.Marshal(sessionFile{Version: sessionFileVersion, Sessions: c.entries})
	if err != nil {
		return fmt.Errorf("save TLS session cache: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("save TLS session cache: %w", err)
	}
	if err := atomicfile.Write(c.path, b, 0o600); err != nil {
		return fmt.Errorf("save TLS session cache: %w", err)
	}
	c.dirty = false
	return nil
}

// For is the view of the cache for one controller identity: the client certificate in
// certFile and the CA certificates in caFile, by SHA-256 fingerprint, as well as the key
// crypto/tls gives (the server). A session made with another client certificate or under
// another CA is never offered, so a certificate or CA change always means a full handshake,
// and the host agent sees (and checks) the certificate the fleet file names.
func (c *SessionCache) For(caFile, certFile string) (tls.ClientSessionCache, error) {
	ca, err := fingerprintPEM(caFile)
	if err != nil {
		return nil, fmt.Errorf("scope TLS session cache: %w", err)
	}
	cert, err := fingerprintPEM(certFile)
	if err != nil {
		return nil, fmt.Errorf("scope TLS session cache: %w", err)
	}
	return scopedSessions{c: c, prefix: "ca=" + ca + " cert=" + cert + " "}, nil
}

// fingerprintPEM is the SHA-256 of the DER of every certificate in a PEM file, in order.
func fingerprintPEM(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			h.Write(blk.Bytes)
			n++
		}
	}
	if n == 0 {
		return "", fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// scopedSessions prefixes every key with an identity.
type scopedSessions struct {
	c      *SessionCache
	prefix string
}

func (s scopedSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return s.c.Get(s.prefix + key)
}

func (s scopedSessions) Put(key string, cs *tls.ClientSessionState) {
	s.c.Put(s.prefix+key, cs)
}
