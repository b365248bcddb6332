package passthrough

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"gpupass/internal/gpu/gputest"
	"gpupass/internal/pveconf"
)

// FuzzPlan: for any config the parser accepts, a plan keeps every section byte-identical,
// its result parses, and planning the result again changes nothing.
func FuzzPlan(f *testing.F) {
	paths, _ := filepath.Glob("testdata/in/*.conf")
	for _, p := range paths {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b, uint8(0))
		}
	}
	inv := gputest.Inventory(f, "pve-2gpu")
	desired := []Desired{
		{GPUs: []string{"0"}},
		{GPUs: []string{"1"}, Style: Dev},
		{},
		{GPUs: []string{"0", "1"}, GuestSocketDir: "/run/gpupass/guests/1"},
	}
	f.Fuzz(func(t *testing.T, b []byte, which uint8) {
		cfg, err := pveconf.Parse(b, pveconf.PVE)
		if err != nil {
			return
		}
		d := desired[int(which)%len(desired)]
		r, err := Plan(cfg, inv, d)
		if err != nil {
			if d.Style == Dev {
				return // e.g. every devN slot taken
			}
			t.Fatalf("Plan: %v", err)
		}
		after, err := pveconf.Parse(r.New, pveconf.PVE)
		if err != nil {
			t.Fatalf("result does not parse: %v\n%q", err, r.New)
		}
		if got, want := tail(after), tail(cfg); !bytes.Equal(got, want) {
			t.Fatalf("sections changed:\n%q\n%q", got, want)
		}
		again, err := Plan(after, inv, d)
		if err != nil {
			t.Fatal(err)
		}
		if again.Changed {
			t.Fatalf("second plan changes:\n%s\ninput %q", again.Diff, b)
		}
	})
}

func tail(c *pveconf.Config) []byte {
	var b []byte
	for _, s := range c.Sections()[1:] {
		for _, l := range s.Lines {
			b = append(b, l.Raw+l.EOL...)
		}
	}
	return b
}
