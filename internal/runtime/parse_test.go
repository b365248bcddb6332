package runtime

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseLXCInfo(t *testing.T) {
	tests := []struct {
		name, out string
		want      State
		errText   string
	}{
		{name: "running", out: "State:          RUNNING\nPID:            7155\n", want: State{Running: true, InitPID: 7155}},
		{name: "stopped", out: "State:          STOPPED\n", want: State{}},
		{name: "bare state", out: "STOPPED\n", want: State{}},
		{name: "running without pid", out: "State: RUNNING\n", errText: "not a pid"},
		{name: "bad pid", out: "State: RUNNING\nPID: -3\n", errText: "not a pid"},
		{name: "transition", out: "State: STOPPING\nPID: 9\n", errText: "state STOPPING: wait until"},
		{name: "frozen", out: "State: FROZEN\nPID: 9\n", errText: "state FROZEN"},
		{name: "empty", out: "", errText: "no state"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseLXCInfo("c1", []byte(tt.out))
			if tt.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errText) {
					t.Fatalf("error %v, want %q", err, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(got, tt.want); d != "" {
				t.Errorf("(-got +want):\n%s", d)
			}
		})
	}
}

func TestParseStartTicks(t *testing.T) {
	tests := []struct {
		name, stat string
		want       uint64
		wantErr    bool
	}{
		{name: "plain", stat: "2207 (sleep) S 2190 2207 2207 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 123456 2 3", want: 123456},
		{name: "blanks and parens in the name", stat: "9 (a) b (c) d) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0", want: 42},
		{name: "no name", stat: "2207 sleep S 2190", wantErr: true},
		{name: "too short", stat: "2207 (sleep) S 2190 2207", wantErr: true},
		{name: "not a number", stat: "1 (x) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 zz", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStartTicks([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStartTicks = %d, %v; want %d, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzParseLXCInfo(f *testing.F) {
	f.Add([]byte("State:          RUNNING\nPID:            7155\n"))
	f.Add([]byte("STOPPED\n"))
	f.Add([]byte("State: RUNNING\nPID: 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseLXCInfo("c", b)
		if err == nil && st.Running != (st.InitPID > 0) {
			t.Fatalf("state %+v from %q", st, b)
		}
	})
}

func FuzzParseStartTicks(f *testing.F) {
	f.Add([]byte("2207 (sleep) S 2190 2207 2207 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 123456 2 3\n"))
	f.Add([]byte("1 ())) R"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseStartTicks(b)
	})
}
