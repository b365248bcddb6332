package guest

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"gpupass/internal/log"
	"gpupass/internal/testenv"
)

func TestWatcher(t *testing.T) {
	checkLeaks(t)
	f := newTree(t)
	w, err := NewWatcher(f.paths(), log.ForTest(t, "watcher"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	changes := make(chan string, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(s string) { changes <- s }) }()
	defer func() {
		cancel()
		if err := <-done; err != context.Canceled {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	}()
	expect := func(what string, act func()) {
		t.Helper()
		for len(changes) > 0 {
			<-changes
		}
		act()
		select {
		case s := <-changes:
			if s != ChangeDev {
				t.Errorf("%s: change %q, want %q", what, s, ChangeDev)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no change reported", what)
		}
	}
	expect("create in /dev", func() { f.file("dev/nvidia0", "") })
	expect("chmod in /dev", func() { os.Chmod(f.path("dev/nvidia0"), 0o600) })
	expect("remove in /dev", func() { os.Remove(f.path("dev/nvidia0")) })
	expect("nvidia-caps appears", func() { os.Mkdir(f.path("dev/nvidia-caps"), 0o755) })
	expect("create in /dev/nvidia-caps", func() { f.file("dev/nvidia-caps/nvidia-cap1", "") })
	expect("remove in /dev/nvidia-caps", func() { os.Remove(f.path("dev/nvidia-caps/nvidia-cap1")) })
	expect("nvidia-caps goes", func() { os.Remove(f.path("dev/nvidia-caps")) })
	expect("nvidia-caps comes back", func() { os.Mkdir(f.path("dev/nvidia-caps"), 0o755) })
	expect("create in the new /dev/nvidia-caps", func() { f.file("dev/nvidia-caps/nvidia-cap2", "") })
}

// TestWatcherNoDev: a /dev that cannot be watched (missing, or no inotify instance left:
// fs.inotify.max_user_instances) leaves the agent running on heartbeats alone.
func TestWatcherNoDev(t *testing.T) {
	w, err := NewWatcher(Paths{Root: t.TempDir()}, nil)
	if err != nil {
		t.Fatalf("NewWatcher without a /dev: %v, want a watcher without device watches", err)
	}
	defer w.Close()
	if w.WatchesDevices() {
		t.Error("WatchesDevices() = true without a /dev")
	}
}

// TestWatcherMounts: a mount appearing or going is a change (a bind mount brings no
// inotify event), and the mount table watch does not spin.
func TestWatcherMounts(t *testing.T) {
	testenv.RequireRoot(t)
	checkLeaks(t)
	dev := t.TempDir()
	target := t.TempDir()
	w, err := NewWatcher(Paths{Root: "/", Dev: dev}, log.ForTest(t, "watcher"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.mounts < 0 {
		t.Skip("the mount table cannot be watched here")
	}
	var mu sync.Mutex
	seen := map[string]int{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(s string) {
			mu.Lock()
			seen[s]++
			mu.Unlock()
		})
	}()
	defer func() {
		cancel()
		<-done
	}()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return seen[ChangeMounts]
	}
	waitFor := func(what string, n int) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Second); count() < n; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d mount changes seen, want %d", what, count(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := unix.Mount("tmpfs", target, "tmpfs", 0, "size=64k"); err != nil {
		testenv.Skip(t, "mount tmpfs: "+err.Error())
	}
	waitFor("mount", 1)
	if err := unix.Unmount(target, 0); err != nil {
		t.Fatal(err)
	}
	waitFor("unmount", 2)
	time.Sleep(100 * time.Millisecond)
	if n := count(); n > 4 {
		t.Errorf("%d mount changes for one mount and one unmount: the watch spins", n)
	}
}
