// Package lxctest is the real-LXC test harness: it runs a test binary in a private mount
// namespace with cgroup2 on /sys/fs/cgroup (so that lxc.cgroup2.devices rules are enforced,
// as on Proxmox), and builds busybox containers by hand (no templates, no network) that
// start in well under a second and are always stopped and removed when the test ends.
//
// Tests that use it call Cgroup2Main from TestMain and NewContainer in the test; on a
// machine without root or LXC they skip, with CI=true they fail (internal/testenv):
//
//	func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }
//
//	func TestX(t *testing.T) {
//		dir := lxctest.TempDir(t)                              // reachable by unprivileged containers
//		lxctest.Mknod(t, filepath.Join(dir, "nvidia0"), 195, 0) // no driver: open gives ENXIO
//		c := lxctest.NewContainer(t, lxctest.Spec{
//			Binds:       [][2]string{{lxctest.Probe(t), lxctest.ProbePath}},
//			ExtraConfig: []string{"lxc.mount.entry = " + dir + "/nvidia0 dev/nvidia0 none bind,create=file 0 0"},
//		})
//		c.Start(t)
//		out, code := c.Attach(t, lxctest.ProbePath, "open", "/dev/nvidia0") // "/dev/nvidia0 EPERM", 1
//	}
//
// Spec.Kind = KindSystemd boots systemd as PID 1 instead, from the cached Debian 12
// rootfs tarball that test/rootfs/debian-systemd.sh builds (SystemdRootfs; about 1.2 s to
// "running"): the shape of every Debian and Ubuntu template on Proxmox. EnableUnit installs
// a unit as `systemctl enable` would, WaitBooted waits for the boot to finish.
//
// The containers allow only the basic nodes (DefaultDeviceRules: no fuse or tun, unlike
// LXC's common.conf) and use SIGKILL as lxc.signal.halt, so a clean lxc-stop is instant.
// Containers a panicking test binary leaves behind are removed by the parent process.
package lxctest
