package pvelab

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// Parsed is what PVE's parser made of a config: the main section's keys (raw lxc.* keys
// under "lxc" as [key, value] pairs), "pending" and "snapshots".
type Parsed map[string]any

// parseScript runs pve-container:src/PVE/LXC/Config.pm parse_pct_config($filename, $raw,
// $strict) with $strict = 1, which dies on the first line PVE cannot parse, and prints the
// result as JSON.
const parseScript = `
use strict; use warnings;
use JSON;
use PVE::LXC::Config;
my $name = shift @ARGV;
my $raw = do { local $/; <STDIN> };
my $res = PVE::LXC::Config::parse_pct_config($name, $raw, 1);
print JSON->new->canonical->allow_nonref->encode($res);
`

// pctConfName is the file name pattern parse_pct_config insists on (it takes the id from it).
var pctConfName = regexp.MustCompile(`/lxc/(\d+)\.conf$`)

// ParseStrict judges the config file at path with PVE's own parser in strict mode and fails
// the test with PVE's message when PVE cannot parse it. A path not named like
// /etc/pve/lxc/<id>.conf (a golden file) is parsed as /etc/pve/lxc/999.conf.
func ParseStrict(t testing.TB, path string) Parsed {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pvelab: read %s: %v", path, err)
	}
	name := path
	if !pctConfName.MatchString(name) {
		name = "/etc/pve/lxc/999.conf"
	}
	p, msg := ParseStrictContent(name, raw)
	if msg != "" {
		t.Fatalf("PVE's parser (parse_pct_config, strict) refuses %s: %s\n--- content ---\n%s", path, msg, raw)
	}
	return p
}

// ParseStrictContent parses raw as PVE would parse the file name (a path ending in
// /lxc/<id>.conf). It returns PVE's error message instead of a result when PVE refuses it.
func ParseStrictContent(name string, raw []byte) (Parsed, string) {
	cmd := exec.Command("perl", "-e", parseScript, name)
	cmd.Stdin = bytes.NewReader(raw)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, msg
	}
	var p Parsed
	if err := json.Unmarshal(stdout.Bytes(), &p); err != nil {
		return nil, "decode the parser's JSON: " + err.Error()
	}
	return p, ""
}
