package pveconf

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func corpus(t testing.TB) map[string][]byte {
	t.Helper()
	paths, err := filepath.Glob("testdata/corpus/*")
	if err != nil || len(paths) < 20 {
		t.Fatalf("corpus: %d files, %v", len(paths), err)
	}
	out := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(p)] = b
	}
	return out
}

func formatOf(name string) Format {
	if strings.HasSuffix(name, ".config") {
		return LXC
	}
	return PVE
}

func TestCorpusRoundTrip(t *testing.T) {
	for name, b := range corpus(t) {
		t.Run(name, func(t *testing.T) {
			f := formatOf(name)
			if got := DetectFormat(b); got != f && len(bytes.TrimSpace(b)) > 0 && !strings.HasPrefix(string(b), "#") {
				t.Errorf("DetectFormat = %v, want %v", got, f)
			}
			c, err := Parse(b, f)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := c.Bytes(); !bytes.Equal(got, b) {
				t.Fatalf("round trip differs:\n%s", cmp.Diff(string(got), string(b)))
			}
			// An edit that removes nothing and adds nothing is the identity too.
			c2 := c.Clone()
			c2.ReplaceManaged(func(Line) bool { return false }, nil)
			if !bytes.Equal(c2.Bytes(), b) {
				t.Errorf("empty edit changed the file:\n%s", cmp.Diff(string(c2.Bytes()), string(b)))
			}
			// Sections other than main are never touched by an edit.
			c3 := c.Clone()
			c3.ReplaceManaged(func(l Line) bool { return strings.HasPrefix(l.Key, "lxc.") }, []Entry{{"lxc.test", "1"}})
			if diff := cmp.Diff(sectionText(c3)[1:], sectionText(c)[1:]); diff != "" {
				t.Errorf("edit touched a section (-got +want):\n%s", diff)
			}
		})
	}
}

func sectionText(c *Config) []string {
	var out []string
	for _, s := range c.Sections() {
		var sb strings.Builder
		for _, l := range s.Lines {
			sb.WriteString(l.Raw + l.EOL)
		}
		out = append(out, s.Name+"\x00"+sb.String())
	}
	return out
}

func TestParseLines(t *testing.T) {
	in := "#desc\narch: amd64\nlxc.mount.entry = /a b none bind 0 0\r\n\n[pve:pending]\ncores: 4\n[snap]\nmemory:  512  "
	c, err := Parse([]byte(in), PVE)
	if err != nil {
		t.Fatal(err)
	}
	want := []Line{
		{Num: 1, Kind: Comment, Raw: "#desc", EOL: "\n"},
		{Num: 2, Kind: KeyValue, Key: "arch", Value: "amd64", Raw: "arch: amd64", EOL: "\n"},
		{Num: 3, Kind: KeyValue, Key: "lxc.mount.entry", Value: "/a b none bind 0 0", Raw: "lxc.mount.entry = /a b none bind 0 0", EOL: "\r\n"},
		{Num: 4, Kind: Blank, EOL: "\n"},
		{Num: 5, Kind: Header, Key: "pve:pending", Raw: "[pve:pending]", EOL: "\n"},
		{Num: 6, Kind: KeyValue, Key: "cores", Value: "4", Raw: "cores: 4", EOL: "\n"},
		{Num: 7, Kind: Header, Key: "snap", Raw: "[snap]", EOL: "\n"},
		{Num: 8, Kind: KeyValue, Key: "memory", Value: "512", Raw: "memory:  512  "},
	}
	if diff := cmp.Diff(c.Lines(), want); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	if len(c.Main()) != 4 {
		t.Errorf("Main has %d lines, want 4", len(c.Main()))
	}
	var names []string
	for _, s := range c.Sections() {
		names = append(names, s.Name)
	}
	if diff := cmp.Diff(names, []string{"", "pve:pending", "snap"}); diff != "" {
		t.Errorf("sections (-got +want):\n%s", diff)
	}
	if v, ok := c.Get("memory"); ok {
		t.Errorf("Get(memory) found %q in a section", v)
	}
	if v, _ := c.Get("arch"); v != "amd64" {
		t.Errorf("Get(arch) = %q", v)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		f    Format
		line int
		msg  string
	}{
		{"garbage", "arch: amd64\nthis is not a key\n", PVE, 2, `not "key: value"`},
		{"bad key", "arch: amd64\n9cores: 2\n", PVE, 2, `not "key: value"`},
		{"space in key", "my key: 2\n", PVE, 1, `not "key: value"`},
		{"lxc needs equals", "lxc.arch = amd64\nlxc.uts.name: x\n", LXC, 2, `not "key = value"`},
		{"lxc no sections", "lxc.arch = amd64\n[snap]\n", LXC, 2, "not LXC"},
		{"lxc empty key", " = x\n", LXC, 1, `not "key = value"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in), tt.f)
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error = %v, want *ParseError", err)
			}
			if pe.Line != tt.line || !strings.Contains(pe.Msg, tt.msg) {
				t.Errorf("ParseError = %+v, want line %d msg containing %q", pe, tt.line, tt.msg)
			}
			if !strings.Contains(err.Error(), "line ") {
				t.Errorf("error %q does not name the line", err)
			}
		})
	}
	if _, err := Parse(bytes.Repeat([]byte("#\n"), MaxSize/2+1), PVE); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized config: %v, want ErrTooLarge", err)
	}
}

// TestSectionHeaders follows PVE's parse_pct_config (pve-container:src/PVE/LXC/Config.pm:1160-1172):
// only "[pve:pending]" (any case) and "[<letter><one or more of a-z0-9_->]" at the start of
// a line open a section; every other '[' line stays, kept verbatim, where it is.
func TestSectionHeaders(t *testing.T) {
	tests := []struct {
		name, line string
		kind       Kind
		key        string
	}{
		{"snapshot", "[snap1]", Header, "snap1"},
		{"snapshot trailing blanks", "[snap1]  \t", Header, "snap1"},
		{"snapshot upper case", "[Before-Upgrade_2]", Header, "Before-Upgrade_2"},
		{"pending", "[pve:pending]", Header, PendingSection},
		{"pending upper case", "[PVE:Pending]", Header, PendingSection},
		{"one letter", "[a]", Ignored, ""},
		{"dot", "[x.y]", Ignored, ""},
		{"leading blank", " [x1]", Ignored, ""},
		{"leading digit", "[1abc]", Ignored, ""},
		{"unclosed", "[snap", Ignored, ""},
		{"empty", "[]", Ignored, ""},
		{"text after", "[snap] x", Ignored, ""},
		{"other colon", "[pve:other]", Ignored, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := "arch: amd64\n" + tt.line + "\nmemory: 512\n"
			c, err := Parse([]byte(in), PVE)
			if err != nil {
				t.Fatal(err)
			}
			l := c.Lines()[1]
			if l.Kind != tt.kind || l.Key != tt.key {
				t.Errorf("line %q: kind %v key %q, want kind %v key %q", tt.line, l.Kind, l.Key, tt.kind, tt.key)
			}
			if got := string(c.Bytes()); got != in {
				t.Errorf("round trip: %q, want %q", got, in)
			}
			_, inMain := c.Get("memory")
			if inMain != (tt.kind == Ignored) {
				t.Errorf("memory after %q in the main section: %v, want %v", tt.line, inMain, tt.kind == Ignored)
			}
			c.ReplaceManaged(func(Line) bool { return false }, []Entry{{"dev0", "/dev/nvidia0"}})
			if !strings.Contains(string(c.Bytes()), tt.line+"\n") {
				t.Errorf("edit lost %q:\n%s", tt.line, c.Bytes())
			}
		})
	}
}

func TestIsPVEPath(t *testing.T) {
	tests := []struct {
		path, root string
		want       bool
	}{
		{"/etc/pve/lxc/901.conf", "/", true},
		{"/etc/pve/nodes/pve1/lxc/901.conf", "", true},
		{"/srv/root/etc/pve/lxc/901.conf", "/srv/root", true},
		{"/tmp/x/lxc/901.conf", "/", true},
		{"/var/lib/lxc/901/config", "/", false},
		{"/tmp/901.conf", "/", false},
		{"/srv/root/etc/pve/901.conf.bak", "/", false},
	}
	for _, tt := range tests {
		if got := IsPVEPath(tt.path, tt.root); got != tt.want {
			t.Errorf("IsPVEPath(%q, %q) = %v, want %v", tt.path, tt.root, got, tt.want)
		}
	}
}

func TestDetectFormat(t *testing.T) {
	for in, want := range map[string]Format{
		"arch: amd64\n": PVE, "lxc.arch = amd64\n": LXC, "# c\n\nlxc.mount.entry: /a b\n": PVE,
		"lxc.environment = A=b:c\n": LXC, "[snap]\n": PVE, "": PVE, "mp0: /a,mp=/b\n": PVE,
		// raw lxc.* keys first, written "key = value": the PVE keys after them decide
		"lxc.cgroup2.devices.allow = c 195:* rwm\nlxc.mount.entry = /dev/nvidia0 dev/nvidia0 none bind 0 0\narch: amd64\n": PVE,
		"lxc.apparmor.profile = unconfined\nlxc.uts.name = x\n":                                                            LXC,
	} {
		if got := DetectFormat([]byte(in)); got != want {
			t.Errorf("DetectFormat(%q) = %v, want %v", in, got, want)
		}
	}
}

func isLXC(l Line) bool { return strings.HasPrefix(l.Key, "lxc.mount") }

func TestReplaceManaged(t *testing.T) {
	add := []Entry{{"lxc.mount.entry", "NEW1"}, {"lxc.mount.entry", "NEW2"}}
	tests := []struct {
		name    string
		in      string
		f       Format
		entries []Entry
		want    string
	}{
		{"replace at first managed line", "a: 1\nlxc.mount.entry: old1\nb: 2\nlxc.mount.entry: old2\n", PVE, add,
			"a: 1\nlxc.mount.entry: NEW1\nlxc.mount.entry: NEW2\nb: 2\n"},
		{"append before blank and snapshot", "a: 1\nb: 2\n\n[snap]\nlxc.mount.entry: old\n", PVE, add,
			"a: 1\nb: 2\nlxc.mount.entry: NEW1\nlxc.mount.entry: NEW2\n\n[snap]\nlxc.mount.entry: old\n"},
		{"append before pending", "a: 1\n[pve:pending]\nb: 2\n", PVE, add,
			"a: 1\nlxc.mount.entry: NEW1\nlxc.mount.entry: NEW2\n[pve:pending]\nb: 2\n"},
		{"remove all", "a: 1\nlxc.mount.entry: old1\n\n[snap]\nlxc.mount.entry: x\n", PVE, nil,
			"a: 1\n\n[snap]\nlxc.mount.entry: x\n"},
		{"no final newline kept", "a: 1\nb: 2", PVE, add,
			"a: 1\nb: 2\nlxc.mount.entry: NEW1\nlxc.mount.entry: NEW2"},
		{"no final newline, last line removed", "a: 1\nlxc.mount.entry: old", PVE, nil, "a: 1"},
		{"crlf file", "a: 1\r\nb: 2\r\n", PVE, add[:1], "a: 1\r\nb: 2\r\nlxc.mount.entry: NEW1\r\n"},
		{"empty file", "", PVE, add[:1], "lxc.mount.entry: NEW1\n"},
		{"only description", "#d\n", PVE, add[:1], "#d\nlxc.mount.entry: NEW1\n"},
		{"lxc format", "lxc.arch = amd64\nlxc.mount.entry = old\n", LXC, add,
			"lxc.arch = amd64\nlxc.mount.entry = NEW1\nlxc.mount.entry = NEW2\n"},
		{"comment lookalike kept", "#lxc.mount.entry: x\na: 1\n", PVE, nil, "#lxc.mount.entry: x\na: 1\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.in), tt.f)
			if err != nil {
				t.Fatal(err)
			}
			c.ReplaceManaged(isLXC, tt.entries)
			if diff := cmp.Diff(string(c.Bytes()), tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
			// The result parses, and a second identical edit changes nothing.
			again, err := Parse(c.Bytes(), tt.f)
			if err != nil {
				t.Fatalf("edited config does not parse: %v", err)
			}
			again.ReplaceManaged(isLXC, tt.entries)
			if !bytes.Equal(again.Bytes(), c.Bytes()) {
				t.Errorf("second edit changed:\n%s", cmp.Diff(string(again.Bytes()), string(c.Bytes())))
			}
		})
	}
}

func TestDigest(t *testing.T) {
	// sha1("") and sha1("arch: amd64\n"), as `sha1sum` prints them.
	if got := Digest(nil); got != "da39a3ee5e6b4b0d3255bfef95601890afd80709" {
		t.Errorf("Digest(nil) = %s", got)
	}
	if got := Digest([]byte("abc")); got != "a9993e364706816aba3e25717850c26c9cd0d89d" {
		t.Errorf("Digest(abc) = %s", got)
	}
}

func fuzzRoundTrip(t *testing.T, b []byte, f Format) {
	c, err := Parse(b, f)
	if err != nil {
		var pe *ParseError
		if !errors.As(err, &pe) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("error %v is neither *ParseError nor ErrTooLarge", err)
		}
		return
	}
	if !bytes.Equal(c.Bytes(), b) {
		t.Fatalf("round trip: %q -> %q", b, c.Bytes())
	}
	c.ReplaceManaged(func(l Line) bool { return strings.HasPrefix(l.Key, "lxc.") }, []Entry{{"lxc.mount.entry", "/dev/nvidia0 dev/nvidia0 none bind,create=file 0 0"}})
	out := c.Bytes()
	c2, err := Parse(out, f)
	if err != nil {
		t.Fatalf("edited config does not parse: %v\n%q", err, out)
	}
	if diff := cmp.Diff(sectionText(c2)[1:], sectionText(mustParse(t, b, f))[1:]); diff != "" {
		t.Fatalf("edit touched a section: %s", diff)
	}
	c2.ReplaceManaged(func(l Line) bool { return strings.HasPrefix(l.Key, "lxc.") }, []Entry{{"lxc.mount.entry", "/dev/nvidia0 dev/nvidia0 none bind,create=file 0 0"}})
	if !bytes.Equal(c2.Bytes(), out) {
		t.Fatalf("edit not idempotent:\n%q\n%q", out, c2.Bytes())
	}
}

func mustParse(t *testing.T, b []byte, f Format) *Config {
	c, err := Parse(b, f)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func FuzzParsePVE(f *testing.F) {
	for name, b := range corpus(f) {
		if formatOf(name) == PVE {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) { fuzzRoundTrip(t, b, PVE) })
}

func FuzzParseLXC(f *testing.F) {
	for name, b := range corpus(f) {
		if formatOf(name) == LXC {
			f.Add(b)
		}
	}
	f.Add([]byte("lxc.arch = amd64\nlxc.mount.entry = x"))
	f.Fuzz(func(t *testing.T, b []byte) { fuzzRoundTrip(t, b, LXC) })
}
