package runtime

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"gpupass/internal/runner"
)

// loadTranscript reads testdata/<name> (format: testdata/pct/README.md; name is
// "pve-lab/<file>" for the real pct's transcripts recorded on the lab, "pct/<file>" for the
// few kept hand-written) into a Fake and returns the commands it holds, in order.
func loadTranscript(t *testing.T, name string) (*runner.Fake, []string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fake := &runner.Fake{Responses: map[string][]runner.Response{}}
	var cmds []string
	var cur *runner.Response
	flush := func() {
		if cur != nil {
			k := cmds[len(cmds)-1]
			fake.Responses[k] = append(fake.Responses[k], *cur)
		}
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "$ "):
			flush()
			cmds = append(cmds, strings.TrimPrefix(line, "$ "))
			cur = &runner.Response{}
		case cur == nil && strings.HasPrefix(line, "#"):
		case cur == nil:
			t.Fatalf("%s:%d: output before the first command", path, n)
		case strings.HasPrefix(line, "! "):
			cur.Stderr += strings.TrimPrefix(line, "! ") + "\n"
		case strings.HasPrefix(line, "= "):
			code, err := strconv.Atoi(strings.TrimPrefix(line, "= "))
			if err != nil {
				t.Fatalf("%s:%d: exit code: %v", path, n, err)
			}
			cur.ExitCode = code
		default:
			cur.Stdout += line + "\n"
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	return fake, cmds
}
