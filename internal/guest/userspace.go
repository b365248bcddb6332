package guest

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// NVMLSoname is the library nvidia-smi and CUDA load to talk to the driver.
const NVMLSoname = "libnvidia-ml.so.1"

const nvmlPrefix = "libnvidia-ml.so."

// ErrNVMLNotInstalled means the container has no libnvidia-ml: passthrough works, but the
// template lacks the userspace driver.
var ErrNVMLNotInstalled = errors.New("libnvidia-ml not installed")

// maxLdCache caps how much of /etc/ld.so.cache is read (real ones are tens of KiB).
const maxLdCache = 16 << 20

// maxSymlinks bounds symbolic link resolution, as the kernel's 40 does.
const maxSymlinks = 40

// NVML is the userspace driver library the dynamic linker would load.
type NVML struct {
	Version string // e.g. 580.159.04
	Path    string // the resolved file inside the container, e.g. /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04
}

// UserspaceDriver finds the libnvidia-ml.so.<version> the dynamic linker would load for
// libnvidia-ml.so.1: the ld.so.cache entry first, then the standard directories (LibDirs).
// It returns an error wrapping ErrNVMLNotInstalled when there is none.
func (p Paths) UserspaceDriver() (NVML, error) {
	p = p.withDefaults()
	var candidates []string
	if path, ok := p.ldCacheLookup(NVMLSoname); ok {
		candidates = append(candidates, path)
	}
	for _, d := range p.LibDirs {
		candidates = append(candidates, filepath.Join(d, NVMLSoname))
	}
	var firstErr error
	for _, c := range candidates {
		n, err := p.nvmlAt(c)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return NVML{}, firstErr
	}
	// No libnvidia-ml.so.1 anywhere: a lone libnvidia-ml.so.<version> (ldconfig never ran)
	// still tells which version the template carries.
	for _, d := range p.LibDirs {
		if vs := p.nvmlVersionsIn(d); len(vs) == 1 {
			return NVML{Version: vs[0], Path: filepath.Join(d, nvmlPrefix+vs[0])}, nil
		}
	}
	return NVML{}, fmt.Errorf("find %s in %s and %s: %w", NVMLSoname, p.LdCache, strings.Join(p.LibDirs, ", "), ErrNVMLNotInstalled)
}

// ldCacheMemo remembers the last ld.so.cache lookup, keyed by the file's identity and
// mtime: the agent checks at every heartbeat and the cache rarely changes.
var ldCacheMemo struct {
	sync.Mutex
	key  string
	path string
	ok   bool
}

// ldCacheLookup returns the ld.so.cache entry for soname (ok false: none, or no cache).
func (p Paths) ldCacheLookup(soname string) (string, bool) {
	file := p.host(p.LdCache)
	fi, err := os.Stat(file)
	if err != nil {
		return "", false
	}
	key := fmt.Sprintf("%s|%s|%d|%d|%v", file, soname, fi.Size(), fi.ModTime().UnixNano(), fileID(fi))
	ldCacheMemo.Lock()
	defer ldCacheMemo.Unlock()
	if ldCacheMemo.key == key {
		return ldCacheMemo.path, ldCacheMemo.ok
	}
	path, ok := "", false
	if b, err := readLimited(file, maxLdCache); err == nil {
		if entries, err := ParseLdCache(b); err == nil {
			path, ok = LookupLdCache(entries, soname)
		}
	}
	ldCacheMemo.key, ldCacheMemo.path, ldCacheMemo.ok = key, path, ok
	return path, ok
}

// nvmlAt resolves the in-container path link and reads the version from the name of the
// file it ends at.
func (p Paths) nvmlAt(link string) (NVML, error) {
	final, err := p.resolve(link)
	if err != nil {
		return NVML{}, err
	}
	if fi, err := os.Stat(p.host(final)); err != nil {
		return NVML{}, err
	} else if !fi.Mode().IsRegular() {
		return NVML{}, fmt.Errorf("%s is not a regular file", final)
	}
	if v, ok := strings.CutPrefix(filepath.Base(final), nvmlPrefix); ok && versionRE.MatchString(v) {
		return NVML{Version: v, Path: final}, nil
	}
	// A copied (not linked) libnvidia-ml.so.1: the versioned file beside it names it.
	if vs := p.nvmlVersionsIn(filepath.Dir(final)); len(vs) == 1 {
		return NVML{Version: vs[0], Path: final}, nil
	}
	return NVML{}, fmt.Errorf("tell the version of %s: no single %s<version> beside it", final, nvmlPrefix)
}

// nvmlVersionsIn lists the versions of the libnvidia-ml.so.<version> files in dir.
func (p Paths) nvmlVersionsIn(dir string) []string {
	ents, err := os.ReadDir(p.host(dir))
	if err != nil {
		return nil
	}
	var vs []string
	for _, e := range ents {
		if v, ok := strings.CutPrefix(e.Name(), nvmlPrefix); ok && versionRE.MatchString(v) {
			vs = append(vs, v)
		}
	}
	sort.Strings(vs)
	return vs
}

// resolve follows symbolic links of the in-container path inside Root, the way the
// container's own processes see them (an absolute target is inside the container).
func (p Paths) resolve(path string) (string, error) {
	path = filepath.Clean("/" + path)
	hops := 0
	for {
		dir, err := p.resolveDir(filepath.Dir(path), &hops)
		if err != nil {
			return "", err
		}
		path = filepath.Join(dir, filepath.Base(path))
		next, isLink, err := p.readlink(path)
		if err != nil {
			return "", err
		}
		if !isLink {
			return path, nil
		}
		if hops++; hops > maxSymlinks {
			return "", fmt.Errorf("resolve %s: too many levels of symbolic links", path)
		}
		path = next
	}
}

// resolveDir resolves links in a directory path, component by component.
func (p Paths) resolveDir(dir string, hops *int) (string, error) {
	out := "/"
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		next := filepath.Join(out, c)
		for {
			target, isLink, err := p.readlink(next)
			if err != nil || !isLink {
				break // a missing component shows when the file is read
			}
			if *hops++; *hops > maxSymlinks {
				return "", fmt.Errorf("resolve %s: too many levels of symbolic links", dir)
			}
			next = target
		}
		out = next
	}
	return out, nil
}

// readlink returns the clean in-container target of the link at path, or isLink false.
func (p Paths) readlink(path string) (target string, isLink bool, err error) {
	fi, err := os.Lstat(p.host(path))
	if err != nil {
		return "", false, err
	}
	if fi.Mode()&fs.ModeSymlink == 0 {
		return "", false, nil
	}
	t, err := os.Readlink(p.host(path))
	if err != nil {
		return "", false, err
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(filepath.Dir(path), t)
	}
	return filepath.Clean(t), true, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, limit)
	}
	return b, nil
}
