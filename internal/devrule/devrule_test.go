package devrule

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Rule
	}{
		{"char wildcard minor", "c 195:* rwm", Rule{'c', 195, Wildcard, "rwm"}},
		{"char exact", "c 195:255 rwm", Rule{'c', 195, 255, "rwm"}},
		{"uvm high major", "c 511:1 rw", Rule{'c', 511, 1, "rw"}},
		{"block read", "b 8:0 r", Rule{'b', 8, 0, "r"}},
		{"both wildcards", "c *:* m", Rule{'c', Wildcard, Wildcard, "m"}},
		{"wildcard major", "b *:3 wm", Rule{'b', Wildcard, 3, "wm"}},
		{"all", "a", Rule{'a', Wildcard, Wildcard, "rwm"}},
		{"access order kept", "c 1:3 mrw", Rule{'c', 1, 3, "mrw"}},
		{"zero", "c 0:0 w", Rule{'c', 0, 0, "w"}},
		{"max", "c 4294967295:4294967295 r", Rule{'c', 4294967295, 4294967295, "r"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("Parse(%q) (-got +want):\n%s", tt.in, diff)
			}
			if s := got.String(); s != tt.in {
				t.Errorf("String() = %q, want %q", s, tt.in)
			}
		})
	}
}

func TestParseNonCanonical(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"extra spaces", "  c   195:0   rwm  ", "c 195:0 rwm"},
		{"all long form", "a *:* rwm", "a"},
		{"all partial access", "a *:* r", "a *:* r"},
		{"tab", "c\t195:1\trwm", "c 195:1 rwm"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if diff := cmp.Diff(r.String(), tt.want); diff != "" {
				t.Errorf("(-got +want):\n%s", diff)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, in := range []string{
		"", "x 1:2 rwm", "cc 1:2 rwm", "c", "c 195 rwm", "c 195:0", "c 195:0 rwm extra",
		"c 195:0 rwx", "c 195:0 rr", "c -1:0 r", "c 195:-1 r", "c 4294967296:0 r", "c 0195:0 r",
		"c +1:0 r", "c a:0 r", "c 1:b r", "c :0 r", "c 1: r", "a 1", "c 1:2 ",
	} {
		t.Run(in, func(t *testing.T) {
			r, err := Parse(in)
			if err == nil {
				t.Fatalf("Parse(%q) = %v, want error", in, r)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) error %v does not wrap ErrInvalid", in, err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"c 195:* rwm", "a", "b 8:0 r", "c *:* m", "c 511:1 rw", "x", "c 1:2 rr"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("Parse(%q) gave invalid rule %v: %v", s, r, err)
		}
		again, err := Parse(r.String())
		if err != nil {
			t.Fatalf("reparse %q: %v", r.String(), err)
		}
		if again != r && !(r.Type == 'a' && again.String() == r.String()) {
			t.Fatalf("round trip %q -> %q -> %v, want %v", s, r.String(), again, r)
		}
	})
}
