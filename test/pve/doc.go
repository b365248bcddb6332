// Package pve holds the tests of the project's Proxmox VE lab (test/pvelab, internal/pvelab):
// what the REAL pct, PVE's hooks and pmxcfs do, observed in a pure cgroup2 namespace. They
// pin the PVE behaviours gpupass depends on (docs/e2e.md, "The PVE lab") and, with -record,
// save real pct transcripts under internal/runtime/testdata/pve-lab/.
package pve
