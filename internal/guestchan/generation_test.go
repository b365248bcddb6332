package guestchan

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeProc writes a /proc of processes: pid -> {ppid, pid namespace, NSpid, start}.
type fakeProcess struct {
	ppid  int
	ns    string
	nspid string
	start int
}

func writeFakeProc(t *testing.T, procs map[int]fakeProcess) string {
	t.Helper()
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, "proc", fmt.Sprint(pid))
		if err := os.MkdirAll(filepath.Join(dir, "ns"), 0o755); err != nil {
			t.Fatal(err)
		}
		zeros := strings.Repeat("0 ", 17)
		stat := fmt.Sprintf("%d (a (b) c) S %d %s%d 0\n", pid, p.ppid, zeros, p.start)
		status := fmt.Sprintf("Name:\tx\nNSpid:\t%s\nPPid:\t%d\n", p.nspid, p.ppid)
		for name, content := range map[string]string{"stat": stat, "status": status} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Symlink("pid:["+p.ns+"]", filepath.Join(dir, "ns", "pid")); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// The container's init is found up the parent chain (a guest agent its init started) or,
// for a process attached from the host (its parent is a host process), among all
// processes of its pid namespace; its start time makes the generation.
func TestContainerInit(t *testing.T) {
	procs := map[int]fakeProcess{
		1:   {0, "host", "1", 1},
		50:  {1, "host", "50", 40},          // LXC's monitor, and lxc-attach
		200: {50, "ct", "200\t1", 7000},     // the container's init
		300: {200, "ct", "300\t5", 7100},    // a guest agent the init started
		400: {50, "ct", "400\t9", 7200},     // attached from the host
		500: {50, "other", "500\t3", 7300},  // a namespace without its init
		600: {500, "other", "600\t4", 7400}, // in it
	}
	root := writeFakeProc(t, procs)
	tests := []struct {
		name    string
		pid     int32
		want    Generation
		wantErr string
	}{
		{"child of the init", 300, Generation{InitPID: 200, StartTicks: 7000}, ""},
		{"the init itself", 200, Generation{InitPID: 200, StartTicks: 7000}, ""},
		{"attached from the host", 400, Generation{InitPID: 200, StartTicks: 7000}, ""},
		{"no init in its namespace", 600, Generation{}, "no process is pid 1 of its pid namespace"},
		{"gone", 999, Generation{}, "find init of pid 999"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ContainerInit(root, tt.pid)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("(-got +want)\n%s", diff)
			}
		})
	}
}
