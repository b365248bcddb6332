package gpu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		name, in string
		want     Version
		wantErr  bool
	}{
		{"open", "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Mon Oct 13 17:21:35 UTC 2025\nGCC version:  gcc\n",
			Version{"580.159.04", "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Mon Oct 13 17:21:35 UTC 2025", true}, false},
		{"proprietary", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n",
			Version{"550.54.14", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024", false}, false},
		{"two fields", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.157  Wed Oct 12 09:19:07 UTC 2022", Version{"390.157", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  390.157  Wed Oct 12 09:19:07 UTC 2022", false}, false},
		{"no line", "GCC version: 12\n", Version{}, true},
		{"no number", "NVRM version: NVIDIA UNIX Kernel Module\n", Version{}, true},
		{"empty", "", Version{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseVersion([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

func TestParseDevices(t *testing.T) {
	in := "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n195 nvidia\n195 nvidiactl\n511 nvidia-uvm\n\nBlock devices:\n  8 nvidia\n259 blkext\n"
	got, err := ParseDevices([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32][]string{1: {"mem"}, 4: {"/dev/vc/0", "tty"}, 195: {"nvidia", "nvidiactl"}, 511: {"nvidia-uvm"}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("(-got +want):\n%s", diff)
	}
	for _, bad := range []string{"", "195 nvidia\n", "Character devices:\nx nvidia\n", "Character devices:\n195\n", "Character devices:\n99999999999 x\n"} {
		if _, err := ParseDevices([]byte(bad)); err == nil {
			t.Errorf("ParseDevices(%q) accepted", bad)
		}
	}
}

func TestParseInformation(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "h100", "proc/driver/nvidia/gpus/0000:00:06.0/information"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := ParseInformation(b)
	if err != nil {
		t.Fatal(err)
	}
	if g.Model != "NVIDIA H100 80GB HBM3" || g.BusID != "0000:00:06.0" || g.Minor != 0 || g.Excluded {
		t.Errorf("h100 information = %+v", g)
	}
	for name, in := range map[string]string{
		"no minor":  "Model: X\nBus Location: 0000:01:00.0\n",
		"bad minor": "Device Minor: x\n",
		"bad bus":   "Bus Location: 01-00\nDevice Minor: 0\n",
	} {
		if _, err := ParseInformation([]byte(in)); err == nil {
			t.Errorf("%s: accepted %q", name, in)
		}
	}
	g, err = ParseInformation([]byte("GPU UUID: \t GPU-????????-????-????-????-????????????\nGPU Excluded:\t Yes\nDevice Minor: \t 3\n"))
	if err != nil || g.UUID != "" || !g.Excluded || g.Minor != 3 {
		t.Errorf("uninitialised GPU = %+v, %v", g, err)
	}
}

func TestNormalizeBusID(t *testing.T) {
	for in, want := range map[string]string{
		"0000:01:00.0": "0000:01:00.0", "01:00.0": "0000:01:00.0", "0000:0A:00.1": "0000:0a:00.1",
		"00000000:41:00.0": "0000:41:00.0", "0001:c1:00.0": "0001:c1:00.0", " 41:00.0 ": "0000:41:00.0",
		"1:00.0": "", "0000:01:00.8": "", "0000:01:00": "", "zz:00.0": "", "100000000:01:00.0": "", "": "",
	} {
		if got := NormalizeBusID(in); got != want {
			t.Errorf("NormalizeBusID(%q) = %q, want %q", in, got, want)
		}
	}
}

func seeds(f *testing.F, glob string) {
	paths, _ := filepath.Glob(glob)
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(b)
		}
	}
}

func FuzzParseDevices(f *testing.F) {
	seeds(f, "testdata/*/proc/devices")
	f.Add([]byte("Character devices:\n195 nvidia\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseDevices(b)
		if err != nil {
			return
		}
		for _, names := range m {
			for _, n := range names {
				if n == "" || n != strings.TrimSpace(n) {
					t.Fatalf("bad name %q", n)
				}
			}
		}
	})
}

func FuzzParseInformation(f *testing.F) {
	seeds(f, "testdata/*/proc/driver/nvidia/gpus/*/information")
	f.Fuzz(func(t *testing.T, b []byte) {
		g, err := ParseInformation(b)
		if err != nil {
			return
		}
		if g.BusID != "" && NormalizeBusID(g.BusID) != g.BusID {
			t.Fatalf("bus id %q not normalised", g.BusID)
		}
	})
}

func FuzzParseVersion(f *testing.F) {
	seeds(f, "testdata/*/proc/driver/nvidia/version")
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseVersion(b)
		if err != nil {
			return
		}
		if !isVersion(v.Version) || !strings.Contains(v.Line, v.Version) {
			t.Fatalf("version %q from line %q", v.Version, v.Line)
		}
	})
}

func FuzzNormalizeBusID(f *testing.F) {
	for _, s := range []string{"0000:01:00.0", "01:00.0", "00000000:41:00.0", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := NormalizeBusID(s)
		if n != "" && NormalizeBusID(n) != n {
			t.Fatalf("NormalizeBusID not idempotent: %q -> %q -> %q", s, n, NormalizeBusID(n))
		}
	})
}
