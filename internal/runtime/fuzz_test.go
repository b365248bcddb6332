package runtime

import (
	"context"
	"strconv"
	"testing"

	"gpupass/internal/runner"
)

// FuzzPCTState feeds `pct status <id> --verbose` output through the real PCT.State (the
// command runs through a fake runner): a running state always carries the pid the output
// gives, a stopped one none, and anything else is an error.
func FuzzPCTState(f *testing.F) {
	f.Add([]byte("cpus: 2\ndisk: 0\nmaxmem: 2147483648\nname: ct901\npid: 7155\nstatus: running\nuptime: 12\n"))
	f.Add([]byte("status: stopped\n"))
	f.Add([]byte("status: running\npid: abc\n"))
	f.Add([]byte("status: running\n"))
	f.Add([]byte("status: paused\n"))
	f.Add([]byte("status:running\npid:-1\nstatus: stopped\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, out []byte) {
		fake := &runner.Fake{Responses: map[string][]runner.Response{
			"pct status 901 --verbose": {{Stdout: string(out)}},
		}}
		p := &PCT{Runner: fake, HostRoot: "/nonexistent-host-root"} // State reads no file
		st, err := p.State(context.Background(), "901")
		fields := parseColonLines(out)
		if err != nil {
			if fields["status"] == "stopped" {
				t.Fatalf("status stopped, but error %v", err)
			}
			return
		}
		switch {
		case st.Running:
			pid, perr := strconv.Atoi(fields["pid"])
			if fields["status"] != "running" || perr != nil || pid <= 0 || st.InitPID != pid {
				t.Fatalf("running with pid %d from %q", st.InitPID, out)
			}
		case fields["status"] != "stopped" || st.InitPID != 0:
			t.Fatalf("stopped state %+v from %q", st, out)
		}
	})
}
