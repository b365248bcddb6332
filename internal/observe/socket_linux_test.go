package observe

import (
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// TestJudgeSocket replays the mountinfo of a real Debian 12 container with systemd as
// PID 1 (captured by TestGuestSocketUnderInit -capture-mountinfo): one host directory
// bound at /dev/gpupass, another at /run/gpupass, and systemd's tmpfs on /run mounted
// after the latter (mount ids are reused: only the order of the lines says which came
// later).
func TestJudgeSocket(t *testing.T) {
	b, err := os.ReadFile("testdata/systemd-mountinfo.txt")
	if err != nil {
		t.Fatal(err)
	}
	systemd, err := ParseMountinfo(b)
	if err != nil {
		t.Fatal(err)
	}
	const base = "/tmp/TestGuestSocketUnderInitsystemd_privileged4062435034/"
	disk := unix.Mkdev(254, 0)
	host := FileID{Dev: disk, Ino: 4242}
	dirs := []string{"/dev/gpupass", "/run/gpupass"}
	// busybox: the same binds, no tmpfs on /run (the lines before systemd's mounts).
	busybox := systemd[:11]
	tests := []struct {
		name string
		ev   SocketEvidence
		want SocketView
	}{
		{"seen at /dev/gpupass",
			SocketEvidence{Host: host, HostDirRoot: base + "001", Dirs: dirs, Inside: map[string]FileID{"/dev/gpupass": host}, Mounts: systemd},
			SocketView{Visible: "/dev/gpupass"}},
		{"seen at the legacy /run/gpupass (busybox)",
			SocketEvidence{Host: host, HostDirRoot: base + "002", Dirs: dirs, Inside: map[string]FileID{"/run/gpupass": host}, Mounts: busybox},
			SocketView{Visible: "/run/gpupass"}},
		{"legacy bind hidden by systemd's tmpfs on /run",
			SocketEvidence{Host: host, HostDirRoot: base + "002", Dirs: dirs, Inside: map[string]FileID{}, Mounts: systemd},
			SocketView{Hidden: "/run/gpupass", Cover: "/run"}},
		{"another container's directory at /dev/gpupass is not ours",
			SocketEvidence{Host: host, HostDirRoot: base + "777", Dirs: dirs, Inside: map[string]FileID{"/dev/gpupass": {Dev: disk, Ino: 1}}, Mounts: systemd},
			SocketView{}},
		{"without the directory's root any bind of its filesystem counts",
			SocketEvidence{Host: host, Dirs: []string{"/run/gpupass"}, Inside: map[string]FileID{}, Mounts: systemd},
			SocketView{Hidden: "/run/gpupass", Cover: "/run"}},
		{"bound and not hidden, but a different socket resolves",
			SocketEvidence{Host: host, HostDirRoot: base + "001", Dirs: dirs, Inside: map[string]FileID{"/dev/gpupass": {Dev: disk, Ino: 7}}, Mounts: systemd},
			SocketView{Mounted: "/dev/gpupass"}},
		{"a mount over the directory itself hides it",
			SocketEvidence{Host: host, HostDirRoot: base + "001", Dirs: dirs, Inside: map[string]FileID{},
				Mounts: append(append([]Mount(nil), systemd...), Mount{ID: 300, ParentID: 99, Major: 0, Minor: 99, Root: "/", Target: "/dev/gpupass", FSType: "tmpfs"})},
			SocketView{Hidden: "/dev/gpupass", Cover: "/dev/gpupass"}},
		{"never mounted",
			SocketEvidence{Host: host, HostDirRoot: base + "001", Dirs: dirs, Inside: map[string]FileID{}, Mounts: systemd[:8]},
			SocketView{}},
		{"seen at the legacy path beats a hidden preferred one",
			SocketEvidence{Host: host, HostDirRoot: base + "002", Dirs: dirs, Inside: map[string]FileID{"/run/gpupass": host}, Mounts: systemd},
			SocketView{Visible: "/run/gpupass"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(JudgeSocket(tt.ev), tt.want); d != "" {
				t.Errorf("JudgeSocket (-got +want):\n%s", d)
			}
		})
	}
}

func TestPathInFilesystem(t *testing.T) {
	host, err := ParseMountinfo([]byte(`1 0 254:0 / / rw - ext4 /dev/vda rw
30 1 0:25 / /run rw,nosuid - tmpfs tmpfs rw
40 1 254:0 /srv/guests /var/guests rw - ext4 /dev/vda rw
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir string
		dev       uint64
		want      string
	}{
		{"tmpfs /run", "/run/gpupass/guests/901", unix.Mkdev(0, 25), "/gpupass/guests/901"},
		{"root filesystem", "/tmp/x/guests/g1", unix.Mkdev(254, 0), "/tmp/x/guests/g1"},
		{"a bind of the root filesystem", "/var/guests/g1", unix.Mkdev(254, 0), "/srv/guests/g1"},
		{"wrong filesystem", "/run/gpupass/guests/901", unix.Mkdev(254, 0), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PathInFilesystem(host, tt.dir, tt.dev); got != tt.want {
				t.Errorf("PathInFilesystem(%q) = %q, want %q", tt.dir, got, tt.want)
			}
		})
	}
}
