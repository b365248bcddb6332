package guestchan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gpupass/internal/log"
	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
)

// buildGuestClient builds testdata/guestclient statically, for busybox containers.
func buildGuestClient(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	out := filepath.Join(lxctest.TempDir(t), "guestclient")
	cmd := exec.Command(goBin, "build", "-o", out, "./testdata/guestclient")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest client: %v\n%s", err, b)
	}
	return out
}

func randomName(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// TestLXCIdentity runs the identity check for real: a guest in container A dials A's
// socket from inside (SO_PEERPIDFD, SO_PEERCRED, /proc/<pid>/cgroup and uid_map as the
// kernel gives them) as A's root and is accepted; a process of container B, which has A's
// socket directory mounted too, is refused whatever it claims; a non-root user of A is
// refused whatever its process is called, and so is that user as root of a user namespace
// of its own.
func TestLXCIdentity(t *testing.T) {
	testenv.RequireLXC(t)
	lxctest.RequireCgroup2(t)
	client := buildGuestClient(t)
	for _, unpriv := range []bool{false, true} {
		name := "privileged"
		if unpriv {
			name = "unprivileged"
		}
		t.Run(name, func(t *testing.T) {
			cfg := Config{Dir: filepath.Join(lxctest.TempDir(t), "guests"), Log: log.ForTest(t, "guestchan"), Build: "test"}
			r := New(cfg)
			idA, idB := randomName("gca"), randomName("gcb")
			dirA, err := r.Ensure(idA)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(cfg.Dir, 0o755); err != nil {
				t.Fatal(err)
			}
			spec := func(id string, extra ...string) lxctest.Spec {
				return lxctest.Spec{
					Name:         id,
					Unprivileged: unpriv,
					// The second name spoofs the real guest agent's: names prove nothing.
					Binds: [][2]string{{client, "/usr/local/bin/guestclient"}, {client, "/usr/local/bin/gpupass-guest-agent"}},
					// As the managed mount entry does: the directory, not the socket file.
					ExtraConfig: append([]string{"lxc.mount.entry = " + dirA + " " + strings.TrimPrefix(GuestDir, "/") + " none bind,create=dir 0 0"}, extra...),
				}
			}
			a := lxctest.NewContainer(t, spec(idA))
			// B may write its cgroup tree, to nest a cgroup named after A.
			b := lxctest.NewContainer(t, spec(idB, "lxc.mount.auto = cgroup:rw:force"))
			a.Start(t)
			b.Start(t)
			r.SetExpectation(idA, gpuExpectation(0))

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- r.Run(ctx) }()
			defer func() { cancel(); <-done }()

			sock := GuestDir + "/" + SocketName
			out, code := a.Attach(t, "/usr/local/bin/guestclient", sock, idA)
			if code != 0 || !strings.Contains(out, "expectation "+idA+" devices=1 heartbeat_ms=10000") {
				t.Fatalf("guest of %s on its own socket: exit %d, output %q; want accepted with its expectation", idA, code, out)
			}
			wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer wcancel()
			s, err := r.Wait(wctx, idA, func(s Snapshot) bool { return s.Report != nil })
			if err != nil {
				t.Fatalf("no report from the guest of %s: %v", idA, err)
			}
			if s.Report.GetContainerId() != idA || !s.Report.GetReady() {
				t.Errorf("stored report: container %q ready %v, want %s (stamped) and ready", s.Report.GetContainerId(), s.Report.GetReady(), idA)
			}
			// The report carries the container's generation: its init (found from the guest
			// up the process tree) and the init's start time.
			if want, err := GenerationOf("/", a.InitPID(t)); err != nil || s.Generation != want {
				t.Errorf("report generation %v, want %v (%v): the init lxc-info names", s.Generation, want, err)
			}

			for _, claim := range []string{idB, idA, ""} {
				out, code := b.Attach(t, "/usr/local/bin/guestclient", sock, claim)
				if code != 3 || !strings.Contains(out, "is in container "+idB) {
					t.Errorf("process of %s claiming %q on %s's socket: exit %d, output %q; want refused as in container %s", idB, claim, idA, code, out, idB)
				}
			}
			// B's root makes a cgroup named lxc.payload.<A> inside its own tree, moves itself
			// there and dials: the host sees /lxc.payload.<B>/lxc.payload.<A>, and the first
			// container segment decides.
			nest := "mkdir -p /sys/fs/cgroup/lxc.payload." + idA + " && echo $$ > /sys/fs/cgroup/lxc.payload." + idA + "/cgroup.procs && cat /proc/self/cgroup && exec /usr/local/bin/gpupass-guest-agent " + sock + " " + idA
			if out, code := b.Attach(t, "sh", "-c", nest); code != 3 || !strings.Contains(out, "lxc.payload."+idA) || !strings.Contains(out, "is in container "+idB) {
				t.Errorf("process of %s in a nested cgroup named after %s: exit %d, output %q; want refused as in container %s", idB, idA, code, out, idB)
			}
			// Inside A, only A's root user passes: another user (even running a binary named
			// like the guest agent), or that user as "root" of a user namespace of its own
			// (busybox unshare -U -r), is refused.
			for _, argv := range [][]string{
				{"/usr/local/bin/gpupass-guest-agent", sock, idA},
				{"unshare", "-U", "-r", "/usr/local/bin/guestclient", sock, idA},
			} {
				out, code := a.AttachAs(t, 1000, argv...)
				if code != 3 || !strings.Contains(out, "not the container's root user") {
					t.Errorf("uid 1000 of %s running %v: exit %d, output %q; want refused as not the container's root user", idA, argv, code, out)
				}
			}
			// The host process itself is outside every container.
			if _, err := connectGuestReal(t, filepath.Join(dirA, SocketName)); !isRefused(err, "not in any container") {
				t.Errorf("host process: %v, want refused as not in any container", err)
			}
		})
	}
}
