package guestchan

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

func TestValidateID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"901", true},
		{"gpu-box_1.a", true},
		{"A", true},
		{strings.Repeat("9", MaxIDLength), true},
		{strings.Repeat("9", MaxIDLength+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{"_x", false},
		{"a/b", false},
		{"a b", false},
		{"a\x00b", false},
		{"a\nb", false},
		{"ä", false},
	}
	for _, tt := range tests {
		err := ValidateID(tt.id)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalidID)) {
			t.Errorf("ValidateID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}

func TestContainerOfCgroup(t *testing.T) {
	tests := []struct {
		name, path, id string
	}{
		{"plain lxc", "/lxc.payload.901", "901"},
		{"plain lxc named", "/lxc.payload.gpu-box", "gpu-box"},
		{"plain lxc nested process", "/lxc.payload.901/init.scope", "901"},
		{"plain lxc systemd unit", "/lxc.payload.901/system.slice/gpupass-guest-agent.service", "901"},
		{"proxmox systemd unit", "/lxc/901/ns/system.slice/gpupass-guest-agent.service", "901"},
		{"plain lxc attach", "/lxc.payload.901/.lxc", "901"},
		{"nested container inside 901", "/lxc.payload.901/lxc.payload.inner", "901"},
		{"proxmox ns", "/lxc/901/ns/init.scope", "901"},
		{"proxmox ns user slice", "/lxc/901/ns/user.slice/user-0.slice/session-1.scope", "901"},
		{"proxmox container root", "/lxc/901", "901"},
		{"host root", "/", ""},
		{"host service", "/system.slice/pve-cluster.service", ""},
		{"user session", "/user.slice/user-0.slice/session-3.scope", ""},
		{"plain lxc monitor", "/lxc.monitor.901", ""},
		{"proxmox monitor", "/lxc.monitor/901", ""},
		{"proxmox lxc parent", "/lxc", ""},
		{"pivot", "/lxc.pivot", ""},
		{"impersonation from a nested cgroup of 902", "/lxc.payload.902/lxc.payload.901", "902"},
		// Only host root can create cgroups outside a container's delegated subtree, and host
		// root is trusted anyway; LXC itself nests containers below its caller's cgroup.
		{"below the host's own cgroup", "/process_api/core/lxc.payload.g0", "g0"},
		{"attach below the host's own cgroup", "/process_api/core/lxc.payload.g0/.lxc", "g0"},
		{"monitor below the host's own cgroup", "/process_api/core/lxc.monitor.g0", ""},
		{"proxmox below a slice", "/system.slice/lxc/901/ns", "901"},
		{"proxmox impersonation", "/lxc/902/ns/lxc/901", "902"},
		{"empty payload name", "/lxc.payload.", ""},
		{"proxmox empty id", "/lxc//ns", ""},
		{"dot dot", "/lxc.payload.901/../lxc.payload.902", ""},
		{"relative (other cgroup namespace)", "lxc.payload.901", ""},
		{"namespaced parent", "/../lxc.payload.901", ""},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, ok := ContainerOfCgroup(tt.path)
			if id != tt.id || ok != (tt.id != "") {
				t.Errorf("ContainerOfCgroup(%q) = %q, %v; want %q", tt.path, id, ok, tt.id)
			}
		})
	}
}

func TestUnifiedCgroup(t *testing.T) {
	tests := []struct {
		name, content, path string
		ok                  bool
	}{
		{"pure cgroup2", "0::/lxc.payload.901\n", "/lxc.payload.901", true},
		{"hybrid", "12:devices:/lxc/901\n1:name=systemd:/\n0::/lxc/901/ns\n", "/lxc/901/ns", true},
		{"v1 only", "4:devices:/lxc/901\n", "", false},
		{"no newline", "0::/", "/", true},
		{"crlf", "0::/lxc.payload.9\r\n", "/lxc.payload.9", true},
		{"empty", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := UnifiedCgroup(tt.content)
			if p != tt.path || ok != tt.ok {
				t.Errorf("UnifiedCgroup(%q) = %q, %v; want %q, %v", tt.content, p, ok, tt.path, tt.ok)
			}
		})
	}
}

func FuzzContainerOfCgroup(f *testing.F) {
	for _, s := range []string{
		"0::/lxc.payload.901\n", "0::/lxc/901/ns/init.scope\n", "12:devices:/\n0::/\n",
		"0::/lxc.payload.902/lxc.payload.901", "0::/lxc.monitor/901", "0::/lxc//x", "0::/../x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, content string) {
		path, ok := UnifiedCgroup(content)
		if !ok {
			return
		}
		id, ok := ContainerOfCgroup(path)
		if !ok {
			if id != "" {
				t.Fatalf("not in a container, but id %q", id)
			}
			return
		}
		if ValidateID(id) != nil {
			t.Fatalf("ContainerOfCgroup(%q) = invalid id %q", path, id)
		}
		// The id is the first container segment's, never a deeper one's.
		segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
		for i, seg := range segs {
			if strings.HasPrefix(seg, "lxc.payload.") || (seg == "lxc" && i+1 < len(segs)) {
				if seg != "lxc.payload."+id && (seg != "lxc" || segs[i+1] != id) {
					t.Fatalf("ContainerOfCgroup(%q) = %q, not the first container segment %q", path, id, seg)
				}
				return
			}
		}
		t.Fatalf("ContainerOfCgroup(%q) = %q without a container segment", path, id)
	})
}

// TestRefusals: who may use container 901's socket. The kernel's identity (cgroup of the
// peer's pid) and the role must agree; the claimed id (the guest's hostname) is any name.
func TestRefusals(t *testing.T) {
	noLeaks(t)
	f := start(t, testConfig(t))
	sock := f.ensure("901")
	f.ensure("902")
	f.r.SetExpectation("901", gpuExpectation(0))
	tests := []struct {
		name   string
		cgroup string // /proc/<pid>/cgroup; "" for a process that is gone
		user   bool   // a user other than the container's root
		o      guestOpts
		refuse string // "" to accept
	}{
		{name: "non-root user of 901", cgroup: "0::/lxc.payload.901\n", user: true, o: guestOpts{claim: "901"}, refuse: "not the container's root user"},
		{name: "plain lxc guest of 901", cgroup: "0::/lxc.payload.901\n", o: guestOpts{claim: "901"}},
		{name: "proxmox guest of 901", cgroup: "0::/lxc/901/ns/system.slice/gpupass-guest-agent.service\n", o: guestOpts{claim: "901"}},
		{name: "no claim", cgroup: "0::/lxc/901/ns\n"},
		{name: "process of 902", cgroup: "0::/lxc.payload.902\n", o: guestOpts{claim: "902"}, refuse: "is in container 902"},
		{name: "process of 902 claiming 901", cgroup: "0::/lxc/902/ns/init.scope\n", o: guestOpts{claim: "901"}, refuse: "is in container 902"},
		{name: "902 impersonating from a nested cgroup", cgroup: "0::/lxc.payload.902/lxc.payload.901\n", refuse: "is in container 902"},
		{name: "host process", cgroup: "12:devices:/\n0::/user.slice/user-0.slice/session-1.scope\n", refuse: "not in any container"},
		{name: "host root cgroup", cgroup: "0::/\n", refuse: "not in any container"},
		{name: "lxc monitor of 901", cgroup: "0::/lxc.monitor/901\n", refuse: "not in any container"},
		{name: "cgroup v1 only", cgroup: "4:devices:/lxc/901\n", refuse: "no cgroup v2"},
		{name: "process gone", cgroup: "", refuse: "identify peer"},
		// On Proxmox the guest claims its hostname ("ai-901"), not the id: never a refusal.
		{name: "hostname claim on proxmox", cgroup: "0::/lxc/901/ns/init.scope\n", o: guestOpts{claim: "ai-901"}},
		{name: "claim of another id", cgroup: "0::/lxc.payload.901\n", o: guestOpts{claim: "902"}},
		{name: "controller role", cgroup: "0::/lxc.payload.901\n", o: guestOpts{role: pb.Role_ROLE_CONTROLLER}, refuse: "ROLE_CONTROLLER is not allowed"},
		{name: "host agent role", cgroup: "0::/lxc.payload.901\n", o: guestOpts{role: pb.Role_ROLE_HOST_AGENT}, refuse: "not allowed on a guest socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid := int32(99)
			switch {
			case tt.user:
				pid = f.procs.notRoot(tt.cgroup)
			case tt.cgroup != "":
				pid = f.procs.proc(tt.cgroup)
			}
			g, err := connectGuest(t, sock, pid, tt.o)
			if tt.refuse == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if e := g.expectation(t); e.GetContainerId() != "901" {
					t.Errorf("expectation for %q", e.GetContainerId())
				}
				g.close()
				f.waitFor("901", "disconnect", func(s Snapshot) bool { return !s.Connected })
				return
			}
			if !isRefused(err, tt.refuse) {
				t.Fatalf("connect = %v, want refused with %q", err, tt.refuse)
			}
			s, _ := f.r.Latest("901")
			if s.Connected {
				t.Error("a refused peer shows as connected")
			}
			if !strings.Contains(s.Refused, tt.refuse) || s.RefusedAt.IsZero() {
				t.Errorf("registry remembers refusal %q at %v, want one containing %q", s.Refused, s.RefusedAt, tt.refuse)
			}
		})
	}
}

// TestRefusalLoggedOnce: a flood of refused connections is logged once.
func TestRefusalLoggedOnce(t *testing.T) {
	noLeaks(t)
	var buf syncBuffer
	cfg := testConfig(t)
	cfg.Log = log.Component(log.New(log.Options{Out: &buf, Format: "json", Level: "debug"}), "guestchan")
	f := start(t, cfg)
	sock := f.ensure("901")
	pid := f.procs.inContainer("902")
	for range 10 {
		if _, err := connectGuest(t, sock, pid, guestOpts{}); !isRefused(err, "in container 902") {
			t.Fatalf("connect = %v, want refused", err)
		}
	}
	f.stop() // every handshake finished
	if n := buf.count(`"msg":"guest refused"`); n != 1 {
		t.Errorf("10 refusals logged %d times, want once", n)
	}
	if n := buf.count(`is in container 902`); n != 1 {
		t.Errorf("the reason is logged %d times, want once", n)
	}
}

// TestRealPeerIdentity uses the default identity seams: SO_PEERCRED on a real socket and
// /proc/<pid>/cgroup. This test process is on the host, outside every container, so it
// is refused and the reason names its pid.
func TestRealPeerIdentity(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Net: "unix", Name: filepath.Join(dir, "s")})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *net.UnixConn, 1)
	go func() {
		c, _ := ln.AcceptUnix()
		accepted <- c
	}()
	cli, err := net.Dial("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv := <-accepted
	if srv == nil {
		t.Fatal("accept failed")
	}
	defer srv.Close()
	pid, err := PeerCredPID(srv)
	if err != nil || int(pid) != os.Getpid() {
		t.Errorf("PeerCredPID = %d, %v; want %d", pid, err, os.Getpid())
	}

	// The default PeerCgroup reads under ProcRoot.
	root := t.TempDir()
	mkdir(t, filepath.Join(root, "proc", "4242"))
	if err := os.WriteFile(filepath.Join(root, "proc", "4242", "cgroup"), []byte("0::/lxc/901/ns\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := Config{ProcRoot: root}.withDefaults()
	if got, err := cfg.PeerCgroup(4242); err != nil || got != "0::/lxc/901/ns\n" {
		t.Errorf("PeerCgroup from the fixture = %q, %v", got, err)
	}
	if _, err := cfg.PeerCgroup(4243); err == nil {
		t.Error("PeerCgroup of a missing pid: no error")
	}

	// End to end with the real seams.
	r := New(Config{Dir: filepath.Join(t.TempDir(), "g"), Log: log.ForTest(t, "guestchan")})
	gdir, err := r.Ensure("901")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	_, err = connectGuestReal(t, filepath.Join(gdir, SocketName))
	own, _ := os.ReadFile("/proc/self/cgroup")
	path, _ := UnifiedCgroup(string(own))
	if id, in := ContainerOfCgroup(path); in {
		t.Skipf("this test process runs inside container %s", id)
	}
	if !isRefused(err, "not in any container") {
		t.Errorf("host process on a guest socket: %v, want refused as not in any container", err)
	}
}
