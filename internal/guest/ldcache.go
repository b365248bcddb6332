package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
)

// LdCacheEntry is one library the dynamic linker knows from /etc/ld.so.cache.
type LdCacheEntry struct {
	Flags int32  // FLAG_ELF_LIBC6 | an architecture flag, e.g. 0x0303 on x86-64
	Key   string // the soname, e.g. libnvidia-ml.so.1
	Value string // the path, e.g. /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
	HWCap uint64 // non-zero for glibc-hwcaps subdirectory entries
}

// ErrLdCacheFormat means the bytes are not an ld.so.cache this parser understands.
var ErrLdCacheFormat = errors.New("unsupported ld.so.cache format")

const (
	ldMagicNew     = "glibc-ld.so.cache1.1"
	ldMagicOld     = "ld.so-1.7.0"
	ldHeaderNew    = 48 // magic+version 20, nlibs 4, len_strings 4, flags 1, pad 3, extension_offset 4, unused 12
	ldEntryNew     = 24 // flags 4, key 4, value 4, osversion 4, hwcap 8
	ldHeaderOld    = 16 // magic+version 11, pad 1, nlibs 4
	ldEntryOld     = 12 // flags 4, key 4, value 4
	ldMaxString    = 4096
	ldEndianUnset  = 0
	ldEndianLittle = 2
	ldEndianBig    = 3

	// FlagELFLibc6 is the type of every glibc library entry.
	FlagELFLibc6 = 0x0003
)

// ldArchFlags are the exact entry flags glibc's _dl_cache_check_flags accepts per
// architecture (FLAG_ELF_LIBC6 | FLAG_<ARCH>_LIB64).
var ldArchFlags = map[string]int32{
	"amd64":   FlagELFLibc6 | 0x0300,
	"arm64":   FlagELFLibc6 | 0x0a00,
	"ppc64le": FlagELFLibc6 | 0x0500,
	"s390x":   FlagELFLibc6 | 0x0400,
	"riscv64": FlagELFLibc6 | 0x1000,
	"386":     FlagELFLibc6,
}

// ParseLdCache parses /etc/ld.so.cache in the format glibc has written since 2.32
// ("glibc-ld.so.cache1.1"), alone or appended to the old "ld.so-1.7.0" table as older
// ldconfig versions wrote it. String offsets are relative to the new-format header.
func ParseLdCache(b []byte) ([]LdCacheEntry, error) {
	if bytes.HasPrefix(b, []byte(ldMagicOld)) {
		if len(b) < ldHeaderOld {
			return nil, fmt.Errorf("old header truncated: %w", ErrLdCacheFormat)
		}
		n := uint64(binary.NativeEndian.Uint32(b[12:16]))
		off := uint64(ldHeaderOld) + n*ldEntryOld
		off = (off + 7) &^ 7 // ALIGN_CACHE: the new table is 8-byte aligned
		if off >= uint64(len(b)) {
			return nil, fmt.Errorf("old format without the new table (run ldconfig): %w", ErrLdCacheFormat)
		}
		b = b[off:]
	}
	if !bytes.HasPrefix(b, []byte(ldMagicNew)) || len(b) < ldHeaderNew {
		return nil, fmt.Errorf("no %q header: %w", ldMagicNew, ErrLdCacheFormat)
	}
	var bo binary.ByteOrder
	switch b[28] {
	case ldEndianLittle:
		bo = binary.LittleEndian
	case ldEndianBig:
		bo = binary.BigEndian
	case ldEndianUnset:
		bo = binary.NativeEndian
	default:
		return nil, fmt.Errorf("endianness flag %d: %w", b[28], ErrLdCacheFormat)
	}
	n := uint64(bo.Uint32(b[20:24]))
	if n > uint64(len(b)-ldHeaderNew)/ldEntryNew {
		return nil, fmt.Errorf("%d entries do not fit in %d bytes: %w", n, len(b), ErrLdCacheFormat)
	}
	entries := make([]LdCacheEntry, 0, n)
	for i := uint64(0); i < n; i++ {
		e := b[ldHeaderNew+i*ldEntryNew:]
		key, err := ldString(b, bo.Uint32(e[4:8]))
		if err != nil {
			return nil, fmt.Errorf("entry %d key: %w", i, err)
		}
		value, err := ldString(b, bo.Uint32(e[8:12]))
		if err != nil {
			return nil, fmt.Errorf("entry %d value: %w", i, err)
		}
		entries = append(entries, LdCacheEntry{
			Flags: int32(bo.Uint32(e[0:4])),
			Key:   key,
			Value: value,
			HWCap: bo.Uint64(e[16:24]),
		})
	}
	return entries, nil
}

// ldString reads the NUL-terminated string at off.
func ldString(b []byte, off uint32) (string, error) {
	if uint64(off) >= uint64(len(b)) {
		return "", fmt.Errorf("string offset %d beyond %d bytes: %w", off, len(b), ErrLdCacheFormat)
	}
	s := b[off:]
	if len(s) > ldMaxString {
		s = s[:ldMaxString]
	}
	end := bytes.IndexByte(s, 0)
	if end < 0 {
		return "", fmt.Errorf("string at %d not terminated: %w", off, ErrLdCacheFormat)
	}
	return string(s[:end]), nil
}

// LookupLdCache returns the path the dynamic linker of this architecture would load for
// soname: the first entry with exactly this architecture's flags, preferring entries
// outside glibc-hwcaps subdirectories. ok is false when there is none.
func LookupLdCache(entries []LdCacheEntry, soname string) (path string, ok bool) {
	want, known := ldArchFlags[runtime.GOARCH]
	fallback := ""
	for _, e := range entries {
		if e.Key != soname || (known && e.Flags != want) {
			continue
		}
		if e.HWCap == 0 {
			return e.Value, true
		}
		if fallback == "" {
			fallback = e.Value
		}
	}
	return fallback, fallback != ""
}
