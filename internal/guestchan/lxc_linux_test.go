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
// socket from inside (SO_PEERCRED and /proc/<pid>/cgroup as the kernel gives them) and is
// accepted; a process of container B, which has A's socket directory mounted too, is
// refused whatever it claims.
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
			spec := func(id string) lxctest.Spec {
				return lxctest.Spec{
					Name:         id,
					Unprivileged: unpriv,
					Binds:        [][2]string{{client, "/usr/local/bin/guestclient"}},
					// As the managed mount entry does: the directory, not the socket file.
					ExtraConfig: []string{"lxc.mount.entry = " + dirA + " " + strings.TrimPrefix(GuestDir, "/") + " none bind,create=dir 0 0"},
				}
			}
			a := lxctest.NewContainer(t, spec(idA))
			b := lxctest.NewContainer(t, spec(idB))
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

			for _, claim := range []string{idB, idA, ""} {
				out, code := b.Attach(t, "/usr/local/bin/guestclient", sock, claim)
				if code != 3 || !strings.Contains(out, "is in container "+idB) {
					t.Errorf("process of %s claiming %q on %s's socket: exit %d, output %q; want refused as in container %s", idB, claim, idA, code, out, idB)
				}
			}
			// The host process itself is outside every container.
			if _, err := connectGuestReal(t, filepath.Join(dirA, SocketName)); !isRefused(err, "not in any container") {
				t.Errorf("host process: %v, want refused as not in any container", err)
			}
		})
	}
}
