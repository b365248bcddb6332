package pveconf

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestUnified(t *testing.T) {
	tests := []struct {
		name, a, b, want string
	}{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"replace middle", "1\n2\n3\n4\n5\n6\n7\n8\n9\n", "1\n2\n3\n4\nX\n6\n7\n8\n9\n",
			"--- old\n+++ new\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+X\n 6\n 7\n 8\n"},
		{"append", "a\nb\n", "a\nb\nc\n", "--- old\n+++ new\n@@ -1,2 +1,3 @@\n a\n b\n+c\n"},
		{"from empty", "", "a\n", "--- old\n+++ new\n@@ -0,0 +1 @@\n+a\n"},
		{"to empty", "a\n", "", "--- old\n+++ new\n@@ -1 +0,0 @@\n-a\n"},
		{"no final newline", "a\nb", "a\nb\nc", "--- old\n+++ new\n@@ -1,2 +1,3 @@\n a\n-b\n\\ No newline at end of file\n+b\n+c\n\\ No newline at end of file\n"},
		{"two hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "X\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\nY\n",
			"--- old\n+++ new\n@@ -1,4 +1,4 @@\n-1\n+X\n 2\n 3\n 4\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+Y\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Unified("old", "new", []byte(tt.a), []byte(tt.b))
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

// apply rebuilds both texts from an edit script.
func apply(edits []Edit) (string, string) {
	var a, b strings.Builder
	for _, e := range edits {
		line := e.Text
		if !e.NoEOL {
			line += "\n"
		}
		if e.Op != Insert {
			a.WriteString(line)
		}
		if e.Op != Delete {
			b.WriteString(line)
		}
	}
	return a.String(), b.String()
}

func FuzzEdits(f *testing.F) {
	f.Add([]byte("a\nb\nc\n"), []byte("a\nc\nd\n"))
	f.Add([]byte("x"), []byte(""))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if strings.Contains(string(a)+string(b), "\r") {
			return // Edit.Text drops "\r\n" to "\n"; covered elsewhere
		}
		edits := Edits(a, b)
		ga, gb := apply(edits)
		if ga != string(a) || gb != string(b) {
			t.Fatalf("edits do not rebuild the inputs:\n%q -> %q\n%q -> %q", a, ga, b, gb)
		}
		oldN, newN := 0, 0
		for _, e := range edits {
			if e.Op != Insert {
				oldN++
				if e.OldLine != oldN {
					t.Fatalf("old line %d numbered %d", oldN, e.OldLine)
				}
			}
			if e.Op != Delete {
				newN++
				if e.NewLine != newN {
					t.Fatalf("new line %d numbered %d", newN, e.NewLine)
				}
			}
		}
	})
}
