package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDebianVersion: git describe output maps to a valid Debian version that sorts as the
// history does; bad input is refused naming what to do.
func TestDebianVersion(t *testing.T) {
	tests := []struct {
		name     string
		describe string
		commits  int
		want     string
		wantErr  string
	}{
		{"release", "v1.2.3-0-gabc1234", 0, "1.2.3", ""},
		{"after release", "v1.2.3-4-gabc1234", 0, "1.2.3+git4.gabc1234", ""},
		{"release candidate", "v1.2.3-rc1-0-gabc1234", 0, "1.2.3~rc1", ""},
		{"after release candidate", "v1.2.3-rc.1-2-gabc1234", 0, "1.2.3~rc.1+git2.gabc1234", ""},
		{"no tag", "d0306b5", 260, "0~git260.gd0306b5", ""},
		{"no tag dirty", "d0306b5-dirty", 260, "0~git260.gd0306b5+dirty", ""},
		{"release dirty", "v2.0.0-0-gabc1234-dirty", 0, "2.0.0+dirty", ""},
		{"empty", "", 0, "", "--describe is empty"},
		{"no tag no count", "d0306b5", 0, "", "give --commits"},
		{"not a version tag", "vnext-0-gabc1234", 0, "", "not a valid Debian version"},
		{"short describe", "v1.2.3", 0, "", "not git describe --tags --long"},
		{"bad count", "v1.2.3-x-gabc1234", 0, "", "is not a commit count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DebianVersion(tt.describe, tt.commits)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DebianVersion(%q) = %q, %v; want an error with %q", tt.describe, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DebianVersion(%q) = %q, %v; want %q", tt.describe, got, err, tt.want)
			}
		})
	}
}

// TestDebianVersionsSort: dpkg itself orders the mapped versions as the history goes.
func TestDebianVersionsSort(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg here")
	}
	order := []string{"d0306b5@5", "v0.9.0-rc1-0-gaaa", "v0.9.0-rc1-3-gbbb", "v0.9.0-0-gccc", "v0.9.0-7-gddd", "v0.10.0-0-geee"}
	var prev string
	for _, o := range order {
		describe, commits := o, 0
		if i := strings.Index(o, "@"); i >= 0 {
			describe, commits = o[:i], 5
		}
		v, err := DebianVersion(describe, commits)
		if err != nil {
			t.Fatal(err)
		}
		if prev != "" {
			if err := exec.Command("dpkg", "--compare-versions", prev, "lt", v).Run(); err != nil {
				t.Errorf("dpkg: %s is not before %s", prev, v)
			}
		}
		prev = v
	}
}
