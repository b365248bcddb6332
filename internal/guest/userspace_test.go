package guest

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestUserspaceDriver(t *testing.T) {
	const lib = "/usr/lib/x86_64-linux-gnu"
	cache := func(path string) []byte {
		return encodeLdCache([]LdCacheEntry{
			{Flags: x8664, Key: "libc.so.6", Value: lib + "/libc.so.6"},
			{Flags: x8664, Key: NVMLSoname, Value: path},
		}, binary.LittleEndian, -1)
	}
	tests := []struct {
		name  string
		setup func(f *tree)
		want  NVML
		err   error
	}{
		{
			name: "ld.so.cache entry, merged /usr, relative link",
			setup: func(f *tree) {
				f.symlink("lib", "usr/lib")
				f.file("etc/ld.so.cache", string(cache("/lib/x86_64-linux-gnu/libnvidia-ml.so.1")))
				f.symlink(lib+"/libnvidia-ml.so.1", "libnvidia-ml.so.580.159.04")
				f.file(lib+"/libnvidia-ml.so.580.159.04", "ELF")
			},
			want: NVML{Version: "580.159.04", Path: lib + "/libnvidia-ml.so.580.159.04"},
		},
		{
			name: "ld.so.cache wins over the standard directories",
			setup: func(f *tree) {
				f.file("etc/ld.so.cache", string(cache("/opt/nv/libnvidia-ml.so.1")))
				f.symlink("opt/nv/libnvidia-ml.so.1", "/opt/nv/libnvidia-ml.so.580.126.09")
				f.file("opt/nv/libnvidia-ml.so.580.126.09", "ELF")
				f.symlink(lib+"/libnvidia-ml.so.1", "libnvidia-ml.so.580.159.04")
				f.file(lib+"/libnvidia-ml.so.580.159.04", "ELF")
			},
			want: NVML{Version: "580.126.09", Path: "/opt/nv/libnvidia-ml.so.580.126.09"},
		},
		{
			name: "stale cache entry falls back to the directories",
			setup: func(f *tree) {
				f.file("etc/ld.so.cache", string(cache("/opt/gone/libnvidia-ml.so.1")))
				f.symlink("usr/local/nvidia/lib64/libnvidia-ml.so.1", "libnvidia-ml.so.580.159.04")
				f.file("usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04", "ELF")
			},
			want: NVML{Version: "580.159.04", Path: "/usr/local/nvidia/lib64/libnvidia-ml.so.580.159.04"},
		},
		{
			name: "no cache, two-step link chain",
			setup: func(f *tree) {
				f.symlink(lib+"/libnvidia-ml.so.1", "libnvidia-ml.so")
				f.symlink(lib+"/libnvidia-ml.so", "libnvidia-ml.so.535.104.05")
				f.file(lib+"/libnvidia-ml.so.535.104.05", "ELF")
			},
			want: NVML{Version: "535.104.05", Path: lib + "/libnvidia-ml.so.535.104.05"},
		},
		{
			name: "copied libnvidia-ml.so.1 named by the versioned file beside it",
			setup: func(f *tree) {
				f.file(lib+"/libnvidia-ml.so.1", "ELF")
				f.file(lib+"/libnvidia-ml.so.550.54.14", "ELF")
			},
			want: NVML{Version: "550.54.14", Path: lib + "/libnvidia-ml.so.1"},
		},
		{
			name: "lone versioned file (ldconfig never ran)",
			setup: func(f *tree) {
				f.file("usr/lib64/libnvidia-ml.so.550.54.14", "ELF")
			},
			want: NVML{Version: "550.54.14", Path: "/usr/lib64/libnvidia-ml.so.550.54.14"},
		},
		{
			name:  "not installed",
			setup: func(f *tree) { f.file("etc/ld.so.cache", string(cache(lib+"/libnvidia-ml.so.1"))) },
			err:   ErrNVMLNotInstalled,
		},
		{
			name:  "garbage cache, not installed",
			setup: func(f *tree) { f.file("etc/ld.so.cache", "garbage") },
			err:   ErrNVMLNotInstalled,
		},
		{
			name: "link loop",
			setup: func(f *tree) {
				f.symlink(lib+"/libnvidia-ml.so.1", "loop")
				f.symlink(lib+"/loop", "libnvidia-ml.so.1")
			},
			err: errLinks,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newTree(t)
			tc.setup(f)
			got, err := f.paths().UserspaceDriver()
			if tc.err == errLinks {
				if err == nil || !contains(err.Error(), "too many levels of symbolic links") {
					t.Fatalf("UserspaceDriver error = %v, want a link loop", err)
				}
				return
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("UserspaceDriver error = %v, want %v", err, tc.err)
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("UserspaceDriver (-got +want):\n%s", diff)
			}
		})
	}
}

var errLinks = errors.New("link loop")
