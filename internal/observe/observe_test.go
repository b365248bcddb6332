package observe

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const mountinfoSample = `2301 2210 0:187 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
2302 2301 0:190 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
2310 2301 0:191 / /dev rw,relatime - tmpfs none rw,size=492k,mode=755,uid=100000,gid=100000
2311 2310 0:5 /nvidia0 /dev/nvidia0 rw,nosuid,relatime master:2 - devtmpfs udev rw,size=4096k,nr_inodes=1048576,mode=755
2312 2310 254:1 /tmp/My\040GPU\011dir/n\134x /dev/odd\040name rw shared:7 master:3 propagate_from:4 - ext4 /dev/vda\040x rw
2313 2301 0:200 / /run/gpupass ro,nosuid - tmpfs tmpfs
`

func TestParseMountinfo(t *testing.T) {
	got, err := ParseMountinfo([]byte(mountinfoSample))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{ID: 2301, ParentID: 2210, Major: 0, Minor: 187, Root: "/", Target: "/", Options: "rw,relatime", Optional: []string{"master:1"}, FSType: "overlay", Source: "overlay", SuperOptions: "rw,lowerdir=/l,upperdir=/u,workdir=/w"},
		{ID: 2302, ParentID: 2301, Major: 0, Minor: 190, Root: "/", Target: "/proc", Options: "rw,nosuid,nodev,noexec,relatime", FSType: "proc", Source: "proc", SuperOptions: "rw"},
		{ID: 2310, ParentID: 2301, Major: 0, Minor: 191, Root: "/", Target: "/dev", Options: "rw,relatime", FSType: "tmpfs", Source: "none", SuperOptions: "rw,size=492k,mode=755,uid=100000,gid=100000"},
		{ID: 2311, ParentID: 2310, Major: 0, Minor: 5, Root: "/nvidia0", Target: "/dev/nvidia0", Options: "rw,nosuid,relatime", Optional: []string{"master:2"}, FSType: "devtmpfs", Source: "udev", SuperOptions: "rw,size=4096k,nr_inodes=1048576,mode=755"},
		{ID: 2312, ParentID: 2310, Major: 254, Minor: 1, Root: "/tmp/My GPU\tdir/n\\x", Target: "/dev/odd name", Options: "rw", Optional: []string{"shared:7", "master:3", "propagate_from:4"}, FSType: "ext4", Source: "/dev/vda x", SuperOptions: "rw"},
		{ID: 2313, ParentID: 2301, Major: 0, Minor: 200, Root: "/", Target: "/run/gpupass", Options: "ro,nosuid", FSType: "tmpfs", Source: "tmpfs"},
	}
	if d := cmp.Diff(got, want); d != "" {
		t.Errorf("(-got +want):\n%s", d)
	}
	if mm := got[3].MajorMinor(); mm != "0:5" {
		t.Errorf("MajorMinor = %q", mm)
	}
}

func TestParseMountinfoErrors(t *testing.T) {
	tests := []struct{ name, line, errText string }{
		{"no separator", "1 0 0:1 / / rw master:1 ext4 /dev/x rw", "line 2"},
		{"too short", "1 0 0:1 / /", "want ID PARENT"},
		{"nothing after the separator", "1 0 0:1 / / rw - ext4", "want ID PARENT"},
		{"bad major:minor", "1 0 01 / / rw - ext4 /dev/x rw", "major:minor"},
		{"bad id", "x 0 0:1 / / rw - ext4 /dev/x rw", "mount id"},
		{"bad escape", `1 0 0:1 /a\04 / rw - ext4 /dev/x rw`, "bad octal escape"},
		{"escape out of range", `1 0 0:1 /a\777 / rw - ext4 /dev/x rw`, "bad octal escape"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseMountinfo([]byte("\n" + tt.line + "\n"))
			if err == nil || !strings.Contains(err.Error(), tt.errText) {
				t.Errorf("error %v, want %q", err, tt.errText)
			}
		})
	}
}

// escape is the kernel's mangling of mountinfo paths (fs/proc_namespace.c: " \t\n\\").
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t', '\n', '\\':
			fmt.Fprintf(&b, "\\%03o", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func format(m Mount) string {
	f := []string{fmt.Sprint(m.ID), fmt.Sprint(m.ParentID), m.MajorMinor(), escape(m.Root), escape(m.Target), m.Options}
	f = append(f, m.Optional...)
	f = append(f, "-", escape(m.FSType), escape(m.Source))
	if m.SuperOptions != "" {
		f = append(f, m.SuperOptions)
	}
	return strings.Join(f, " ")
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte(mountinfoSample))
	f.Add([]byte("1 0 0:1 / / rw - ext4 /dev/x\n"))
	f.Add([]byte(`1 0 0:1 /a\134\040b / rw - ext4 /dev/x rw`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms, err := ParseMountinfo(b)
		if err != nil {
			return
		}
		// Round trip: formatting what was parsed, as the kernel would, parses to the same.
		var lines []string
		for _, m := range ms {
			lines = append(lines, format(m))
		}
		again, err := ParseMountinfo([]byte(strings.Join(lines, "\n")))
		if err != nil {
			t.Fatalf("re-parse of %q: %v", lines, err)
		}
		if d := cmp.Diff(again, ms); d != "" {
			t.Fatalf("round trip (-again +first):\n%s", d)
		}
	})
}

func TestServing(t *testing.T) {
	ms, err := ParseMountinfo([]byte(mountinfoSample))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, wantTarget string }{
		{"/dev/nvidia0", "/dev/nvidia0"},
		{"dev/nvidia0", "/dev/nvidia0"},
		{"/dev/nvidia1", "/dev"},
		{"/dev/nvidia0x", "/dev"},
		{"/run/gpupass/agent.sock", "/run/gpupass"},
		{"/etc/passwd", "/"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			m, ok := Serving(ms, tt.path)
			if !ok || m.Target != tt.wantTarget {
				t.Errorf("Serving(%q) = %q, %v; want %q", tt.path, m.Target, ok, tt.wantTarget)
			}
		})
	}
	// Stacked mounts: the later one is on top.
	stacked := append(ms, Mount{ID: 9999, Target: "/dev/nvidia0", Major: 0, Minor: 6})
	if m, _ := Serving(stacked, "/dev/nvidia0"); m.ID != 9999 {
		t.Errorf("stacked: got mount %d, want the later 9999", m.ID)
	}
	if _, ok := Serving(nil, "/x"); ok {
		t.Error("Serving(nil) found a mount")
	}
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
