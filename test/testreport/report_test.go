package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestReportOfARealRun feeds the report the real `go test -json` of a fixture module (a
// passing package with a skip and subtests, one whose tests fail, one after a 200-line
// debug dump, one without tests, one that does not build) and compares what it shows with
// testdata/report.golden; the log holds every line.
func TestReportOfARealRun(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go is not on PATH")
	}
	cmd := exec.Command(goBin, "test", "-count=1", "-p=1", "-json", "./...") // -p=1: packages end in a fixed order
	cmd.Dir = "testdata/fixture"
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=", "CGO_ENABLED=0")
	stream, _ := cmd.CombinedOutput() // fails: it has failing tests
	if !bytes.Contains(stream, []byte(`"Action":"fail"`)) {
		t.Fatalf("go test -json gave no failure:\n%s", stream)
	}
	var out, log bytes.Buffer
	r := newReport(&out, &log, "/tmp/run.log")
	if err := r.read(bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	totals := r.finish()
	if !r.failed() {
		t.Error("failed() = false for a run with failures")
	}
	if want := "3 passed, 2 failed, 1 skipped"; totals != want {
		t.Errorf("totals %q, want %q", totals, want)
	}
	got := regexp.MustCompile(`\d+\.\d+s`).ReplaceAllString(out.String(), "T")
	golden := filepath.Join("testdata", "report.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, string(want)); diff != "" {
		t.Errorf("report (-got +want)\n%s", diff)
	}
	for _, s := range []string{"lxc-start debug line 0 ", "lxc-start debug line 199 ", "printed by the row", "undefined: undefined"} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("the log lacks %q", s)
		}
	}
	if strings.Contains(out.String(), "debug line 100 ") {
		t.Error("the report shows a whole debug dump")
	}
}

// TestReportPassing: a run without failures is not failed and says so in its totals.
func TestReportPassing(t *testing.T) {
	stream := `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"pass","Package":"p","Test":"TestA","Elapsed":0}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.1s\n"}
{"Action":"pass","Package":"p","Elapsed":0.1}
`
	var out, log bytes.Buffer
	r := newReport(&out, &log, "L")
	if err := r.read(strings.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	if totals := r.finish(); totals != "1 passed, 0 failed, 0 skipped" || r.failed() {
		t.Errorf("totals %q failed %v\n%s", totals, r.failed(), out.String())
	}
}
