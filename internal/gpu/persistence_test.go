package gpu

import (
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParsePersistence(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[string]string
		err  string
	}{
		{name: "two GPUs", in: "0, 00000000:01:00.0, Enabled\n1, 00000000:41:00.0, Disabled\n",
			want: map[string]string{"0000:01:00.0": PersistenceEnabled, "0000:41:00.0": PersistenceDisabled}},
		{name: "not applicable", in: "0, 00000000:01:00.0, [N/A]\n", want: map[string]string{}},
		{name: "empty", in: "", want: map[string]string{}},
		{name: "no bus id", in: "0, Enabled\n", err: `line 1 "0, Enabled"`},
		{name: "bad bus id", in: "0, 0000:zz:00.0, Enabled\n", err: "want \"<index>, <bus id>, Enabled|Disabled\""},
		{name: "unknown mode", in: "0, 00000000:01:00.0, Maybe\n", err: `unknown mode "Maybe"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePersistence([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, tc.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}

// The output of nvidia-smi with PersistenceArgs on a real H200 host.
func TestParsePersistenceRealGPU(t *testing.T) {
	b, err := os.ReadFile("../../testdata/real-gpu/h200-persistence/smi-persistence.csv")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParsePersistence(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got, map[string]string{"0000:00:06.0": PersistenceEnabled}); diff != "" {
		t.Errorf("(-got +want)\n%s", diff)
	}
}
