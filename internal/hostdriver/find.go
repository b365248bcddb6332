// Package hostdriver provides the host's NVIDIA userspace driver to containers that ask for
// it (fleet.yaml `driver: host`): it finds the libraries and tools of the LOADED kernel
// module's version from the host's loader cache and driver layout, and the vendor files
// that OpenCL, Vulkan and EGL loaders find by path (Find), refuses when the host's own
// userspace does not match its module (ErrMismatch), and, from an LXC mount hook at every
// container start, binds them read-only into the container and refreshes the container's
// loader cache (Mount). See docs/driver.md.
package hostdriver

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"gpupass/internal/gpu"
	"gpupass/internal/guest"
)

// Sentinels callers branch on.
var (
	// ErrNoDriver means no NVIDIA kernel module is loaded (no /proc/driver/nvidia/version).
	ErrNoDriver = errors.New("no NVIDIA kernel module loaded")
	// ErrNoUserspace means the host has no NVIDIA userspace libraries at all.
	ErrNoUserspace = errors.New("no NVIDIA userspace driver on the host")
	// ErrMismatch means the host's userspace libraries are of another version than the
	// loaded kernel module.
	ErrMismatch = errors.New("host userspace driver does not match the kernel module")
)

// LibDirs are the driver layouts searched besides the directories the host's loader cache
// names: NVIDIA's .run installer and Debian/Ubuntu packages (/usr/lib/x86_64-linux-gnu),
// RPM layouts (/usr/lib64), Debian's alternatives (/usr/lib/nvidia/current) and the
// /usr/local/nvidia tree of GPU cloud images (FACTS.md: the H100/H200 test hosts).
var LibDirs = []string{
	"/usr/local/nvidia/lib64",
	"/usr/local/nvidia/lib",
	"/usr/lib/x86_64-linux-gnu",
	"/usr/lib/x86_64-linux-gnu/nvidia/current",
	"/usr/lib/nvidia/current",
	"/usr/lib64",
	"/usr/lib",
}

// BinDirs are searched for Tools besides the "bin" beside each library directory's parent
// (/usr/local/nvidia/lib64 -> /usr/local/nvidia/bin).
var BinDirs = []string{"/usr/bin", "/usr/local/bin", "/usr/sbin"}

// Tools are the driver's programs a container gets.
var Tools = []string{"nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control", "nvidia-cuda-mps-server"}

// ConfigRoots are where Find looks for ConfigFiles: the system configuration, then the
// default XDG data directories, where the Vulkan loader and glvnd look (the same three
// NVIDIA's container toolkit searches for these files: nvidia-container-toolkit
// internal/lookup/root/root.go, Driver.Configs).
var ConfigRoots = []string{"/etc", "/usr/local/share", "/usr/share"}

// ConfigFiles are the driver's vendor files, relative to each of ConfigRoots: loaders find
// them by path, not through the loader cache. The OpenCL ICD file (names
// libnvidia-opencl.so.1), the Vulkan ICD and layer files (libGLX_nvidia.so.0), the glvnd
// EGL vendor file (libEGL_nvidia.so.0), the EGL external platform files (wayland, gbm,
// xcb, xlib), the application profiles the GL/EGL/Vulkan driver of that version reads,
// and OptiX's nvoptix.bin: what nvidia-container-toolkit mounts for these loaders
// (internal/discover/graphics.go, NewGraphicsMountsDiscoverer), plus the profiles that
// NVIDIA's installer puts in /usr/share/nvidia. A "*" matches within the file name
// (filepath.Match); {version} is the loaded module's.
var ConfigFiles = []string{
	"OpenCL/vendors/nvidia.icd",
	"vulkan/icd.d/nvidia_icd.json",
	"vulkan/icd.d/nvidia_layers.json",
	"vulkan/implicit_layer.d/nvidia_layers.json",
	"glvnd/egl_vendor.d/10_nvidia.json",
	"egl/egl_external_platform.d/*nvidia*.json",
	"nvidia/nvidia-application-profiles-{version}-rc",
	"nvidia/nvoptix.bin",
}

// File is one file of the set: Name inside the container's driver directory, Path on the
// host (without the discovery root).
type File struct {
	Name string
	Path string
	// Soname is the library's ELF DT_SONAME (libcuda.so.1), "" for tools or when the
	// file carries none.
	Soname string
}

// Set is the host's userspace driver of the loaded kernel module's version.
type Set struct {
	// Version is the loaded kernel module's ("580.159.04").
	Version string
	Libs    []File
	Tools   []File
	// Dirs are the host directories the libraries came from.
	Dirs []string
	// Configs are the vendor files (ConfigFiles) the host has: Name is the file's name,
	// Path where it is on the host and, the same, where the container gets it.
	Configs []File
}

// libRE matches an NVIDIA driver library of one version: libcuda.so.580.159.04,
// libnvidia-ml.so.580.159.04, libnvcuvid.so.580.159.04, libGLX_nvidia.so.580.159.04.
// The version is the driver's own, never a fixed number.
var libRE = regexp.MustCompile(`^(libcuda|libcudadebugger|libnv[a-z0-9_-]*|lib[A-Za-z0-9]+_nvidia)\.so\.([0-9]{2,4}\.[0-9]{1,4}(?:\.[0-9]{1,4})?)$`)

// Find reads the host under root ("/" or a fixture tree) and returns the userspace set of
// the loaded module's version. The NVML library decides a mismatch: when the host has
// libnvidia-ml of another version and none of the module's, it returns ErrMismatch naming
// both versions and where.
func Find(root string) (*Set, error) {
	vb, err := hostReadFile(root, "/proc/driver/nvidia/version")
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read /proc/driver/nvidia/version: %w", ErrNoDriver)
	}
	if err != nil {
		return nil, fmt.Errorf("read kernel driver version: %w", err)
	}
	v, err := gpu.ParseVersion(vb)
	if err != nil {
		return nil, fmt.Errorf("parse /proc/driver/nvidia/version: %w", err)
	}
	set := &Set{Version: v.Version}
	others := map[string][]string{} // libnvidia-ml versions that are not the module's -> dirs
	seen := map[string]bool{}
	for _, dir := range libDirs(root) {
		ents, err := hostReadDir(root, dir)
		if err != nil {
			continue
		}
		took := false
		for _, e := range ents {
			m := libRE.FindStringSubmatch(e.Name())
			if m == nil || e.IsDir() {
				continue
			}
			if m[2] != v.Version {
				if m[1] == "libnvidia-ml" {
					others[m[2]] = append(others[m[2]], dir)
				}
				continue
			}
			if seen[e.Name()] {
				continue
			}
			fi, err := hostStat(root, filepath.Join(dir, e.Name()))
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			seen[e.Name()] = true
			took = true
			p := filepath.Join(dir, e.Name())
			set.Libs = append(set.Libs, File{Name: e.Name(), Path: p, Soname: soname(root, p)})
		}
		if took {
			set.Dirs = append(set.Dirs, dir)
		}
	}
	if !seen["libnvidia-ml.so."+v.Version] {
		if len(others) > 0 {
			var vs []string
			for ov, dirs := range others {
				vs = append(vs, ov+" (in "+strings.Join(dirs, ", ")+")")
			}
			sort.Strings(vs)
			return nil, fmt.Errorf("the host's libnvidia-ml is %s but the loaded kernel module is %s: reboot into the new module or reinstall the driver's userspace of %s on the host: %w", strings.Join(vs, ", "), v.Version, v.Version, ErrMismatch)
		}
		return nil, fmt.Errorf("find libnvidia-ml.so.%s in the loader cache and %s: install the NVIDIA driver's userspace on the host: %w", v.Version, strings.Join(LibDirs, ", "), ErrNoUserspace)
	}
	sort.Slice(set.Libs, func(i, j int) bool { return set.Libs[i].Name < set.Libs[j].Name })
	set.Tools = findTools(root, set.Dirs)
	set.Configs = findConfigs(root, v.Version)
	return set, nil
}

// DefaultHookBinary is where the host agent's package installs it.
const DefaultHookBinary = "/usr/bin/gpupass-host-agent"

// HookCommand is the driver hook command line for a host root: what `driver: host`
// renders as lxc.hook.mount. It names the running host agent (a build run from
// elsewhere hooks itself), or DefaultHookBinary when the running program is another one
// (a test binary).
func HookCommand(hostRoot string) string {
	exe, err := os.Executable()
	if err != nil || !strings.HasPrefix(filepath.Base(exe), "gpupass-host-agent") {
		exe = DefaultHookBinary
	}
	h := exe + " driver hook"
	if hostRoot != "" && hostRoot != "/" {
		h += " --host-root " + hostRoot
	}
	return h
}

// libDirs are the directories of the host loader cache's NVIDIA entries, then LibDirs.
func libDirs(root string) []string {
	var out []string
	add := func(d string) {
		d = filepath.Clean(d)
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	if b, err := hostReadCapped(root, "/etc/ld.so.cache", 16<<20); err == nil {
		if entries, err := guest.ParseLdCache(b); err == nil {
			for _, e := range entries {
				if libRE.MatchString(filepath.Base(resolveIn(root, e.Value))) || strings.HasPrefix(e.Key, "libnvidia-ml.so") || strings.HasPrefix(e.Key, "libcuda.so") {
					add(filepath.Dir(e.Value))
				}
			}
		}
	}
	for _, d := range LibDirs {
		add(d)
	}
	return out
}

func findTools(root string, libDirs []string) []File {
	var dirs []string
	for _, d := range libDirs {
		dirs = append(dirs, filepath.Join(filepath.Dir(d), "bin"))
	}
	dirs = append(dirs, BinDirs...)
	var out []File
	for _, t := range Tools {
		for _, d := range dirs {
			p := filepath.Join(d, t)
			if fi, err := hostStat(root, p); err == nil && fi.Mode().IsRegular() {
				out = append(out, File{Name: t, Path: p})
				break
			}
		}
	}
	return out
}

// findConfigs returns the ConfigFiles of version the host has as regular files (or links
// to one), sorted by path. A missing file or directory is no error: most hosts lack some.
func findConfigs(root, version string) []File {
	var out []File
	for _, r := range ConfigRoots {
		for _, c := range ConfigFiles {
			p := filepath.Join(r, strings.ReplaceAll(c, "{version}", version))
			dir, pat := filepath.Split(p)
			var cands []string
			if strings.Contains(pat, "*") {
				ents, err := hostReadDir(root, dir)
				if err != nil {
					continue
				}
				for _, e := range ents {
					if ok, _ := filepath.Match(pat, e.Name()); ok {
						cands = append(cands, e.Name())
					}
				}
			} else {
				cands = []string{pat}
			}
			for _, n := range cands {
				hp := filepath.Join(dir, n)
				if fi, err := hostStat(root, hp); err == nil && fi.Mode().IsRegular() {
					out = append(out, File{Name: n, Path: hp})
				}
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// soname is the ELF DT_SONAME of the host's library at p ("" when it has none or is no
// ELF).
func soname(root, p string) string {
	path, err := hostPath(root, p)
	if err != nil {
		return ""
	}
	f, err := elf.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s, err := f.DynString(elf.DT_SONAME)
	if err != nil || len(s) == 0 {
		return ""
	}
	return s[0]
}

// resolveIn follows a host path's last symbolic link (within root) to the file's name.
func resolveIn(root, p string) string {
	dir, err := hostPath(root, filepath.Dir(p))
	if err != nil {
		return p
	}
	t, err := os.Readlink(filepath.Join(dir, filepath.Base(p)))
	if err != nil {
		return p
	}
	if !filepath.IsAbs(t) {
		t = filepath.Join(filepath.Dir(p), t)
	}
	return t
}

func join(root, p string) string {
	if root == "" || root == "/" {
		return p
	}
	return filepath.Join(root, p)
}

// hostStat, hostReadDir and hostReadFile are os.Stat, os.ReadDir and os.ReadFile of a
// host path under root (hostPath).
func hostStat(root, p string) (os.FileInfo, error) {
	hp, err := hostPath(root, p)
	if err != nil {
		return nil, err
	}
	return os.Stat(hp)
}

func hostReadDir(root, p string) ([]os.DirEntry, error) {
	hp, err := hostPath(root, p)
	if err != nil {
		return nil, err
	}
	return os.ReadDir(hp)
}

func hostReadFile(root, p string) ([]byte, error) {
	hp, err := hostPath(root, p)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(hp)
}

// hostReadCapped reads a host path under root, at most limit bytes.
func hostReadCapped(root, p string, limit int64) ([]byte, error) {
	hp, err := hostPath(root, p)
	if err != nil {
		return nil, err
	}
	return readCapped(hp, limit)
}

func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, limit)
	}
	return b, nil
}
