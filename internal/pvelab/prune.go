package pvelab

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// What PruneTemplates keeps of one family of the lab's templates: the newest KeepTemplates
// and any used within KeepUsedWithin (a test run that took a template's name a while ago may
// still create containers from it; the e2e suite runs at most 25 minutes).
const (
	KeepTemplates  = 3
	KeepUsedWithin = time.Hour
)

// labTemplate matches the name of a template the lab made: prefix, the 12 hex digits of its
// content hash, suffix. Nothing else in the directory (PVE's own templates, the user's,
// setup.sh's gpupass-busybox.tar.gz, a build's .tmp<pid>) ever matches.
func labTemplate(prefix, suffix string) *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `[0-9a-f]{12}` + regexp.QuoteMeta(suffix) + `$`)
}

// PruneTemplates removes the lab's older templates of one family from dir: the regular
// files named prefix<12 hex digits>suffix (Template's gpupass-<name>-<hash>.tar.gz,
// SystemdTemplate's gpupass-bookworm-systemd-<hash>.tar.zst) other than current, the newest
// KeepTemplates by modification time (Template and SystemdTemplate set it at each use) and
// those used within KeepUsedWithin of now. It returns the paths it removed.
func PruneTemplates(dir, prefix, suffix, current string, now time.Time) ([]string, error) {
	if !strings.HasPrefix(prefix, "gpupass-") {
		return nil, fmt.Errorf("pvelab: prune templates: prefix %q is not one of the lab's (gpupass-...)", prefix)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("pvelab: prune templates: %w", err)
	}
	re := labTemplate(prefix, suffix)
	type tpl struct {
		name string
		used time.Time
	}
	var family []tpl
	for _, e := range entries {
		if !e.Type().IsRegular() || !re.MatchString(e.Name()) || e.Name() == current {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone meanwhile
		}
		family = append(family, tpl{e.Name(), fi.ModTime()})
	}
	// Newest first; the name breaks ties so that the outcome is the same on every run.
	sort.Slice(family, func(i, j int) bool {
		if !family[i].used.Equal(family[j].used) {
			return family[i].used.After(family[j].used)
		}
		return family[i].name > family[j].name
	})
	keep := KeepTemplates
	if current != "" {
		keep-- // current is one of them
	}
	var removed []string
	var errs []string
	for i, f := range family {
		if i < keep || now.Sub(f.used) < KeepUsedWithin {
			continue
		}
		p := filepath.Join(dir, f.name)
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err.Error())
			continue
		}
		removed = append(removed, p)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("pvelab: prune templates: %s", strings.Join(errs, "; "))
	}
	return removed, nil
}
