package pvelab

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// TestUsedTemplateKeepsIt: a template Template or SystemdTemplate hands out again (from
// the cache, usedTemplate) counts as used now, so the next build's prune keeps it though
// four newer ones were built before that use.
func TestUsedTemplateKeepsIt(t *testing.T) {
	dir := t.TempDir()
	name := func(i int) string { return fmt.Sprintf("gpupass-guest-%012x.tar.gz", i) }
	for i := 1; i <= 5; i++ {
		p := filepath.Join(dir, name(i))
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		built := time.Now().Add(-time.Duration(10-i) * 24 * time.Hour) // 1 the oldest
		if err := os.Chtimes(p, built, built); err != nil {
			t.Fatal(err)
		}
	}
	usedTemplate(t, filepath.Join(dir, name(1)))
	removed, err := PruneTemplates(dir, "gpupass-guest-", ".tar.gz", name(5), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(removed)
	want := []string{filepath.Join(dir, name(2)), filepath.Join(dir, name(3))}
	if fmt.Sprint(removed) != fmt.Sprint(want) {
		t.Errorf("removed %v, want %v (the used %s kept)", removed, want, name(1))
	}
}
