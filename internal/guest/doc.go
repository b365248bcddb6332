// Package guest is the inside of a GPU container: it checks what the host promised (the
// expected device nodes with their major:minor, the host kernel driver, the assigned GPUs)
// against what the container really has, and pushes full readiness reports to the host
// agent over the bind-mounted unix socket, on connect, on every change and as a heartbeat.
//
// Every check names its reason: a device node is ok, missing, denied (the device cgroup),
// no-driver, not-char-device (the empty file an `optional` bind leaves) or wrong-device; the
// container's libnvidia-ml must match the kernel module's version; nvidia-smi, where
// installed, must see exactly the assigned GPUs; the network is reported beside it. Each
// reason is sent as data too (its kind and fields, the report's details), and the verdict
// is internal/readiness's.
//
// Everything the checks read lives under Paths, so tests run over fixture trees. This
// package is linked into the small static guest agent binary: it must not import host-agent
// or controller code (agent-guest pins its import graph).
package guest
