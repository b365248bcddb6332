package strictyaml

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type inner struct {
	Port uint16 `yaml:"port"`
}

type cfg struct {
	Version int               `yaml:"version"`
	Every   time.Duration     `yaml:"every"`
	Count   int8              `yaml:"count"`
	Labels  map[string]string `yaml:"labels"`
	In      *inner            `yaml:"in"`
	List    []inner           `yaml:"list"`
	Skip    string            `yaml:"-"`
}

func TestDecode(t *testing.T) {
	var got cfg
	doc, err := Decode("c.yaml", []byte("version: 1\nevery: 1m30s\ncount: 7\nlabels: {a: x, b: 2}\nin: {port: 7420}\nlist:\n  - port: 1\n  - port: 2\n"), 1, &got)
	if err != nil {
		t.Fatal(err)
	}
	want := cfg{Version: 1, Every: 90 * time.Second, Count: 7, Labels: map[string]string{"a": "x", "b": "2"}, In: &inner{Port: 7420}, List: []inner{{1}, {2}}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Fatalf("(-got +want)\n%s", diff)
	}
	for path, line := range map[string]int{"every": 2, "list[1].port": 8, "list[1]": 8, "labels.b": 4, "in.nothing": 5, "nowhere": 1} {
		if got := doc.Line(path); got != line {
			t.Errorf("Line(%s) = %d, want %d", path, got, line)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"bad duration", "version: 1\nevery: soon\n", `c.yaml:2: every: "soon" is not a duration; write e.g. 500ms, 10s or 2m`},
		{"int duration", "version: 1\nevery: 10\n", `c.yaml:2: every: must be a duration such as "10s", got int "10"`},
		{"int overflow", "version: 1\ncount: 300\n", `c.yaml:2: count: must be an integer in range, got int "300"`},
		{"negative uint", "version: 1\nin: {port: -1}\n", `c.yaml:2: in.port: must be a non-negative integer in range, got int "-1"`},
		{"map dup", "version: 1\nlabels: {a: x, a: y}\n", `c.yaml:2: labels.a: set twice`},
		{"merge key", "version: 1\nin: {<<: {port: 1}}\n", `c.yaml:2: in: merge keys (<<) are not supported; write the keys out`},
		{"list for struct", "version: 1\nin: [1]\n", `c.yaml:2: in: must be a mapping, got a list`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c cfg
			_, err := Decode("c.yaml", []byte(tt.in), 1, &c)
			if err == nil {
				t.Fatal("accepted")
			}
			if diff := cmp.Diff(err.Error(), tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("version: 1\nevery: 1s\nlabels: {a: b}\nlist: [{port: 1}]\n"))
	f.Add([]byte("version: 1\n---\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c cfg
		if _, err := Decode("f.yaml", b, 1, &c); err == nil && c.Version != 1 {
			t.Fatalf("accepted version %d", c.Version)
		}
	})
}
