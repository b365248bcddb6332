package guest

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"gpupass/internal/gpu"
	pb "gpupass/proto/gpupass/v1"
)

// FuzzParseCharMajors fuzzes the guest's /proc/devices reader (used by --once without a
// host agent) differentially against the host's (gpu.ParseDevices): where the host's strict
// parser accepts a file, the two agree on every single-word driver name.
func FuzzParseCharMajors(f *testing.F) {
	for _, p := range []string{"../gpu/testdata/h100/proc/devices", "../gpu/testdata/pve-2gpu/proc/devices", "../gpu/testdata/mig/proc/devices"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("Character devices:\n195 nvidia\n238 nvidia-uvm\n195 nvidia-frontend\n\nBlock devices:\n  7 loop\n"))
	f.Add([]byte("Character devices:\r\n195 nvidia\r\n"))
	f.Add([]byte("Block devices:\n195 nvidia\nCharacter devices:\n 10 misc\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := ParseCharMajors(b)
		for name := range got {
			if name == "" || strings.IndexFunc(name, unicode.IsSpace) >= 0 {
				t.Fatalf("bad name %q from %q", name, b)
			}
		}
		host, err := gpu.ParseDevices(b)
		if err != nil || !comparable(b) {
			return
		}
		hostMajors := map[string]map[uint32]bool{}
		for major, names := range host {
			for _, n := range names {
				if strings.IndexFunc(n, unicode.IsSpace) < 0 {
					if hostMajors[n] == nil {
						hostMajors[n] = map[uint32]bool{}
					}
					hostMajors[n][major] = true
				}
			}
		}
		for name, major := range got {
			if !hostMajors[name][major] {
				t.Fatalf("guest reads %s=%d, the host parser does not (%v) in %q", name, major, host, b)
			}
		}
		for name := range hostMajors {
			if _, ok := got[name]; !ok {
				t.Fatalf("guest misses %q, which the host parser reads (%v) in %q", name, host, b)
			}
		}
	})
}

// comparable excludes what the two parsers treat differently on purpose and /proc/devices
// never holds: lines longer than a bufio.Scanner line, and a driver named "...devices:".
func comparable(b []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasSuffix(strings.TrimSpace(sc.Text()), "devices:") && !isHeader(sc.Text()) {
			return false
		}
	}
	return sc.Err() == nil
}

func isHeader(line string) bool {
	t := strings.TrimSpace(line)
	return t == "Character devices:" || t == "Block devices:"
}

// FuzzLoadExpectation: an expectation file (--once --expect FILE) either loads or names
// the file in its error; a loaded one survives a JSON round trip.
func FuzzLoadExpectation(f *testing.F) {
	f.Add([]byte(`{"devices": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}], "driver_loaded": true, "kernel_driver_version": "580.159.04", "gpus": [{"uuid": "GPU-x"}]}`))
	f.Add([]byte(`{"containerId": "901", "heartbeatIntervalMs": "10000", "requireNetwork": true}`))
	f.Add([]byte(`{"devices": [{"path": 1}]}`))
	f.Add([]byte(`{"unknown": 1}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "expect.json")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		exp, err := LoadExpectation(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		out, err := protojson.Marshal(exp)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back := &pb.Expectation{}
		if err := protojson.Unmarshal(out, back); err != nil || !proto.Equal(exp, back) {
			t.Fatalf("round trip: %v; %v vs %v", err, exp, back)
		}
	})
}
