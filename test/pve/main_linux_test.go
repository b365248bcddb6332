package pve

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"gpupass/internal/pvelab"
)

var record = flag.Bool("record", false, "save the real pct transcripts under internal/runtime/testdata/pve-lab/")

func TestMain(m *testing.M) { pvelab.Main(m) }

// saveTranscript writes calls to internal/runtime/testdata/pve-lab/<name>.txt with -record.
func saveTranscript(t *testing.T, name, what string, calls ...pvelab.Result) {
	t.Helper()
	if !*record {
		return
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(wd, "..", "..", "internal", "runtime", "testdata", "pve-lab", name+".txt")
	header := []string{what, "Recorded on the gpupass PVE lab by test/pve (" + t.Name() + "); see README.md here."}
	if err := pvelab.WriteTranscript(path, header, calls...); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %s", path)
}
