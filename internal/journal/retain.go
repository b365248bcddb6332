package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// SaveBackup writes the config's bytes before an apply to dir (fsynced, the file and the
// directory) as <name>.<stamp>.bak and returns its path. It is written before the intent
// that names it.
func (j *Journal) SaveBackup(dir, name string, b []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("back up config: %w", err)
	}
	stamp := j.now().UTC().Format("20060102T150405.000000000Z")
	base := filepath.Join(dir, name+"."+stamp)
	for i := 0; ; i++ {
		p := base + ".bak"
		if i > 0 {
			p = fmt.Sprintf("%s.%d.bak", base, i)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("back up config: %w", err)
		}
		_, werr := f.Write(b)
		serr := f.Sync()
		cerr := f.Close()
		if err := errors.Join(werr, serr, cerr); err != nil {
			_ = os.Remove(p)
			return "", fmt.Errorf("back up config to %s: %w", p, err)
		}
		return p, syncDir(dir)
	}
}

// Prune bounds the finished operations of container in done/ and the files of
// backupDir (its config backups): a file goes only when it is not among the newest Keep
// and is older than KeepFor. Files named in protect (the backups of unfinished
// operations) always stay. It returns how many files it removed.
func (j *Journal) Prune(container, backupDir string, protect map[string]bool) (int, error) {
	if j.Keep <= 0 {
		return 0, nil
	}
	var errs []error
	removed := 0
	prefixOK := func(name string) bool { return ContainerOfName(name) == Sanitize(container) }
	n, err := j.pruneDir(j.DoneDir(), func(name string) bool { return strings.HasSuffix(name, ".jsonl") && prefixOK(name) }, protect)
	removed += n
	errs = append(errs, err)
	if backupDir != "" {
		n, err = j.pruneDir(backupDir, func(name string) bool { return strings.HasSuffix(name, ".bak") }, protect)
		removed += n
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

func (j *Journal) pruneDir(dir string, match func(string) bool, protect map[string]bool) (int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("prune %s: %w", dir, err)
	}
	type file struct {
		path string
		mod  time.Time
	}
	var files []file
	for _, de := range ents {
		if de.IsDir() || !match(de.Name()) {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		files = append(files, file{filepath.Join(dir, de.Name()), fi.ModTime()})
	}
	// Newest first: by time, then by name (names carry a timestamp).
	sort.Slice(files, func(a, b int) bool {
		if !files[a].mod.Equal(files[b].mod) {
			return files[a].mod.After(files[b].mod)
		}
		return files[a].path > files[b].path
	})
	cutoff := j.now().Add(-j.KeepFor)
	removed := 0
	var errs []error
	for i, f := range files {
		if i < j.Keep || f.mod.After(cutoff) || protect[f.path] {
			continue
		}
		if err := os.Remove(f.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("prune %s: %w", f.path, err))
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
