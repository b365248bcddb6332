package guest

import (
	"context"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/testing/protocmp"

	"gpupass/internal/log"
	"gpupass/internal/testenv"
	pb "gpupass/proto/gpupass/v1"
)

// inNewNetns runs fn on a thread moved to a fresh network namespace; the thread is never
// handed back to the scheduler, so it dies with the goroutine.
func inNewNetns(t *testing.T, fn func()) {
	t.Helper()
	testenv.RequireRoot(t)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		defer close(errc)
		fn()
	}()
	if err, ok := <-errc; ok && err != nil {
		testenv.Skip(t, "unshare a network namespace: "+err.Error())
	}
}

// TestNetwork builds a network step by step in a private namespace and checks both the
// network check and the netlink watch at each step.
func TestNetwork(t *testing.T) {
	checkLeaks(t)
	inNewNetns(t, func() {
		w, err := NewWatcher(Paths{Root: "/", Dev: t.TempDir()}, log.ForTest(t, "watcher"))
		if err != nil {
			t.Error(err)
			return
		}
		defer w.Close()
		if !w.WatchesNetwork() {
			t.Error("netlink subscription failed")
			return
		}
		var mu sync.Mutex
		changes := 0
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- w.Run(ctx, func(s string) {
				if s == ChangeNetwork {
					mu.Lock()
					changes++
					mu.Unlock()
				}
			})
		}()
		defer func() {
			cancel()
			<-done
		}()
		seen := func() int {
			mu.Lock()
			defer mu.Unlock()
			return changes
		}
		step := func(name string, act func() error, want *pb.Network) {
			before := seen()
			if act != nil {
				if err := act(); err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				for deadline := time.Now().Add(2 * time.Second); seen() == before; {
					if time.Now().After(deadline) {
						t.Errorf("%s: no network change reported", name)
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			// Carrier and operational state settle asynchronously: poll for a while.
			var diff string
			for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if diff = cmp.Diff(CheckNetwork(), want, protocmp.Transform()); diff == "" {
					return
				}
			}
			t.Errorf("%s: CheckNetwork (-got +want):\n%s", name, diff)
		}
		step("loopback only", nil, &pb.Network{Reason: "no network link up"})
		la := netlink.NewLinkAttrs()
		la.Name = "gp0"
		dummy := &netlink.Veth{LinkAttrs: la, PeerName: "gp1"} // veth is built in where dummy may not be
		peer := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "gp1"}}
		step("link added", func() error { return netlink.LinkAdd(dummy) },
			&pb.Network{Reason: "no network link up", Links: []*pb.NetLink{{Name: "gp0"}, {Name: "gp1"}}})
		step("link up", func() error {
			if err := netlink.LinkSetUp(peer); err != nil {
				return err
			}
			return netlink.LinkSetUp(dummy)
		}, &pb.Network{Reason: "no address on an up network link", Links: []*pb.NetLink{{Name: "gp0", Up: true}, {Name: "gp1", Up: true}}})
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 9, 8, 7), Mask: net.CIDRMask(24, 32)}}
		step("address", func() error { return netlink.AddrAdd(dummy, addr) },
			&pb.Network{Reason: "no default route", Links: []*pb.NetLink{{Name: "gp0", Up: true, Addresses: []string{"10.9.8.7/24"}}, {Name: "gp1", Up: true}}})
		step("default route", func() error {
			return netlink.RouteAdd(&netlink.Route{LinkIndex: dummy.Attrs().Index, Gw: net.IPv4(10, 9, 8, 1)})
		}, &pb.Network{Ok: true, DefaultRoute: true, Links: []*pb.NetLink{{Name: "gp0", Up: true, Addresses: []string{"10.9.8.7/24"}}, {Name: "gp1", Up: true}}})
	})
}
