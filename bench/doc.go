// Package bench measures gpupass against the baselines it replaces, in one run on one
// machine (`make bench`): readiness push against `lxc-attach … test -e` polling on a real
// LXC container, fleet-wide status over 1 to 1000 in-process host agents, the host agent
// with 200 connected guests, the guest agent's footprint, and the config work of one apply
// over 100 containers. It writes bench/results.json and docs/benchmarks.md. The figures
// come from these runs only; no test asserts a timing.
package bench
