package observe

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoProcess means /proc/<pid> is gone: the container stopped or the pid is wrong.
var ErrNoProcess = errors.New("process not found")

// Mount is one line of /proc/<pid>/mountinfo (proc(5)), paths unescaped.
type Mount struct {
	ID, ParentID int
	Major, Minor uint32   // st_dev of the mounted filesystem
	Root         string   // path within that filesystem that is mounted (the bind source)
	Target       string   // mount point, relative to the process's root
	Options      string   // per-mount options
	Optional     []string // shared:N, master:N, propagate_from:N, unbindable
	FSType       string
	Source       string // filesystem-specific source ("none" for many)
	SuperOptions string
}

// MajorMinor is "major:minor" of the mounted filesystem.
func (m Mount) MajorMinor() string { return fmt.Sprintf("%d:%d", m.Major, m.Minor) }

// ParseMountinfo parses the contents of a mountinfo file. Fields are separated by single
// spaces and lines by newlines, exactly as the kernel writes them: other whitespace (a
// carriage return, a vertical tab) is part of a path, since the kernel escapes only
// space, tab, newline and backslash.
func ParseMountinfo(b []byte) ([]Mount, error) {
	var mounts []Mount
	for n, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		m, err := parseMountLine(line)
		if err != nil {
			return nil, fmt.Errorf("parse mountinfo line %d: %w", n+1, err)
		}
		mounts = append(mounts, m)
	}
	return mounts, nil
}

func parseMountLine(line string) (Mount, error) {
	f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' })
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 7 || sep < 0 || len(f) < sep+3 {
		return Mount{}, fmt.Errorf("%q: want ID PARENT MAJ:MIN ROOT TARGET OPTIONS [OPTIONAL...] - FSTYPE SOURCE [SUPEROPTIONS]", line)
	}
	var m Mount
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return Mount{}, fmt.Errorf("mount id %q: %w", f[0], err)
	}
	if m.ParentID, err = strconv.Atoi(f[1]); err != nil {
		return Mount{}, fmt.Errorf("parent id %q: %w", f[1], err)
	}
	if m.Major, m.Minor, err = parseMajorMinor(f[2]); err != nil {
		return Mount{}, err
	}
	if m.Root, err = unescape(f[3]); err != nil {
		return Mount{}, err
	}
	if m.Target, err = unescape(f[4]); err != nil {
		return Mount{}, err
	}
	m.Options = f[5]
	if sep > 6 {
		m.Optional = append([]string(nil), f[6:sep]...)
	}
	if m.FSType, err = unescape(f[sep+1]); err != nil {
		return Mount{}, err
	}
	if m.Source, err = unescape(f[sep+2]); err != nil {
		return Mount{}, err
	}
	if len(f) > sep+3 {
		m.SuperOptions = f[sep+3]
	}
	return m, nil
}

func parseMajorMinor(s string) (uint32, uint32, error) {
	a, b, ok := strings.Cut(s, ":")
	maj, err1 := strconv.ParseUint(a, 10, 32)
	min, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("major:minor %q: want two numbers", s)
	}
	return uint32(maj), uint32(min), nil
}

var errEscape = errors.New("bad octal escape")

// unescape undoes the kernel's \ooo escaping of space, tab, newline and backslash.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("%q: %w", s, errEscape)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("%q: %w", s, errEscape)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

// Mounts returns the mounts of pid from <procRoot>/<pid>/mountinfo, targets relative to
// that process's root.
func Mounts(procRoot string, pid int) ([]Mount, error) {
	p := filepath.Join(procRoot, strconv.Itoa(pid), "mountinfo")
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", p, ErrNoProcess)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", p, err)
	}
	ms, err := ParseMountinfo(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	return ms, nil
}

// Serving returns the mount that containerPath lives on: the last mounted entry whose
// target is the longest prefix of the path.
func Serving(mounts []Mount, containerPath string) (Mount, bool) {
	p := path.Clean("/" + containerPath)
	best, found := Mount{}, false
	for _, m := range mounts {
		t := path.Clean(m.Target)
		if !(t == p || t == "/" || strings.HasPrefix(p, t+"/")) {
			continue
		}
		if !found || len(t) >= len(path.Clean(best.Target)) {
			best, found = m, true
		}
	}
	return best, found
}
