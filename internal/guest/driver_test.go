package guest

import (
	"errors"
	"testing"
)

const (
	procVersionOpen = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22-I3-AF03-09-1)  Thu Oct  2 01:00:00 UTC 2025\nGCC version:  gcc version 13.3.0 (Ubuntu 13.3.0-6ubuntu2~24.04)\n"
	procVersionProp = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
)

func TestParseKernelVersion(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
		err  error
	}{
		{name: "open kernel module", in: procVersionOpen, want: "580.159.04"},
		{name: "proprietary module", in: procVersionProp, want: "535.104.05"},
		{name: "two part version", in: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  418.87  Thu Aug  8 15:35:46 CDT 2019\n", want: "418.87"},
		{name: "line not first", in: "\nNVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22\n", want: "550.54.14"},
		{name: "no version on the line", in: "NVRM version: NVIDIA UNIX x86_64 Kernel Module\n", err: ErrNoVersion},
		{name: "no NVRM line", in: "GCC version: gcc 12\n", err: ErrNoVersion},
		{name: "empty", in: "", err: ErrNoVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKernelVersion([]byte(tc.in))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Errorf("ParseKernelVersion = %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzParseKernelVersion(f *testing.F) {
	f.Add([]byte(procVersionOpen))
	f.Add([]byte(procVersionProp))
	f.Add([]byte("NVRM version: 1.2.3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseKernelVersion(b)
		if err == nil && !versionRE.MatchString(v) {
			t.Fatalf("ParseKernelVersion returned %q, not a version", v)
		}
	})
}
