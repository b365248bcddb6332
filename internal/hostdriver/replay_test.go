package hostdriver

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"gpupass/internal/guest"
)

// realH200 is what scripts/driver-host/proof.sh captured on an H200 host (driver
// 580.159.04, the userspace under /usr/local/nvidia): the host's loader cache, module
// version and driver directory listings; what `driver show` found there; the loader
// cache the driver hook built in the containers and what their guest agents reported.
const realH200 = "../../testdata/real-gpu/h200-driver-host"

// realH200Unprivileged is the same proof's later run (scripts/driver-host/proof.sh, g3): an
// unprivileged container (root mapped to 100000) with driver: host on the H200 host.
const realH200Unprivileged = "../../testdata/real-gpu/h200-driver-host-unprivileged"

// treeFromListing recreates a captured `ls -la --time-style=+` of dir under root: empty
// regular files, the same symbolic links, targets as captured. An absolute target
// (/usr/local/nvidia/...) names the host's /, which root stands for: Find resolves it
// inside root (hostPath), never on the test machine.
func treeFromListing(t *testing.T, root, dir, listing string) {
	t.Helper()
	b, err := os.ReadFile(listing)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
		t.Fatal(err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return // nothing of the driver's in dir
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("listing %s: line %q", listing, line)
		}
		p := filepath.Join(root, dir, f[5])
		switch f[0][0] {
		case 'l':
			if len(f) != 8 || f[6] != "->" {
				t.Fatalf("listing %s: link line %q", listing, line)
			}
			if err := os.Symlink(f[7], p); err != nil {
				t.Fatal(err)
			}
		case '-':
			write(t, p, "", 0o755)
		}
	}
}

// withoutSonames is s with its libraries' sonames blanked: Find reads them from the ELF
// files, which the fixtures do not carry.
func withoutSonames(s Set) Set {
	s.Libs = append([]File(nil), s.Libs...)
	for i := range s.Libs {
		s.Libs[i].Soname = ""
	}
	return s
}

// readShown is what `gpupass-host-agent driver show` printed on the captured host dir.
func readShown(t *testing.T, dir string) Set {
	t.Helper()
	var shown Set
	b, err := os.ReadFile(filepath.Join(dir, "driver-show.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &shown); err != nil {
		t.Fatal(err)
	}
	return shown
}

func copyFixture(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	write(t, dst, string(b), 0o644)
}

// TestReplayH200 runs Find on the H200 host's captured tree and compares with what the
// real `gpupass-host-agent driver show` printed there; then lays out the driver
// directory the way the hook does (links from the captured sonames) under the loader
// cache the hook's ldconfig built in each container, and runs the guest's userspace
// check: it must say what the real guest agents said (580.159.04 from the host), for
// the container with no NVIDIA files (g1) and for the one whose own old libnvidia-ml
// 570.86.15 is still in its image (g2, switched to driver: host).
func TestReplayH200(t *testing.T) {
	shown := readShown(t, realH200)

	t.Run("host: driver show", func(t *testing.T) {
		root := t.TempDir()
		fx := filepath.Join(realH200, "fixture/host")
		copyFixture(t, filepath.Join(fx, "proc/driver/nvidia/version"), filepath.Join(root, "proc/driver/nvidia/version"))
		copyFixture(t, filepath.Join(fx, "etc/ld.so.cache"), filepath.Join(root, "etc/ld.so.cache"))
		treeFromListing(t, root, "/usr/local/nvidia/lib64", filepath.Join(fx, "ls_usr_local_nvidia_lib64.txt"))
		treeFromListing(t, root, "/usr/local/nvidia/bin", filepath.Join(fx, "ls_usr_local_nvidia_bin.txt"))
		treeFromListing(t, root, "/usr/bin", filepath.Join(fx, "ls_usr_bin.txt"))
		got, err := Find(root)
		if err != nil {
			t.Fatal(err)
		}
		want := withoutSonames(shown)
		if diff := cmp.Diff(*got, want); diff != "" {
			t.Errorf("Find on the captured host vs the real driver show (-replay +real):\n%s", diff)
		}
	})

	for _, tc := range []struct {
		name, dir, container, report string
		ownOld                       bool
	}{
		{name: "g1: no NVIDIA files in the template", dir: realH200, container: "g1", report: "guest-g1.json"},
		{name: "g2: own libnvidia-ml 570.86.15, switched to driver: host", dir: realH200, container: "g2", report: "guest-g2-host.json", ownOld: true},
		{name: "g3: unprivileged (root is 100000), no NVIDIA files", dir: realH200Unprivileged, container: "g3", report: "guest-g3-unprivileged.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			copyFixture(t, filepath.Join(tc.dir, "fixture", tc.container, "ld.so.cache"), filepath.Join(root, "etc/ld.so.cache"))
			lib := filepath.Join(root, ContainerDir, "lib")
			for _, f := range readShown(t, tc.dir).Libs {
				write(t, filepath.Join(lib, f.Name), "", 0o644)
				for _, l := range links(f) {
					if err := os.Symlink(f.Name, filepath.Join(lib, l)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tc.ownOld {
				own := filepath.Join(root, "usr/local/nvidia/lib64")
				write(t, filepath.Join(own, "libnvidia-ml.so.570.86.15"), "", 0o644)
				if err := os.Symlink("libnvidia-ml.so.570.86.15", filepath.Join(own, "libnvidia-ml.so.1")); err != nil {
					t.Fatal(err)
				}
			}
			var rep guest.JSONReport
			b, err := os.ReadFile(filepath.Join(tc.dir, tc.report))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &rep); err != nil {
				t.Fatal(err)
			}
			nvml, err := guest.Paths{Root: root}.UserspaceDriver()
			if err != nil {
				t.Fatal(err)
			}
			got := guest.JSONDriver{Kernel: rep.Driver.Kernel, Userspace: nvml.Version, UserspacePath: nvml.Path, Source: guest.UserspaceSource(nvml.Path)}
			if diff := cmp.Diff(got, rep.Driver); diff != "" {
				t.Errorf("guest check on the replayed container vs the real guest report (-replay +real):\n%s", diff)
			}
			if rep.Driver.Kernel != rep.Driver.Userspace || rep.Driver.Source != "host" || !rep.Ready {
				t.Errorf("the real report is not ready with kernel = userspace from the host: %+v ready=%v", rep.Driver, rep.Ready)
			}
		})
	}
}

// realH200Vendor is what scripts/driver-host/vendor.sh captured on an H200 host (driver
// 580.159.04 under /usr/local/nvidia): the driver's directory listings as before, the
// listings of the vendor directories (/usr/share/vulkan/icd.d and
// /usr/share/glvnd/egl_vendor.d hold absolute links into /usr/local/nvidia/share,
// /etc/OpenCL/vendors only pocl.icd) with the small files' content, what `driver show`
// printed there, and the vendor paths inside a container the hook started.
const realH200Vendor = "../../testdata/real-gpu/h200-vendor-files"

// TestReplayH200VendorFiles runs Find on the H200 host's captured tree, vendor directories
// included, and compares with the real `driver show` there: the same libraries and tools,
// and as Configs exactly the Vulkan ICD and the glvnd EGL vendor file (both links the
// host follows to /usr/local/nvidia/share), not POCL's OpenCL file. Each Config reads the
// captured content through its link; in the real container (g1, no NVIDIA files in its
// template) each was a link to its copy under ContainerDir/conf, where the hook's
// listing shows a file of the host's size.
func TestReplayH200VendorFiles(t *testing.T) {
	shown := readShown(t, realH200Vendor)
	if len(shown.Configs) != 2 {
		t.Fatalf("the capture's driver show lists %d vendor files, want the 2 the host has: %+v", len(shown.Configs), shown.Configs)
	}

	root := t.TempDir()
	fx := filepath.Join(realH200Vendor, "fixture/host")
	for _, d := range []string{
		"/usr/local/nvidia/lib64", "/usr/local/nvidia/bin", "/usr/lib/x86_64-linux-gnu", "/usr/bin",
		"/etc/OpenCL/vendors", "/usr/share/vulkan/icd.d", "/usr/share/glvnd/egl_vendor.d",
		"/usr/local/nvidia/share/vulkan/icd.d", "/usr/local/nvidia/share/glvnd/egl_vendor.d",
	} {
		treeFromListing(t, root, d, filepath.Join(fx, "ls"+strings.ReplaceAll(d, "/", "_")+".txt"))
	}
	// The captured files' content over the listings' empty files.
	for _, top := range []string{"proc", "etc", "usr"} {
		err := filepath.WalkDir(filepath.Join(fx, top), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(fx, p)
			copyFixture(t, p, filepath.Join(root, rel))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	got, err := Find(root)
	if err != nil {
		t.Fatal(err)
	}
	want := withoutSonames(shown)
	if diff := cmp.Diff(*got, want); diff != "" {
		t.Errorf("Find on the captured host vs the real driver show (-replay +real):\n%s", diff)
	}

	links, err := os.ReadFile(filepath.Join(realH200Vendor, "fixture/g1/ls-configs.txt"))
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(realH200Vendor, "fixture/g1/ls-conf.txt"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range got.Configs {
		content, err := hostReadFile(root, f.Path)
		if err != nil {
			t.Fatalf("read %s through the replayed host's link: %v", f.Path, err)
		}
		if !strings.Contains(string(content), `"library_path"`) {
			t.Errorf("%s on the replayed host is not the captured vendor file: %q", f.Path, content)
		}
		if l := f.Path + " -> " + ContainerDir + "/conf" + f.Path; !strings.Contains(string(links), l) {
			t.Errorf("in the real container %s was not our link %q:\n%s", f.Path, l, links)
		}
		if !hasListed(string(conf), f.Name, len(content)) {
			t.Errorf("the real container's %s/conf has no %s of the host's %d bytes:\n%s", ContainerDir, f.Name, len(content), conf)
		}
	}
}

// hasListed says whether a busybox `ls -l` listing has a regular file name of size bytes.
func hasListed(listing, name string, size int) bool {
	for _, line := range strings.Split(listing, "\n") {
		f := strings.Fields(line)
		if len(f) >= 9 && strings.HasPrefix(f[0], "-") && f[len(f)-1] == name && f[4] == strconv.Itoa(size) {
			return true
		}
	}
	return false
}
