// Package atomicfile replaces a file's content all at once: a reader sees the old content or
// the new, never a part of either, also after a crash. The host agent's records and apply
// journal, the start records of the runtimes, the controller's certificates and TLS session
// cache, and the guest agent's ready marker and status are written with it.
// (internal/pveconf writes container configs its own way: through pmxcfs, which refuses
// chmod, with fault injection for its tests.)
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write writes b to a temporary file beside path, with mode perm (the umask does not apply),
// fsyncs it, renames it over path and fsyncs the directory. On error path is unchanged and
// the temporary file is gone.
func Write(path string, b []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	err = func() error {
		defer f.Close()
		if err := f.Chmod(perm); err != nil {
			return err
		}
		if _, err := f.Write(b); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		return f.Close()
	}()
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	// The rename is durable once the directory is synced; a filesystem that cannot sync a
	// directory has nothing more to offer.
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
