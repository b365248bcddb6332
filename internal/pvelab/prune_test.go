package pvelab

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestPruneTemplates: PruneTemplates removes only the lab's own templates of the family,
// keeping the current one, the newest KeepTemplates and those used within KeepUsedWithin;
// PVE's and the user's templates, setup.sh's base template, other families, near-miss
// names, unfinished builds and directories stay. Pure file operations in a temp dir, with
// modification times set explicitly.
func TestPruneTemplates(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	hex := func(i int) string { return fmt.Sprintf("%012x", 0xa0+i) } // 12 hex digits
	guest := func(i int) string { return "gpupass-guest-" + hex(i) + ".tar.gz" }
	others := map[string]time.Duration{ // age of files that are never the family's
		"debian-12-standard_12.7-1_amd64.tar.zst":     30 * day,
		"gpupass-busybox.tar.gz":                      30 * day, // setup.sh's BaseTemplate
		"gpupass-other-" + hex(0) + ".tar.gz":         30 * day, // another family
		"gpupass-guest-" + hex(0) + ".tar.zst":        30 * day, // another suffix
		"gpupass-guest-extra-" + hex(0) + ".tar.gz":   30 * day, // a family named guest-extra
		"gpupass-guest-" + hex(0)[:11] + ".tar.gz":    30 * day, // 11 digits
		"gpupass-guest-0000000000AB.tar.gz":           30 * day, // not lower-case hex
		"gpupass-guest-" + hex(9) + ".tar.gz.tmp4242": 30 * day, // a build under way (or dead)
		"my-gpupass-guest-" + hex(0) + ".tar.gz":      30 * day,
	}
	tests := []struct {
		name    string
		family  map[string]time.Duration // name: age of its modification time (last use)
		current string
		wantRm  []string
	}{
		{
			name: "after a build: the newest three stay, the older go",
			family: map[string]time.Duration{
				guest(1): 0, guest(2): 2 * day, guest(3): 3 * day, guest(4): 4 * day, guest(5): 5 * day,
			},
			current: guest(1),
			wantRm:  []string{guest(4), guest(5)},
		},
		{
			name: "used in the last hour: stays beyond the three",
			family: map[string]time.Duration{
				guest(1): 0, guest(2): time.Minute, guest(3): 2 * time.Minute, guest(4): KeepUsedWithin - time.Second, guest(5): KeepUsedWithin, guest(6): day,
			},
			current: guest(1),
			wantRm:  []string{guest(5), guest(6)},
		},
		{
			name: "current stays though its time is old (clock set back), and counts as one of the three",
			family: map[string]time.Duration{
				guest(1): 10 * day, guest(2): 2 * day, guest(3): 3 * day, guest(4): 4 * day,
			},
			current: guest(1),
			wantRm:  []string{guest(4)},
		},
		{
			name: "equal times: the name decides, the same on every run",
			family: map[string]time.Duration{
				guest(1): 2 * day, guest(2): 2 * day, guest(3): 2 * day, guest(4): 2 * day,
			},
			wantRm: []string{guest(1)},
		},
		{
			name:   "three or fewer: nothing goes",
			family: map[string]time.Duration{guest(1): 0, guest(2): 9 * day, guest(3): 90 * day},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, age := range merge(others, tt.family) {
				p := filepath.Join(dir, n)
				if err := os.WriteFile(p, []byte(n), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(p, now.Add(-age), now.Add(-age)); err != nil {
					t.Fatal(err)
				}
			}
			// A directory with a family name is no template.
			if err := os.Mkdir(filepath.Join(dir, guest(7)), 0o755); err != nil {
				t.Fatal(err)
			}
			removed, err := PruneTemplates(dir, "gpupass-guest-", ".tar.gz", tt.current, now)
			if err != nil {
				t.Fatal(err)
			}
			var wantPaths []string
			for _, n := range tt.wantRm {
				wantPaths = append(wantPaths, filepath.Join(dir, n))
			}
			sort.Strings(removed)
			if diff := cmp.Diff(removed, wantPaths); diff != "" {
				t.Errorf("removed (-got +want):\n%s", diff)
			}
			// What is left on disk: everything but the removed.
			var left []string
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				left = append(left, e.Name())
			}
			var wantLeft []string
			for n := range merge(others, tt.family, map[string]time.Duration{guest(7): 0}) {
				if !contains(tt.wantRm, n) {
					wantLeft = append(wantLeft, n)
				}
			}
			sort.Strings(wantLeft)
			if diff := cmp.Diff(left, wantLeft); diff != "" {
				t.Errorf("left in the directory (-got +want):\n%s", diff)
			}
		})
	}
}

// TestPruneTemplatesRefuses: a prefix that is not the lab's, or a directory that cannot be
// read, is an error naming it, and nothing is removed.
func TestPruneTemplatesRefuses(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "debian-000000000000.tar.gz")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-30 * 24 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, prefix, want string }{
		{dir, "debian-", `prefix "debian-" is not one of the lab's`},
		{filepath.Join(dir, "missing"), "gpupass-guest-", filepath.Join(dir, "missing")},
	} {
		removed, err := PruneTemplates(tc.dir, tc.prefix, ".tar.gz", "", time.Now())
		if err == nil || !strings.Contains(err.Error(), tc.want) || len(removed) > 0 {
			t.Errorf("PruneTemplates(%s, %q) = %v, %v; want an error containing %q", tc.dir, tc.prefix, removed, err, tc.want)
		}
	}
	if _, err := os.Stat(p); err != nil {
		t.Errorf("a file of another prefix is gone: %v", err)
	}
}

func merge(ms ...map[string]time.Duration) map[string]time.Duration {
	out := map[string]time.Duration{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
