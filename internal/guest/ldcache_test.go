package guest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// encodeLdCache writes entries in the "glibc-ld.so.cache1.1" format, after the old
// "ld.so-1.7.0" table with oldEntries dummy entries when oldEntries >= 0.
func encodeLdCache(entries []LdCacheEntry, bo binary.ByteOrder, oldEntries int) []byte {
	var strs bytes.Buffer
	strOff := map[string]uint32{}
	base := uint32(ldHeaderNew + ldEntryNew*len(entries))
	intern := func(s string) uint32 {
		if off, ok := strOff[s]; ok {
			return off
		}
		off := base + uint32(strs.Len())
		strs.WriteString(s)
		strs.WriteByte(0)
		strOff[s] = off
		return off
	}
	type raw struct{ flags, key, value uint32 }
	raws := make([]raw, len(entries))
	for i, e := range entries {
		raws[i] = raw{uint32(e.Flags), intern(e.Key), intern(e.Value)}
	}
	var b bytes.Buffer
	b.WriteString(ldMagicNew)
	binary.Write(&b, bo, uint32(len(entries)))
	binary.Write(&b, bo, uint32(strs.Len()))
	flag := byte(ldEndianLittle)
	if bo == binary.BigEndian {
		flag = ldEndianBig
	}
	b.Write([]byte{flag, 0, 0, 0})
	b.Write(make([]byte, 16)) // extension_offset, unused[3]
	for i, r := range raws {
		binary.Write(&b, bo, r.flags)
		binary.Write(&b, bo, r.key)
		binary.Write(&b, bo, r.value)
		binary.Write(&b, bo, uint32(0))
		binary.Write(&b, bo, entries[i].HWCap)
	}
	b.Write(strs.Bytes())
	if oldEntries < 0 {
		return b.Bytes()
	}
	var old bytes.Buffer
	old.WriteString(ldMagicOld)
	old.WriteByte(0)
	binary.Write(&old, binary.NativeEndian, uint32(oldEntries))
	old.Write(make([]byte, ldEntryOld*oldEntries))
	for old.Len()%8 != 0 {
		old.WriteByte(0)
	}
	return append(old.Bytes(), b.Bytes()...)
}

var x8664 = int32(FlagELFLibc6 | 0x0300)

var sampleEntries = []LdCacheEntry{
	{Flags: x8664, Key: "libz.so.1", Value: "/lib/x86_64-linux-gnu/libz.so.1"},
	{Flags: FlagELFLibc6, Key: "libnvidia-ml.so.1", Value: "/usr/lib/i386-linux-gnu/libnvidia-ml.so.1"},
	{Flags: x8664, Key: "libnvidia-ml.so.1", Value: "/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3/libnvidia-ml.so.1", HWCap: 1 << 62},
	{Flags: x8664, Key: "libnvidia-ml.so.1", Value: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"},
}

func TestParseLdCacheSynthetic(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want []LdCacheEntry
		err  error
	}{
		{name: "new format little endian", in: encodeLdCache(sampleEntries, binary.LittleEndian, -1), want: sampleEntries},
		{name: "new format big endian", in: encodeLdCache(sampleEntries, binary.BigEndian, -1), want: sampleEntries},
		{name: "old table then new", in: encodeLdCache(sampleEntries, binary.LittleEndian, 3), want: sampleEntries},
		{name: "old table aligned", in: encodeLdCache(sampleEntries, binary.LittleEndian, 2), want: sampleEntries},
		{name: "empty cache", in: encodeLdCache(nil, binary.LittleEndian, -1), want: []LdCacheEntry{}},
		{name: "empty input", in: nil, err: ErrLdCacheFormat},
		{name: "garbage", in: []byte("not a cache at all, not at all......................................"), err: ErrLdCacheFormat},
		{name: "old format only", in: encodeLdCache(nil, binary.LittleEndian, 4)[:ldHeaderOld+4*ldEntryOld], err: ErrLdCacheFormat},
		{name: "truncated header", in: encodeLdCache(sampleEntries, binary.LittleEndian, -1)[:30], err: ErrLdCacheFormat},
		{name: "truncated entries", in: encodeLdCache(sampleEntries, binary.LittleEndian, -1)[:ldHeaderNew+ldEntryNew+3], err: ErrLdCacheFormat},
		{name: "truncated strings", in: encodeLdCache(sampleEntries, binary.LittleEndian, -1)[:ldHeaderNew+4*ldEntryNew+5], err: ErrLdCacheFormat},
		{name: "bad endian flag", in: func() []byte {
			b := encodeLdCache(sampleEntries, binary.LittleEndian, -1)
			b[28] = 1
			return b
		}(), err: ErrLdCacheFormat},
		{name: "huge entry count", in: func() []byte {
			b := encodeLdCache(sampleEntries, binary.LittleEndian, -1)
			binary.LittleEndian.PutUint32(b[20:], 0xffffffff)
			return b
		}(), err: ErrLdCacheFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLdCache(tc.in)
			if !errors.Is(err, tc.err) {
				t.Fatalf("ParseLdCache error = %v, want %v", err, tc.err)
			}
			if diff := cmp.Diff(got, tc.want); tc.err == nil && diff != "" {
				t.Errorf("ParseLdCache (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLookupLdCache(t *testing.T) {
	if _, known := ldArchFlags["amd64"]; !known {
		t.Fatal("amd64 flags missing")
	}
	got, ok := LookupLdCache(sampleEntries, NVMLSoname)
	want := "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
	if testingArch() != "amd64" {
		t.Skipf("expectations written for amd64, running on %s", testingArch())
	}
	if !ok || got != want {
		t.Errorf("LookupLdCache = %q, %v; want %q (the x86-64 entry outside glibc-hwcaps)", got, ok, want)
	}
	if got, ok := LookupLdCache(sampleEntries[:3], NVMLSoname); !ok || !strings.Contains(got, "glibc-hwcaps") {
		t.Errorf("LookupLdCache without a plain entry = %q, %v; want the hwcaps one", got, ok)
	}
	if got, ok := LookupLdCache(sampleEntries[:2], NVMLSoname); ok {
		t.Errorf("LookupLdCache with only an i386 entry = %q; want none", got)
	}
}

// TestParseLdCacheReal parses this machine's cache and compares it with `ldconfig -p`.
func TestParseLdCacheReal(t *testing.T) {
	b, err := os.ReadFile("/etc/ld.so.cache")
	if err != nil {
		t.Skipf("no /etc/ld.so.cache here: %v", err)
	}
	entries, err := ParseLdCache(b)
	if err != nil {
		t.Fatalf("ParseLdCache(/etc/ld.so.cache): %v", err)
	}
	out, err := exec.Command("ldconfig", "-p").Output()
	if err != nil {
		t.Skipf("ldconfig -p: %v", err)
	}
	// ldconfig -p prints "\tKEY (FLAGS...) => VALUE" per entry, in cache order.
	var want []string
	for _, line := range strings.Split(string(out), "\n")[1:] {
		key, rest, ok := strings.Cut(strings.TrimSpace(line), " (")
		if !ok {
			continue
		}
		_, value, ok := strings.Cut(rest, " => ")
		if !ok {
			continue // the "Cache generated by" trailer
		}
		want = append(want, key+" => "+value)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Key+" => "+e.Value)
	}
	if len(got) == 0 {
		t.Fatal("no entries parsed")
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("entries vs ldconfig -p (-got +want):\n%s", diff)
	}
	libc, ok := LookupLdCache(entries, "libc.so.6")
	if !ok || !strings.HasSuffix(libc, "/libc.so.6") {
		t.Errorf("LookupLdCache(libc.so.6) = %q, %v", libc, ok)
	}
}

func FuzzParseLdCache(f *testing.F) {
	f.Add(encodeLdCache(sampleEntries, binary.LittleEndian, -1))
	f.Add(encodeLdCache(sampleEntries, binary.BigEndian, 2))
	f.Add(encodeLdCache(nil, binary.LittleEndian, -1))
	f.Add([]byte(ldMagicOld))
	f.Add([]byte(ldMagicNew))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := ParseLdCache(b)
		if err != nil {
			return
		}
		// Round trip: what parsed re-encodes to a cache that parses to the same entries.
		again, err := ParseLdCache(encodeLdCache(entries, binary.LittleEndian, -1))
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if diff := cmp.Diff(again, entries); diff != "" {
			t.Fatalf("round trip (-got +want):\n%s", diff)
		}
	})
}
