package observe

import (
	"path"
	"strings"
)

// FileID is a file's identity: st_dev and st_ino.
type FileID struct {
	Dev uint64
	Ino uint64
}

// SocketEvidence is what the host sees of a container's guest socket, gathered by
// GuestSocketEvidence and judged by JudgeSocket.
type SocketEvidence struct {
	// Host is the host's socket file.
	Host FileID
	// HostDirRoot is the socket directory's path within its filesystem (what a bind of it
	// shows as root in mountinfo); "" when unknown, and then any bind of that filesystem
	// at a dir counts as the socket's (all guest directories share one filesystem, so
	// knowing it matters).
	HostDirRoot string
	// Dirs are the container directories the socket may be mounted at, preferred first
	// (/dev/gpupass, then the legacy /run/gpupass).
	Dirs []string
	// Inside holds, for each dir that resolves inside the container (through the init's
	// root, as a process there would), the identity of <dir>/<socket name>; a dir whose
	// socket does not resolve is absent.
	Inside map[string]FileID
	// Mounts is the init's mountinfo, in the kernel's order (older mounts first).
	Mounts []Mount
}

// SocketView is the verdict: where the container sees the host's socket, or why not.
type SocketView struct {
	// Visible is the dir at which the container sees the host's socket ("" if nowhere).
	Visible string
	// Hidden is the dir where the bind mount of the host's directory is in the container's
	// mountinfo but a later mount on Cover (an ancestor such as /run, or the dir itself)
	// hides it from every process in the container.
	Hidden, Cover string
	// Mounted is a dir whose bind of the host's directory is in mountinfo but whose socket
	// does not resolve to the host's (neither visible nor explained by a covering mount).
	Mounted string
}

// JudgeSocket decides from the evidence whether the container sees the host's socket.
// The evidence is what the container sees (the inode at the path), not a mountinfo line:
// systemd mounts a tmpfs on /run at boot, which leaves a bind under /run in mountinfo but
// out of reach.
func JudgeSocket(ev SocketEvidence) SocketView {
	var v SocketView
	for _, d := range ev.Dirs {
		if id, ok := ev.Inside[d]; ok && id == ev.Host {
			v.Visible = d
			return v
		}
	}
	for _, d := range ev.Dirs {
		i := bindIndex(ev.Mounts, d, ev.Host.Dev, ev.HostDirRoot)
		if i < 0 {
			continue
		}
		if cover, ok := coveredBy(ev.Mounts[i+1:], d); ok {
			if v.Hidden == "" {
				v.Hidden, v.Cover = d, cover
			}
			continue
		}
		if v.Mounted == "" {
			v.Mounted = d
		}
	}
	return v
}

// bindIndex is the position of the last mount at dir of the host's socket directory (its
// filesystem's st_dev dev, its path root within it when known), or -1.
func bindIndex(mounts []Mount, dir string, dev uint64, root string) int {
	maj, min := devMajor(dev), devMinor(dev)
	at := -1
	for i, m := range mounts {
		if path.Clean(m.Target) == path.Clean(dir) && m.Major == maj && m.Minor == min && (root == "" || path.Clean(m.Root) == root) {
			at = i
		}
	}
	return at
}

// coveredBy reports the target of a mount, among those made after the bind, on dir
// itself or on one of its ancestors other than "/".
func coveredBy(later []Mount, dir string) (string, bool) {
	dir = path.Clean(dir)
	for _, m := range later {
		t := path.Clean(m.Target)
		if t != "/" && (t == dir || strings.HasPrefix(dir, t+"/")) {
			return t, true
		}
	}
	return "", false
}

// devMajor and devMinor split a Linux dev_t (glibc's encoding, as unix.Major/Minor).
func devMajor(dev uint64) uint32 {
	return uint32((dev>>32)&0xfffff000) | uint32((dev>>8)&0x00000fff)
}

func devMinor(dev uint64) uint32 {
	return uint32((dev>>12)&0xffffff00) | uint32(dev&0x000000ff)
}

// PathInFilesystem gives the path of dir within its filesystem, from the mounts of a
// process that sees dir (for a bind: what mountinfo shows as its root), or "" when no
// mount of a filesystem with st_dev dev serves it.
func PathInFilesystem(mounts []Mount, dir string, dev uint64) string {
	m, ok := Serving(mounts, dir)
	if !ok || m.Major != devMajor(dev) || m.Minor != devMinor(dev) {
		return ""
	}
	rel := strings.TrimPrefix(path.Clean(dir), path.Clean(m.Target))
	return path.Clean(path.Join(m.Root, rel))
}
