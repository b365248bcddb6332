package fleet

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if diff := cmp.Diff(string(got), string(want)); diff != "" {
		t.Errorf("%s (-got +want)\n%s", p, diff)
	}
}

func TestImportPhoenixGolden(t *testing.T) {
	in, err := os.ReadFile("testdata/phoenix_lxc_configs.json")
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := ImportPhoenix("phoenix_lxc_configs.json", in, PhoenixOptions{Host: "pve-gpu-01", Address: "10.0.0.11"})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "phoenix.fleet.yaml", out)
	golden(t, "phoenix.warnings.txt", []byte(strings.Join(warnings, "\n")+"\n"))

	f, err := Parse("out.yaml", out)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, c := range f.Containers {
		got[c.ID] = c.GPUs
	}
	want := map[string][]string{
		"901": {"0"}, "902": {"0", "1"}, "903": {"1"}, "910": {}, "920": {}, "950": {"0", "1"},
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("GPUs per container (-got +want)\n%s", diff)
	}
}

func TestParseAssignment(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		bad      bool
	}{
		{"absent", "", []string{}, false},
		{"null", "null", []string{}, false},
		{"none", `"none"`, []string{}, false},
		{"None", `"None"`, []string{}, false},
		{"empty", `""`, []string{}, false},
		{"one", `"0"`, []string{"0"}, false},
		{"two", `"0,1"`, []string{"0", "1"}, false},
		{"spaces", `" 0, 1 "`, []string{"0", "1"}, false},
		{"number", `1`, []string{"1"}, false},
		{"bus id", `"0000:41:00.0"`, []string{"0000:41:00.0"}, false},
		{"empty entry", `"0,,1"`, nil, true},
		{"word", `"all"`, nil, true},
		{"twice", `"1,1"`, nil, true},
		{"list", `[0,1]`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw []byte
			if tt.in != "" {
				raw = []byte(tt.in)
			}
			got, _, err := parseAssignment(raw)
			if (err != nil) != tt.bad {
				t.Fatalf("err = %v, want error %v", err, tt.bad)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

func TestImportPhoenixErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", `{`, "invalid phoenix config: p.json: unexpected EOF"},
		{"no lxc_configs", `{"x": 1}`, "invalid phoenix config: p.json: lxc_configs: missing; is this a phoenix_lxc_configs.json?"},
		{"bad assignment", `{"lxc_configs": {"901": {"gpu_assignment": "0,x"}}}`, `invalid phoenix config: p.json: lxc_configs.901.gpu_assignment: "0,x": "x" is not a GPU index, UUID or bus id`},
		{"bad id", `{"lxc_configs": {"9 01": {}}}`, `invalid phoenix config: p.json: lxc_configs.9 01: "9 01" is not a container id`},
		{"config not object", `{"lxc_configs": {"901": 5}}`, "invalid phoenix config: p.json: lxc_configs.901: must be an object: json: cannot unmarshal number into Go value of type map[string]json.RawMessage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := ImportPhoenix("p.json", []byte(tt.in), PhoenixOptions{Host: "pve1"})
			if !errors.Is(err, ErrPhoenix) {
				t.Fatalf("err = %v, want ErrPhoenix", err)
			}
			if diff := cmp.Diff(err.Error(), tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
	if _, _, err := ImportPhoenix("p.json", []byte(`{"lxc_configs": {}}`), PhoenixOptions{Host: "bad host"}); err == nil {
		t.Error("bad --host accepted")
	}
}

func FuzzImportPhoenix(f *testing.F) {
	if b, err := os.ReadFile("testdata/phoenix_lxc_configs.json"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"lxc_configs": {"901": {"gpu_assignment": "0, 1", "name": "a\nb"}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		out, _, err := ImportPhoenix("f.json", b, PhoenixOptions{Host: "pve1"})
		if err != nil {
			return
		}
		if _, err := Parse("out.yaml", out); err != nil {
			t.Fatalf("generated fleet does not parse: %v\n%s", err, out)
		}
	})
}
