// Package guestchan is the host agent's side of the guest channel: one directory and one
// listening unix socket per container (<Dir>/<id>/agent.sock, bind-mounted into the
// container at /dev/gpupass), a kernel-based identity check for every peer, the
// expectation pushed to connected guests, and the registry of their latest reports.
//
// Identity comes from the kernel, never from a secret or from what the guest says: the
// socket's directory names the container; SO_PEERCRED gives the peer's PID, and
// /proc/<pid>/cgroup must place that PID inside this container's cgroup
// (`/lxc.payload.<id>` for plain LXC, `/lxc/<id>` for Proxmox, anchored at the root of the
// hierarchy so that a container cannot impersonate another from a nested cgroup of its own).
// The guest's role must be the guest agent's. Its claimed container id (its hostname by
// default: on Proxmox any name, "ai-901" for container 901) is never an identity and never
// a reason to refuse; the container_id of every report is stamped from the kernel's
// identity. The latest refusal of each container is remembered (Snapshot.Refused) so that
// status says a guest was refused, and why.
//
// Every input is bounded: frame size, streams per session, sessions per container, report
// rate (token bucket; excess reports are dropped), the Hello deadline, and an idle timeout
// that closes sessions which send nothing. Refusals and drops are logged once per interval
// (log.Limiter).
//
// Readers learn about changes without polling: Wait blocks on a per-container broadcast
// channel that is closed on every change, and Subscribe delivers events on connect,
// disconnect, significant reports and staleness.
package guestchan
