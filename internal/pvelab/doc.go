// Package pvelab is the Go side of the project's Proxmox VE lab (test/pvelab, docs/e2e.md):
// tests drive the REAL pct, PVE's Perl libraries and LXC hooks, and a real pmxcfs on /etc/pve,
// on a plain Debian 12 machine that test/pvelab/setup.sh prepared.
//
// A test package calls Main from TestMain, so its tests run in a private mount namespace with
// pure cgroup2 on /sys/fs/cgroup (PVE 9's layout; PVE then chooses cgroup mode 2 and, for
// privileged containers, the device cgroup is enforced). Each test then calls Require and
// makes containers with NewCT; ids come from a range locked per container so parallel tests
// and test binaries never collide, and every container is stopped and destroyed when its
// test ends:
//
//	func TestMain(m *testing.M) { pvelab.Main(m) }
//
//	func TestX(t *testing.T) {
//		pvelab.Require(t)
//		ct := pvelab.NewCT(t, pvelab.Spec{})   // hostname "ai-<id>", unprivileged like PVE 9
//		ct.Start(t)                             // the real `pct start`
//		cfg := ct.RenderedConfig(t)             // what PVE wrote to /var/lib/lxc/<id>/config
//		pvelab.ParseStrict(t, ct.ConfPath())    // PVE's own parser judges /etc/pve/lxc/<id>.conf
//	}
//
// SimulateGPUHost puts stand-in NVIDIA device nodes where PVE's hooks look (/dev/nvidia*)
// and binds /proc/devices and /proc/driver fixtures in the test's mount namespace, so that a
// host agent can run with host_root "/" and runtime pct beside the real /etc/pve.
package pvelab
