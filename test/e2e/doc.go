// Package e2e is gpupass's end-to-end suite on real LXC containers: simulated GPU hosts
// (stand-in char devices, labelled simulated), one gpupass-host-agent process per host in
// its own network namespace on a private bridge, busybox containers whose own init starts
// the baked-in gpupass-guest-agent, and the gpupass controller CLI over mutual TLS with
// certificates from `gpupass pki`.
//
// Every scenario is a subtest of TestE2E (docs/e2e.md maps each to the FACTS.md row it
// proves impossible). The suite needs root and LXC; it skips without them locally and
// fails without them when CI=true (internal/testenv). It runs in a private mount namespace
// with cgroup2 on /sys/fs/cgroup (internal/lxctest), so lxc.cgroup2.devices rules are
// enforced as on Proxmox.
package e2e
