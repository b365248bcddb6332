// Package pveconf parses and edits container configs losslessly: the Proxmox VE format
// (/etc/pve/lxc/<id>.conf: "key: value", a main section followed by [pve:pending] and
// [snapshot] sections, '#' description lines) and the plain LXC format
// (/var/lib/lxc/<name>/config: "key = value").
//
// Every accepted input round-trips: Parse(b).Bytes() == b, byte for byte, including
// comments, blank lines, unknown keys, key order, trailing whitespace, a missing final
// newline and CRLF line ends (kept per line; lines an edit adds use the file's first line
// end). Edits (ReplaceManaged) touch only the main section; sections are never edited.
//
// File adds what a safe writer needs: the PVE config lock (flock), a digest re-check
// (SHA-1 of the bytes, as PVE computes it), a temp file in the same directory renamed over
// the config (no chmod: pmxcfs refuses it), and a backup of the previous bytes.
package pveconf

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// MaxSize caps the size of a config Parse and File accept (PVE's own limit is 1 MiB too).
const MaxSize = 1 << 20

// ErrTooLarge is wrapped when a config exceeds MaxSize.
var ErrTooLarge = errors.New("config too large")

// Format is the syntax of a config.
type Format int

const (
	// FormatPVE is the Proxmox VE container config: "key: value", [sections].
	FormatPVE Format = iota
	// FormatLXC is the plain LXC config: "key = value", no sections.
	FormatLXC
)

// Short names of the formats.
const (
	PVE = FormatPVE
	LXC = FormatLXC
)

func (f Format) String() string {
	if f == LXC {
		return "lxc"
	}
	return "pve"
}

// Kind classifies a line.
type Kind int

const (
	// Blank is an empty or whitespace-only line.
	Blank Kind = iota
	// Comment is a '#' line (in PVE's main section: the description).
	Comment
	// KeyValue is an entry, "key: value" or "key = value".
	KeyValue
	// Header is a PVE section header, "[name]"; Key holds the name ("pve:pending" for
	// the pending section however it is capitalised).
	Header
	// Ignored is a line starting with '[' that PVE does not take as a section header
	// ("[a]", "[x.y]", " [x]", "[snap"): PVE's parser warns and skips it, so it stays in
	// the section it appears in. It is kept byte for byte.
	Ignored
)

// PendingSection is the Key of the [pve:pending] header.
const PendingSection = "pve:pending"

// PVE's section headers (pve-container:src/PVE/LXC/Config.pm:1160 and :1166, in
// parse_pct_config): "[pve:pending]" case-insensitively, or a snapshot name of a letter
// and at least one more of [a-z0-9_-] (case-insensitive), at the very start of the line,
// trailing blanks allowed. Anything else starting with '[' is not a section.
var (
	pendingHeader  = regexp.MustCompile(`(?i)^\[pve:pending\]\s*$`)
	snapshotHeader = regexp.MustCompile(`(?i)^\[([a-z][a-z0-9_\-]+)\]\s*$`)
)

// Line is one line of a config.
type Line struct {
	// Num is the 1-based line number in the parsed input; 0 for a line an edit added.
	Num  int
	Kind Kind
	// Key and Value of a KeyValue line (trimmed); Key of a Header is the section name.
	Key, Value string
	// Raw is the line's text without its line end; EOL is "\n", "\r\n" or "" (last line
	// without a newline). Raw+EOL are the exact bytes.
	Raw, EOL string
}

// Entry is a key and value to render as a new line.
type Entry struct {
	Key, Value string
}

// ParseError names the line of the input that is not valid.
type ParseError struct {
	Line int
	Text string
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("line %d: %s: %q", e.Line, e.Msg, e.Text)
}

// Config is a parsed config.
type Config struct {
	Format Format
	lines  []Line
	// mainEnd is the index of the first header (len(lines) when there is none).
	mainEnd int
}

// Section is a run of lines: the main section (Name "", no header line) or a [Name]
// section starting with its header.
type Section struct {
	Name  string
	Lines []Line
}

// Digest is the hex SHA-1 of b, as PVE computes a config digest.
func Digest(b []byte) string {
	s := sha1.Sum(b)
	return hex.EncodeToString(s[:])
}

// DetectFormat guesses the syntax of a config whose place does not say it (see
// IsPVEPath): the first entry that is not a raw lxc.* key decides ("key: value" is PVE,
// "key = value" LXC); a section header means PVE. Raw lxc.* keys may be written "key =
// value" in a PVE config too (pve-container:src/PVE/LXC/Config.pm:1179), so they decide
// only when there is nothing else: then the first one's separator does. With no entry at
// all it answers PVE.
func DetectFormat(b []byte) Format {
	first := -1
	for _, line := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(line)
		if t == "" || t[0] == '#' {
			continue
		}
		if t[0] == '[' {
			return PVE
		}
		var f Format
		c, e := strings.IndexByte(t, ':'), strings.IndexByte(t, '=')
		switch {
		case e >= 0 && (c < 0 || e < c):
			f = LXC
		case c >= 0:
			f = PVE
		default:
			continue
		}
		if !strings.HasPrefix(t, "lxc.") {
			return f
		}
		if first < 0 {
			first = int(f)
		}
	}
	if first >= 0 {
		return Format(first)
	}
	return PVE
}

// pveConfigName is the file name PVE gives a container config, .../lxc/<vmid>.conf
// (pve-container:src/PVE/LXC/Config.pm:1147).
var pveConfigName = regexp.MustCompile(`/lxc/[0-9]+\.conf$`)

// IsPVEPath reports whether path is where PVE keeps a container config: under
// <hostRoot>/etc/pve, or named .../lxc/<vmid>.conf. Such a file is a PVE config whatever
// its first lines look like.
func IsPVEPath(path, hostRoot string) bool {
	if hostRoot == "" {
		hostRoot = "/"
	}
	pve := strings.TrimSuffix(hostRoot, "/") + "/etc/pve/"
	return strings.HasPrefix(path, pve) || pveConfigName.MatchString(path)
}

// Parse parses b in format f.
func Parse(b []byte, f Format) (*Config, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("parse config: %d bytes, more than %d: %w", len(b), MaxSize, ErrTooLarge)
	}
	c := &Config{Format: f, lines: make([]Line, 0, 16+len(b)/32)}
	s := string(b)
	c.mainEnd = -1
	for n := 1; len(s) > 0; n++ {
		var raw, eol string
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			raw, eol, s = s[:i], "\n", s[i+1:]
			if strings.HasSuffix(raw, "\r") {
				raw, eol = raw[:len(raw)-1], "\r\n"
			}
		} else {
			raw, s = s, ""
		}
		l, err := parseLine(raw, f)
		if err != nil {
			return nil, &ParseError{Line: n, Text: raw, Msg: err.Error()}
		}
		l.Num, l.EOL = n, eol
		if l.Kind == Header && c.mainEnd < 0 {
			c.mainEnd = len(c.lines)
		}
		c.lines = append(c.lines, l)
	}
	if c.mainEnd < 0 {
		c.mainEnd = len(c.lines)
	}
	return c, nil
}

func parseLine(raw string, f Format) (Line, error) {
	l := Line{Raw: raw}
	if strings.IndexByte(raw, 0) >= 0 {
		// PVE and LXC read C strings: a NUL cuts the line short for them but not for us,
		// so an edit could disagree with what they run. Refuse; the file stays as it is.
		return l, errors.New("contains a NUL byte (\\x00): the file is damaged or was not written by PVE or LXC; remove the byte (or restore the file) and retry")
	}
	t := strings.TrimSpace(raw)
	switch {
	case t == "":
		l.Kind = Blank
		return l, nil
	case t[0] == '#':
		l.Kind = Comment
		return l, nil
	case t[0] == '[':
		if f == LXC {
			return l, errors.New("section headers are not LXC config syntax")
		}
		switch m := snapshotHeader.FindStringSubmatch(raw); {
		case pendingHeader.MatchString(raw):
			l.Kind, l.Key = Header, PendingSection
		case m != nil:
			l.Kind, l.Key = Header, m[1]
		default:
			l.Kind = Ignored
		}
		return l, nil
	}
	var key, value string
	var ok bool
	if f == LXC {
		key, value, ok = strings.Cut(t, "=")
		key = strings.TrimSpace(key)
		if !ok || !validKey(key) {
			return l, errors.New(`not "key = value", a comment or a blank line`)
		}
	} else {
		c, e := strings.IndexByte(t, ':'), strings.IndexByte(t, '=')
		// Raw lxc.* keys may use '=' in PVE configs too ("lxc.foo = bar").
		if e >= 0 && (c < 0 || e < c) && strings.HasPrefix(t, "lxc.") {
			c = e
		}
		if c < 0 {
			return l, errors.New(`not "key: value", a comment or a [section] header`)
		}
		key, value = strings.TrimSpace(t[:c]), t[c+1:]
		if !validKey(key) {
			return l, errors.New(`not "key: value", a comment or a [section] header`)
		}
	}
	l.Kind, l.Key, l.Value = KeyValue, key, strings.TrimSpace(value)
	return l, nil
}

// validKey accepts PVE and LXC keys: a letter, then letters, digits and "._-".
func validKey(k string) bool {
	if k == "" || !(k[0] >= 'a' && k[0] <= 'z' || k[0] >= 'A' && k[0] <= 'Z') {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// Bytes is the config's exact text.
func (c *Config) Bytes() []byte {
	n := 0
	for _, l := range c.lines {
		n += len(l.Raw) + len(l.EOL)
	}
	b := make([]byte, 0, n)
	for _, l := range c.lines {
		b = append(b, l.Raw...)
		b = append(b, l.EOL...)
	}
	return b
}

// Clone is a deep copy.
func (c *Config) Clone() *Config {
	cp := *c
	cp.lines = append([]Line(nil), c.lines...)
	return &cp
}

// Lines are all lines, sections included (do not modify).
func (c *Config) Lines() []Line { return c.lines }

// Main is the main section's lines: everything before the first [section] header (do
// not modify).
func (c *Config) Main() []Line { return c.lines[:c.mainEnd] }

// Sections lists the main section and then each [section] in file order.
func (c *Config) Sections() []Section {
	out := []Section{{Lines: c.lines[:c.mainEnd:c.mainEnd]}}
	start := c.mainEnd
	for i := c.mainEnd + 1; i <= len(c.lines); i++ {
		if i == len(c.lines) || c.lines[i].Kind == Header {
			out = append(out, Section{Name: c.lines[start].Key, Lines: c.lines[start:i:i]})
			start = i
		}
	}
	return out
}

// Get returns the value of the main section's first entry with key.
func (c *Config) Get(key string) (string, bool) {
	for _, l := range c.Main() {
		if l.Kind == KeyValue && l.Key == key {
			return l.Value, true
		}
	}
	return "", false
}

// Render is the text of an entry in format f, "key: value" or "key = value".
func Render(e Entry, f Format) string {
	if f == LXC {
		return e.Key + " = " + e.Value
	}
	return e.Key + ": " + e.Value
}

// ReplaceManaged removes every main-section entry for which isManaged is true and puts
// entries, in order, where the first removed line was; with none removed, after the last
// non-blank line of the main section (before the blank line and any [section] that
// follow). Sections are never touched. A file without a final newline keeps that style.
func (c *Config) ReplaceManaged(isManaged func(Line) bool, entries []Entry) {
	main := c.lines[:c.mainEnd]
	pos := -1
	kept := make([]Line, 0, len(main)+len(entries))
	for _, l := range main {
		if l.Kind == KeyValue && isManaged(l) {
			if pos < 0 {
				pos = len(kept)
			}
			continue
		}
		kept = append(kept, l)
	}
	if pos < 0 {
		pos = len(kept)
		for pos > 0 && kept[pos-1].Kind == Blank {
			pos--
		}
	}
	eol := c.defaultEOL()
	added := make([]Line, len(entries))
	for i, e := range entries {
		added[i] = Line{Kind: KeyValue, Key: e.Key, Value: e.Value, Raw: Render(e, c.Format), EOL: eol}
	}
	noFinalNL := len(c.lines) > 0 && c.lines[len(c.lines)-1].EOL == ""
	out := make([]Line, 0, len(kept)+len(added)+len(c.lines)-c.mainEnd)
	out = append(out, kept[:pos]...)
	out = append(out, added...)
	out = append(out, kept[pos:]...)
	newMainEnd := len(out)
	out = append(out, c.lines[c.mainEnd:]...)
	for i := range out {
		if out[i].EOL == "" && i < len(out)-1 {
			out[i].EOL = eol
			// "x\r" then "\n" reads back as "x" with a CRLF: keep the same structure.
			if raw, ok := strings.CutSuffix(out[i].Raw, "\r"); ok && eol == "\n" {
				out[i].Raw, out[i].EOL = raw, "\r\n"
			}
		}
	}
	if noFinalNL && len(out) > 0 {
		out[len(out)-1].EOL = ""
	}
	c.lines, c.mainEnd = out, newMainEnd
}

func (c *Config) defaultEOL() string {
	if len(c.lines) == 0 {
		return "\n"
	}
	first := c.lines[0]
	if first.EOL == "\r\n" || (first.EOL == "" && strings.HasSuffix(first.Raw, "\r")) {
		return "\r\n"
	}
	return "\n"
}
