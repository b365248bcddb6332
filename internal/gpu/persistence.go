package gpu

import (
	"fmt"
	"strings"
)

// PersistenceArgs are nvidia-smi's arguments for the persistence mode of every GPU, read
// by ParsePersistence. The driver's /proc/driver/nvidia and sysfs files do not carry the
// mode (seen on an H200, testdata/real-gpu/h200-persistence): NVML is the only source.
var PersistenceArgs = []string{"--query-gpu=index,pci.bus_id,persistence_mode", "--format=csv,noheader"}

// Persistence modes as reported.
const (
	PersistenceEnabled  = "enabled"
	PersistenceDisabled = "disabled"
)

// ParsePersistence reads the output of nvidia-smi with PersistenceArgs
// ("0, 00000000:00:06.0, Enabled" per GPU) into normalised bus id -> PersistenceEnabled or
// PersistenceDisabled. A GPU whose mode is "[N/A]" is left out (unknown).
func ParsePersistence(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		var id, mode string
		if len(f) == 3 {
			id, mode = NormalizeBusID(f[1]), f[2]
		}
		if id == "" {
			return nil, fmt.Errorf("parse nvidia-smi persistence line %d %q: want \"<index>, <bus id>, Enabled|Disabled\"", i+1, line)
		}
		switch strings.ToLower(strings.TrimSpace(mode)) {
		case "enabled":
			out[id] = PersistenceEnabled
		case "disabled":
			out[id] = PersistenceDisabled
		case "[n/a]", "n/a":
		default:
			return nil, fmt.Errorf("parse nvidia-smi persistence line %d %q: unknown mode %q", i+1, line, strings.TrimSpace(mode))
		}
	}
	return out, nil
}
