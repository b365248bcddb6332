package hostdriver

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Two driver versions as a host has them around an upgrade.
const (
	v1 = "580.95.05"
	v2 = "580.159.04"
)

// simLibs are the libraries of a simulated driver install (names as NVIDIA's installer
// writes them, the version appended).
var simLibs = []string{"libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvidia-nvvm", "libnvcuvid", "libnvidia-encode", "libnvidia-opticalflow", "libnvidia-gpucomp", "libGLX_nvidia"}

// writeHost makes a host tree: the loaded module's version (kernel "" writes none) and
// the libraries of each version in libs under dir, with nvidia-smi in bin.
func writeHost(t *testing.T, root, kernel, dir string, libVersions ...string) {
	t.Helper()
	if kernel != "" {
		write(t, filepath.Join(root, "proc/driver/nvidia/version"), "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  "+kernel+"  Release Build  (dvs-builder@U22)\nGCC version:  gcc version 12.2.0\n", 0o644)
	}
	for _, v := range libVersions {
		for _, l := range simLibs {
			write(t, filepath.Join(root, dir, l+".so."+v), l+" "+v+"\n", 0o644)
		}
	}
	bin := "/usr/bin" // the Debian layout; the cloud one keeps bin beside lib64
	if strings.HasPrefix(dir, "/usr/local/nvidia/") {
		bin = "/usr/local/nvidia/bin"
	}
	write(t, filepath.Join(root, bin, "nvidia-smi"), "#!/bin/sh\necho nvidia-smi from the host\n", 0o755)
}

// simConfigs are the vendor files of a simulated host (paths as NVIDIA's installer and
// the Debian packages place them), {version} the driver's.
var simConfigs = []string{
	"/etc/OpenCL/vendors/nvidia.icd",
	"/etc/vulkan/icd.d/nvidia_icd.json",
	"/usr/share/vulkan/icd.d/nvidia_icd.json",
	"/usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
	"/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
	"/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
	"/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
	"/usr/share/nvidia/nvidia-application-profiles-{version}-rc",
}

// simConfigLinks are the simulated host's vendor files that are absolute symbolic links,
// as the H200 host's (testdata/real-gpu/h200-vendor-files): their targets exist only
// under the host root, so Find and the hook must resolve them inside it.
var simConfigLinks = map[string]string{
	"/usr/share/vulkan/icd.d/nvidia_icd.json": "/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json",
}

// writeConfigs writes the simulated host's vendor files of version v, each reading
// "<path> of the host\n", and neighbours that are not NVIDIA's driver's (Mesa's vendor
// files, another version's profiles' documentation).
func writeConfigs(t *testing.T, root, v string) []string {
	t.Helper()
	var paths []string
	for _, c := range simConfigs {
		p := strings.ReplaceAll(c, "{version}", v)
		paths = append(paths, p)
		if target, ok := simConfigLinks[p]; ok {
			// As on the H200 host: an absolute link, which only resolves inside root.
			write(t, filepath.Join(root, target), p+" of the host\n", 0o644)
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(root, p)); err != nil && !errors.Is(err, os.ErrExist) {
				t.Fatal(err)
			}
			continue
		}
		write(t, filepath.Join(root, p), p+" of the host\n", 0o644)
	}
	for _, p := range []string{"/usr/share/glvnd/egl_vendor.d/50_mesa.json", "/usr/share/vulkan/icd.d/lvp_icd.x86_64.json", "/usr/share/egl/egl_external_platform.d/20_other.json", "/usr/share/nvidia/nvidia-application-profiles-" + v + "-key-documentation"} {
		write(t, filepath.Join(root, p), "not the driver's vendor file\n", 0o644)
	}
	sort.Strings(paths)
	return paths
}

func write(t *testing.T, p, s string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func names(fs []File) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Name+"="+f.Path)
	}
	return out
}

func wantLibs(dir, v string) []string {
	var out []string
	for _, l := range simLibs {
		out = append(out, l+".so."+v+"="+filepath.Join(dir, l+".so."+v))
	}
	sort.Strings(out) // Find sorts by name
	return out
}

func TestFind(t *testing.T) {
	const deb = "/usr/lib/x86_64-linux-gnu"
	const cloud = "/usr/local/nvidia/lib64"
	for _, tc := range []struct {
		name     string
		kernel   string
		dir      string
		libs     []string
		wantV    string
		wantLibs []string
		wantTool string
		wantErr  error
		errHas   string
	}{
		{name: "debian layout, one version", kernel: v1, dir: deb, libs: []string{v1}, wantV: v1, wantLibs: wantLibs(deb, v1), wantTool: "nvidia-smi=/usr/bin/nvidia-smi"},
		{name: "cloud layout (/usr/local/nvidia)", kernel: v2, dir: cloud, libs: []string{v2}, wantV: v2, wantLibs: wantLibs(cloud, v2), wantTool: "nvidia-smi=/usr/local/nvidia/bin/nvidia-smi"},
		{name: "both versions installed: the loaded module's", kernel: v2, dir: deb, libs: []string{v1, v2}, wantV: v2, wantLibs: wantLibs(deb, v2), wantTool: "nvidia-smi=/usr/bin/nvidia-smi"},
		{name: "upgraded userspace, old module still loaded", kernel: v1, dir: deb, libs: []string{v2}, wantErr: ErrMismatch, errHas: "libnvidia-ml is " + v2 + " (in " + deb + ") but the loaded kernel module is " + v1},
		{name: "no userspace", kernel: v1, dir: deb, wantErr: ErrNoUserspace},
		{name: "no module loaded", dir: deb, libs: []string{v1}, wantErr: ErrNoDriver},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeHost(t, root, tc.kernel, tc.dir, tc.libs...)
			set, err := Find(root)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("Find: %v, want %v containing %q", err, tc.wantErr, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if set.Version != tc.wantV {
				t.Errorf("version %s, want %s", set.Version, tc.wantV)
			}
			if diff := cmp.Diff(names(set.Libs), tc.wantLibs); diff != "" {
				t.Errorf("libs (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(names(set.Tools), []string{tc.wantTool}); diff != "" {
				t.Errorf("tools (-got +want):\n%s", diff)
			}
		})
	}
}

func TestLinks(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    File
		want []string
	}{
		{name: "libcuda with its ELF soname", f: File{Name: "libcuda.so." + v2, Soname: "libcuda.so.1"}, want: []string{"libcuda.so.1", "libcuda.so"}},
		{name: "nvvm's soname is .so.4", f: File{Name: "libnvidia-nvvm.so." + v2, Soname: "libnvidia-nvvm.so.4"}, want: []string{"libnvidia-nvvm.so.4"}},
		{name: "gpucomp's soname is its name", f: File{Name: "libnvidia-gpucomp.so." + v2, Soname: "libnvidia-gpucomp.so." + v2}},
		{name: "no ELF (test tree): nvml gets .so.1", f: File{Name: "libnvidia-ml.so." + v2}, want: []string{"libnvidia-ml.so.1", "libnvidia-ml.so"}},
		{name: "no ELF, another library: none", f: File{Name: "libnvcuvid.so." + v2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(links(tc.f), tc.want); diff != "" {
				t.Errorf("links (-got +want):\n%s", diff)
			}
		})
	}
}

func TestForecastUpgrade(t *testing.T) {
	for _, tc := range []struct {
		name           string
		wantHost       bool
		own            string
		want           Forecast
		wantTextPrefix string
	}{
		{name: "host realigns", wantHost: true, own: v1, want: Forecast{Realigns: true}, wantTextPrefix: "realigns by itself"},
		{name: "own of another version breaks", own: v1, want: Forecast{Breaks: true}, wantTextPrefix: "would break: its own userspace is " + v1},
		{name: "own of the new version keeps matching", own: v2, wantTextPrefix: "keeps matching"},
		{name: "own without userspace", wantTextPrefix: "no userspace driver reported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ForecastUpgrade(tc.wantHost, tc.own, v2)
			if got.Realigns != tc.want.Realigns || got.Breaks != tc.want.Breaks || !strings.HasPrefix(got.Text, tc.wantTextPrefix) {
				t.Errorf("ForecastUpgrade = %+v, want realigns %v breaks %v text %q...", got, tc.want.Realigns, tc.want.Breaks, tc.wantTextPrefix)
			}
		})
	}
}

// TestFindConfigs: Find gives the vendor files the host has (OpenCL ICD, Vulkan ICD and
// layers in /etc and /usr/share, the glvnd EGL vendor file, the EGL external platforms,
// the application profiles of the loaded version only, a Debian-style link to the file),
// none of their non-NVIDIA neighbours, and nothing, without an error, on a host without
// them.
func TestFindConfigs(t *testing.T) {
	const deb = "/usr/lib/x86_64-linux-gnu"
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, root string) []string // writes the files, returns the wanted paths
	}{
		{name: "all vendor files", setup: func(t *testing.T, root string) []string {
			return writeConfigs(t, root, v2)
		}},
		{name: "both versions' profiles: the loaded module's", setup: func(t *testing.T, root string) []string {
			writeConfigs(t, root, v1)
			return writeConfigs(t, root, v2)
		}},
		{name: "a link to the file (Debian alternatives) is followed; a directory of that name is not a file", setup: func(t *testing.T, root string) []string {
			write(t, filepath.Join(root, "/etc/nvidia/current/nvidia.icd"), "libnvidia-opencl.so.1\n", 0o644)
			if err := os.MkdirAll(filepath.Join(root, "/etc/OpenCL/vendors"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink("../../nvidia/current/nvidia.icd", filepath.Join(root, "/etc/OpenCL/vendors/nvidia.icd")); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(root, "/usr/share/vulkan/icd.d/nvidia_icd.json"), 0o755); err != nil {
				t.Fatal(err)
			}
			return []string{"/etc/OpenCL/vendors/nvidia.icd"}
		}},
		{name: "a host without vendor files", setup: func(t *testing.T, root string) []string {
			write(t, filepath.Join(root, "/usr/share/glvnd/egl_vendor.d/50_mesa.json"), "{}\n", 0o644)
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			writeHost(t, root, v2, deb, v2)
			want := tc.setup(t, root)
			set, err := Find(root)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range set.Configs {
				if f.Name != filepath.Base(f.Path) {
					t.Errorf("config %+v: name is not the path's", f)
				}
				got = append(got, f.Path)
			}
			if diff := cmp.Diff(got, want); diff != "" {
				t.Errorf("configs (-got +want):\n%s", diff)
			}
		})
	}
}
