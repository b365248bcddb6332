package guest

import (
	"path/filepath"
	"strings"
)

// Paths says where the checks look. Every path is inside Root, so tests point Root at a
// fixture tree; paths found while checking (ld.so.cache entries, symlink targets) are read
// inside Root too.
type Paths struct {
	Root    string   // default "/"
	Dev     string   // default "/dev"
	Proc    string   // default "/proc"
	LdCache string   // default "/etc/ld.so.cache"
	LibDirs []string // searched for libnvidia-ml when ld.so.cache has no entry; default DefaultLibDirs
	BinDirs []string // searched for nvidia-smi after $PATH; default DefaultBinDirs
	// PathEnv is the $PATH searched for nvidia-smi (inside Root); "" means none.
	PathEnv string
}

// DefaultLibDirs are the directories the dynamic linker searches by default on the
// distributions gpupass templates use, then where NVIDIA's container images put the driver.
var DefaultLibDirs = []string{
	HostDriverLibDir,
	"/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu",
	"/usr/lib64", "/lib64", "/usr/lib", "/lib",
	"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
}

// HostDriverDir is where the host agent's driver hook puts the host's userspace driver in
// a `driver: host` container (package hostdriver, ContainerDir); HostDriverLibDir its
// libraries. A library found there is the host's (source "host"), any other the
// template's ("own").
const (
	HostDriverDir    = "/usr/lib/gpupass-driver"
	HostDriverLibDir = HostDriverDir + "/lib"
)

// UserspaceSource says where the userspace driver at path came from: "host" under
// HostDriverDir, "own" elsewhere, "" for no path.
func UserspaceSource(path string) string {
	switch {
	case path == "":
		return ""
	case strings.HasPrefix(filepath.Clean(path), HostDriverDir+"/"):
		return "host"
	}
	return "own"
}

// DefaultBinDirs are searched for nvidia-smi after $PATH.
var DefaultBinDirs = []string{HostDriverDir + "/bin", "/usr/local/nvidia/bin", "/usr/bin", "/bin"}

// withDefaults returns p with every empty field set to its default.
func (p Paths) withDefaults() Paths {
	if p.Root == "" {
		p.Root = "/"
	}
	if p.Dev == "" {
		p.Dev = "/dev"
	}
	if p.Proc == "" {
		p.Proc = "/proc"
	}
	if p.LdCache == "" {
		p.LdCache = "/etc/ld.so.cache"
	}
	if p.LibDirs == nil {
		p.LibDirs = DefaultLibDirs
	}
	if p.BinDirs == nil {
		p.BinDirs = DefaultBinDirs
	}
	return p
}

// host returns the path of the in-container path p on this machine: p inside Root.
func (p Paths) host(path string) string {
	return filepath.Join(p.Root, filepath.Clean("/"+path))
}

// devPath maps an expected device path (always under /dev inside the container) to the
// checked path, honouring Dev. ok is false for a path that is not a clean path under /dev:
// the agent checks device nodes, not arbitrary files.
func (p Paths) devPath(path string) (string, bool) {
	if !strings.HasPrefix(path, "/dev/") || filepath.Clean(path) != path {
		return "", false
	}
	return p.host(filepath.Join(p.Dev, strings.TrimPrefix(path, "/dev/"))), true
}
