package hostdriver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths inside the container.
const (
	// ContainerDir holds the host's driver in a container: lib/ (the libraries and their
	// soname links), bin/ (the tools), conf/ (the vendor files under their host paths:
	// conf/etc/OpenCL/vendors/nvidia.icd) and Marker. It is a tmpfs the mount hook places
	// at every start, so nothing of the driver is ever written to the container's disk.
	ContainerDir = "/usr/lib/gpupass-driver"
	// Marker names where the driver came from ("source=host", "version=...").
	Marker = ContainerDir + "/source"
	// LdConf puts ContainerDir/lib on the container's loader path, also for the
	// container's own later ldconfig runs (package installs).
	LdConf = "/etc/ld.so.conf.d/000-gpupass-driver.conf"
)

// MountOptions are the mount hook's inputs.
type MountOptions struct {
	// Root is the host root Find reads ("/" on a real host).
	Root string
	// Rootfs is where the container's root is mounted while its mount hooks run
	// (LXC_ROOTFS_MOUNT).
	Rootfs string
	// Ldconfig is the host's ldconfig ("" looks for /sbin/ldconfig, /usr/sbin/ldconfig).
	Ldconfig string
}

// Mounted says what Mount did.
type Mounted struct {
	Set *Set
	// Warnings are things that did not stop the start (no ldconfig on the host, ...).
	Warnings []string
}

// Mount runs in the container's mount namespace before pivot_root (lxc.hook.mount): it
// finds the host's driver (Find: a mismatch refuses the start), mounts a tmpfs at
// ContainerDir in the container's root, binds every library and tool into it read-only,
// adds the soname links, makes the tmpfs read-only, writes LdConf and rebuilds the
// container's /etc/ld.so.cache with the host's ldconfig chrooted into the container's
// root; each vendor file it gives at its own path (provideConfig). Paths in the
// container's root are resolved inside it (openat2 RESOLVE_IN_ROOT): a container's
// symbolic link never leads a write to the host.
func Mount(o MountOptions) (*Mounted, error) {
	if o.Rootfs == "" {
		return nil, errors.New("mount host driver: no container root (LXC_ROOTFS_MOUNT is empty: run as an lxc.hook.mount)")
	}
	set, err := Find(o.Root)
	if err != nil {
		return nil, err
	}
	res := &Mounted{Set: set}
	rootfd, err := unix.Open(o.Rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open container root %s: %w", o.Rootfs, err)
	}
	defer unix.Close(rootfd)
	rel := strings.TrimPrefix(ContainerDir, "/")
	dfd, err := mkdirAllIn(rootfd, rel)
	if err != nil {
		return nil, fmt.Errorf("create %s in the container: %w", ContainerDir, err)
	}
	err = unix.Mount("gpupass-driver", fdPath(dfd), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m")
	unix.Close(dfd)
	if err != nil {
		return nil, fmt.Errorf("mount tmpfs at %s in the container: %w", ContainerDir, err)
	}
	tfd, err := openIn(rootfd, rel)
	if err != nil {
		return nil, fmt.Errorf("open %s in the container: %w", ContainerDir, err)
	}
	defer unix.Close(tfd)
	tm := fdPath(tfd) // the fresh tmpfs: nothing of the container's is in it
	for _, d := range []string{"lib", "bin"} {
		if err := os.Mkdir(filepath.Join(tm, d), 0o755); err != nil {
			return nil, fmt.Errorf("create %s/%s: %w", ContainerDir, d, err)
		}
	}
	for _, f := range set.Libs {
		if err := bindFile(o.Root, f.Path, filepath.Join(tm, "lib", f.Name)); err != nil {
			return nil, err
		}
		for _, l := range links(f) {
			if err := os.Symlink(f.Name, filepath.Join(tm, "lib", l)); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, fmt.Errorf("link %s: %w", l, err)
			}
		}
	}
	for _, f := range set.Tools {
		if err := bindFile(o.Root, f.Path, filepath.Join(tm, "bin", f.Name)); err != nil {
			return nil, err
		}
	}
	for _, f := range set.Configs {
		dst := filepath.Join(tm, "conf", f.Path)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return nil, fmt.Errorf("create %s/conf%s: %w", ContainerDir, filepath.Dir(f.Path), err)
		}
		if err := bindFile(o.Root, f.Path, dst); err != nil {
			return nil, err
		}
	}
	marker := fmt.Sprintf("source=host\nversion=%s\nfrom=%s\n", set.Version, strings.Join(set.Dirs, ","))
	if err := os.WriteFile(filepath.Join(tm, "source"), []byte(marker), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", Marker, err)
	}
	if err := unix.Mount("", tm, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return nil, fmt.Errorf("make %s read-only: %w", ContainerDir, err)
	}
	if err := writeIn(rootfd, strings.TrimPrefix(LdConf, "/"), []byte(ContainerDir+"/lib\n")); err != nil {
		res.Warnings = append(res.Warnings, fmt.Sprintf("write %s: %v (programs find the libraries only through LD_LIBRARY_PATH=%s/lib)", LdConf, err, ContainerDir))
	}
	for _, t := range set.Tools {
		if err := linkIn(rootfd, "usr/local/bin", t.Name, ContainerDir+"/bin/"+t.Name); err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("link /usr/local/bin/%s: %v", t.Name, err))
		}
	}
	for _, f := range set.Configs {
		if err := provideConfig(rootfd, o.Root, f); err != nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("give %s: %v", f.Path, err))
		}
	}
	res.Warnings = append(res.Warnings, dropStaleLinks(rootfd, set)...)
	if w := ldconfig(o); w != "" {
		res.Warnings = append(res.Warnings, w)
	}
	return res, nil
}

// links are the names a library is loaded by besides its file name: its soname
// (libnvidia-nvvm.so.4, libGLX_nvidia.so.0) and, for libcuda and libnvidia-ml, the
// unversioned .so that some programs dlopen. A file without an ELF soname (a test tree)
// gets .so.1 for those two, whose sonames have been .so.1 for every driver.
func links(f File) []string {
	base, _, _ := strings.Cut(f.Name, ".so.")
	var out []string
	so := f.Soname
	if so == "" && (base == "libcuda" || base == "libnvidia-ml") {
		so = base + ".so.1"
	}
	if so != "" && so != f.Name {
		out = append(out, so)
	}
	if base == "libcuda" || base == "libnvidia-ml" {
		out = append(out, base+".so")
	}
	return out
}

// provideConfig makes the host's vendor file f what the container reads at f.Path. Where
// the container has nothing there, a symbolic link to its copy in ContainerDir/conf
// (written once, like the tools' links; after a switch back to driver: own it dangles
// and loaders skip it). Where the container has its own file there (or its own link to
// one inside its root), the host's file is bound read-only over it: the host's wins
// while the container runs, as its libraries win over an own copy through the loader
// cache, and the container's file stays unchanged on its disk. Anything else there (a
// directory, a link leading nowhere) is left alone, with the error.
func provideConfig(rootfd int, root string, f File) error {
	rel := strings.TrimPrefix(f.Path, "/")
	target := ContainerDir + "/conf" + f.Path
	dfd, err := dirIn(rootfd, filepath.Dir(rel), true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	buf := make([]byte, 4096)
	n, err := unix.Readlinkat(dfd, f.Name, buf)
	switch {
	case err == nil && string(buf[:n]) == target:
		return nil // our link, from an earlier start
	case errors.Is(err, unix.ENOENT):
		return unix.Symlinkat(target, dfd, f.Name)
	case err != nil && !errors.Is(err, unix.EINVAL): // EINVAL: not a link
		return err
	}
	fd, err := unix.Openat2(rootfd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: resolveFlags})
	if err != nil {
		return fmt.Errorf("the container's own %s leads nowhere inside its root (%w): left as it is", f.Path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("the container's own %s is not a regular file: left as it is", f.Path)
	}
	src, err := hostPath(root, f.Path)
	if err != nil {
		return fmt.Errorf("bind the host's %s: %w", f.Path, err)
	}
	return bindOver(src, fd)
}

// bindOver binds src read-only over the file fd (O_PATH) names. The bind is made
// read-only before it is attached (open_tree, mount_setattr, move_mount; Linux 5.12): a
// remount through /proc/self/fd would reach the file under the new mount, not the mount,
// and a failure leaves nothing behind, never the host's file writable in the container.
func bindOver(src string, fd int) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, src, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	defer unix.Close(tree)
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}); err != nil {
		return fmt.Errorf("make the bind of %s read-only: %w", src, err)
	}
	if err := unix.MoveMount(tree, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	return nil
}

// dropStaleLinks removes the links an earlier start made (provideConfig) to vendor files
// the host no longer has: the application profiles of the version before an upgrade, a
// file the host's driver stopped shipping. Only links into ContainerDir/conf, in the
// directories of ConfigFiles, are touched; it returns what it could not remove.
func dropStaleLinks(rootfd int, set *Set) []string {
	want := map[string]bool{}
	for _, f := range set.Configs {
		want[f.Path] = true
	}
	var dirs []string
	for _, r := range ConfigRoots {
		for _, c := range ConfigFiles {
			if d := filepath.Dir(filepath.Join(r, c)); !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	var warnings []string
	buf := make([]byte, 4096)
	for _, d := range dirs {
		dfd, err := dirIn(rootfd, strings.TrimPrefix(d, "/"), false)
		if err != nil {
			continue // the container has no such directory: nothing of ours there
		}
		dir := os.NewFile(uintptr(dfd), d)
		names, _ := dir.Readdirnames(-1)
		for _, n := range names {
			p := filepath.Join(d, n)
			l, err := unix.Readlinkat(dfd, n, buf)
			if err != nil || string(buf[:l]) != ContainerDir+"/conf"+p || want[p] {
				continue
			}
			if err := unix.Unlinkat(dfd, n, 0); err != nil {
				warnings = append(warnings, fmt.Sprintf("remove the stale link %s: %v", p, err))
			}
		}
		dir.Close()
	}
	return warnings
}

// bindFile binds the host's file p (under root: hostPath) read-only onto a new empty file
// dst (bindRO).
func bindFile(root, p, dst string) error {
	src, err := hostPath(root, p)
	if err != nil {
		return fmt.Errorf("bind the host's %s: %w", p, err)
	}
	if err := os.WriteFile(dst, nil, 0o644); err != nil {
		return fmt.Errorf("create %s: %w", dst, err)
	}
	return bindRO(src, dst)
}

// bindRO binds src read-only onto the existing file dst, keeping the source mount's
// locked flags (an unprivileged container's user namespace may not clear them).
func bindRO(src, dst string) error {
	if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_RDONLY)
	var st unix.Statfs_t
	if unix.Statfs(src, &st) == nil {
		for _, f := range []struct{ st, ms int64 }{{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_RELATIME, unix.MS_RELATIME}, {unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}} {
			if st.Flags&f.st != 0 {
				flags |= uintptr(f.ms)
			}
		}
	}
	if err := unix.Mount("", dst, "", flags, ""); err != nil {
		return fmt.Errorf("make the bind of %s read-only: %w", src, err)
	}
	return nil
}

func ldconfig(o MountOptions) string {
	bin := o.Ldconfig
	if bin == "" {
		for _, c := range []string{"/sbin/ldconfig", "/usr/sbin/ldconfig"} {
			if _, err := os.Stat(c); err == nil {
				bin = c
				break
			}
		}
	}
	if bin == "" {
		return "no ldconfig on the host: the container's loader cache was not refreshed (programs find the libraries through " + LdConf + " after the container's own ldconfig, or LD_LIBRARY_PATH=" + ContainerDir + "/lib)"
	}
	// -X: only the cache (the soname links are in the read-only tmpfs already, and the
	// container's other directories are not ours to touch); -r: chroot into its root.
	out, err := exec.Command(bin, "-X", "-r", o.Rootfs, ContainerDir+"/lib").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("refresh the container's loader cache (%s -X -r %s): %v: %s", bin, o.Rootfs, err, strings.TrimSpace(string(out)))
	}
	return ""
}

func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

const resolveFlags = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// openIn opens rel (a directory) inside the root rootfd, as O_PATH.
func openIn(rootfd int, rel string) (int, error) {
	return unix.Openat2(rootfd, rel, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveFlags})
}

// dirIn opens the directory rel inside the root rootfd for reading and for the *at calls
// (created with its parents when create), never through a symbolic link out of the root.
func dirIn(rootfd int, rel string, create bool) (int, error) {
	open := openIn
	if create {
		open = mkdirAllIn
	}
	pfd, err := open(rootfd, rel)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	return unix.Openat(pfd, ".", unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
}

// mkdirAllIn creates rel and its parents inside the root rootfd and opens it (O_PATH).
func mkdirAllIn(rootfd int, rel string) (int, error) {
	cur := ""
	for _, c := range strings.Split(rel, "/") {
		if c == "" {
			continue
		}
		next := filepath.Join(cur, c)
		fd, err := openIn(rootfd, next)
		if errors.Is(err, unix.ENOENT) {
			pfd := rootfd
			if cur != "" {
				if pfd, err = openIn(rootfd, cur); err != nil {
					return -1, fmt.Errorf("open %s: %w", cur, err)
				}
			}
			err = unix.Mkdirat(pfd, c, 0o755)
			if pfd != rootfd {
				unix.Close(pfd)
			}
			if err != nil && !errors.Is(err, unix.EEXIST) {
				return -1, fmt.Errorf("mkdir %s: %w", next, err)
			}
			fd, err = openIn(rootfd, next)
		}
		if err != nil {
			return -1, fmt.Errorf("open %s: %w", next, err)
		}
		if next == filepath.Clean(rel) {
			return fd, nil
		}
		unix.Close(fd)
		cur = next
	}
	return -1, fmt.Errorf("empty path")
}

// writeIn writes a file inside the root rootfd (its parents created), never through a
// symbolic link.
func writeIn(rootfd int, rel string, b []byte) error {
	dfd, err := dirIn(rootfd, filepath.Dir(rel), true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if old, err := readAt(dfd, filepath.Base(rel)); err == nil && string(old) == string(b) {
		return nil
	}
	fd, err := unix.Openat(dfd, filepath.Base(rel), unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	_, err = f.Write(b)
	return err
}

func readAt(dfd int, name string) ([]byte, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return readCapped(f.Name(), 4096)
}

// linkIn makes dir/name (inside the root rootfd) a symbolic link to target unless a file
// of the container's own is there.
func linkIn(rootfd int, dir, name, target string) error {
	dfd, err := dirIn(rootfd, dir, true)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	buf := make([]byte, 4096)
	if n, err := unix.Readlinkat(dfd, name, buf); err == nil {
		if string(buf[:n]) == target {
			return nil
		}
		return nil // the container's own link: leave it
	} else if !errors.Is(err, unix.ENOENT) {
		return nil // a file of the container's own (EINVAL: not a link): leave it
	}
	return unix.Symlinkat(target, dfd, name)
}
