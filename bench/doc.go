// Package bench measures gpupass against the baselines it replaces, in one run on one
// machine (`make bench`): readiness push against `lxc-attach … test -e` polling on a real
// LXC container, fleet-wide status over 1 to 1000 in-process host agents, the host agent
// with 200 connected guests, the guest agent's footprint, the config work of one apply
// over 100 containers, and, where the PVE lab is set up (test/pvelab), status, apply and
// the state changes with the real pct beside the lxc runtime. It writes bench/results.json
// and docs/benchmarks.md (-only -merge: one section into them). The figures come from these
// runs only; no test asserts a timing.
package bench
