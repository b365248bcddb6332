package guestchan

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	pb "gpupass/proto/gpupass/v1"
)

// MaxIDLength bounds a container id (Proxmox ids are numbers; plain LXC names are short).
const MaxIDLength = 64

var (
	// ErrInvalidID is returned for a container id that cannot name a socket directory.
	ErrInvalidID = errors.New("invalid container id")
	// ErrUnknownContainer is returned for an id the registry does not know (never ensured,
	// or removed).
	ErrUnknownContainer = errors.New("unknown container")
)

// ValidateID checks that id can name a container's socket directory: 1 to MaxIDLength
// characters from [A-Za-z0-9_.-], starting with a letter or digit (so never "." or "..").
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty: give the Proxmox id (e.g. 901) or the LXC container name", ErrInvalidID)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%w: %q is %d characters long, at most %d are allowed", ErrInvalidID, id[:16]+"...", len(id), MaxIDLength)
	case !isAlnum(id[0]):
		return fmt.Errorf("%w: %q must start with a letter or a digit", ErrInvalidID, id)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return fmt.Errorf("%w: %q contains %q at offset %d: only letters, digits, '_', '.' and '-' are allowed", ErrInvalidID, id, c, i)
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// UnifiedCgroup returns the cgroup v2 path of a /proc/<pid>/cgroup file: the path of its
// "0::" line. ok is false when the file has no such line.
func UnifiedCgroup(procCgroup string) (path string, ok bool) {
	for line := range strings.SplitSeq(procCgroup, "\n") {
		if p, found := strings.CutPrefix(line, "0::"); found {
			return strings.TrimRight(p, "\r"), true
		}
	}
	return "", false
}

// ContainerOfCgroup returns the container a cgroup v2 path belongs to, or ok false when the
// path is outside every container. It recognises plain LXC (`.../lxc.payload.<id>[/...]`)
// and Proxmox (`.../lxc/<id>[/ns[/...]]`) below whatever cgroup the host's LXC runs in
// (`/`, or e.g. `/process_api/core` on a host that is itself a slice of a bigger machine).
// The FIRST container segment decides: a process of container 902 can create
// `/lxc.payload.902/lxc.payload.901` inside its own delegated subtree, and that must not
// pass for container 901. The monitor cgroups (`lxc.monitor.<id>`, `lxc.monitor/<id>`)
// are not inside the container.
func ContainerOfCgroup(path string) (id string, ok bool) {
	rest, found := strings.CutPrefix(path, "/")
	if !found {
		return "", false // relative (another cgroup namespace) or garbage
	}
	segs := strings.Split(rest, "/")
	for _, s := range segs {
		if s == "." || s == ".." {
			return "", false
		}
	}
	for i, s := range segs {
		switch {
		case strings.HasPrefix(s, "lxc.payload."):
			id = strings.TrimPrefix(s, "lxc.payload.")
		case s == "lxc" && i+1 < len(segs):
			id = segs[i+1]
		case strings.HasPrefix(s, "lxc.monitor"):
			return "", false
		default:
			continue
		}
		if ValidateID(id) != nil {
			return "", false
		}
		return id, true
	}
	return "", false
}

// peerIdentity is what the kernel says about a connecting process.
type peerIdentity struct {
	pid    int32
	cgroup string // the unified cgroup path, "" when unknown
	err    error  // why the identity could not be read
	gen    Generation
}

// checkPeer decides whether a peer with this Hello and identity may use the socket of
// container id. A refusal's text is the reason sent to the peer. The container id comes
// from the kernel (the peer's cgroup) and the socket's directory, never from the Hello:
// the guest's claim is its hostname by default, which on Proxmox is any name ("ai-901"
// for container 901), so a claim that differs is normal; claimMismatch says so, for a
// debug log, and is never a refusal.
func checkPeer(id string, hello *pb.Hello, peer peerIdentity) (ref *refusal, claimMismatch bool) {
	ref = checkKernelIdentity(id, hello, peer)
	return ref, ref == nil && hello.GetContainerId() != "" && hello.GetContainerId() != id
}

func checkKernelIdentity(id string, hello *pb.Hello, peer peerIdentity) *refusal {
	if r := hello.GetRole(); r != pb.Role_ROLE_GUEST_AGENT {
		return &refusal{"role", fmt.Errorf("role %s is not allowed on a guest socket: only %s may connect", r, pb.Role_ROLE_GUEST_AGENT)}
	}
	if peer.err != nil {
		return &refusal{"identity", fmt.Errorf("identify peer: %w", peer.err)}
	}
	in, ok := ContainerOfCgroup(peer.cgroup)
	switch {
	case !ok:
		return &refusal{"identity", fmt.Errorf("peer pid %d (cgroup %q) is not in any container: this socket belongs to container %s", peer.pid, peer.cgroup, id)}
	case in != id:
		return &refusal{"identity", fmt.Errorf("peer pid %d is in container %s (cgroup %q): this socket belongs to container %s", peer.pid, in, peer.cgroup, id)}
	}
	return nil
}

// parseRootMapping returns the outside id that a uid_map (lines "inside outside count")
// maps inside id 0 to.
func parseRootMapping(uidMap string) (uint32, bool) {
	for line := range strings.SplitSeq(uidMap, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		in, err1 := strconv.ParseUint(f[0], 10, 32)
		out, err2 := strconv.ParseUint(f[1], 10, 32)
		n, err3 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || err3 != nil || n == 0 {
			continue
		}
		if in == 0 {
			return uint32(out), true
		}
	}
	return 0, false
}
