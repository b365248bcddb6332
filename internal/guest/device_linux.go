package guest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	pb "gpupass/proto/gpupass/v1"
)

// openFlags open a device node the way a CUDA program does, without ever blocking or
// acquiring a controlling terminal.
const openFlags = unix.O_RDWR | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY

// CheckDevice classifies one expected device node: missing (ENOENT), not-char-device
// (anything but a char device, e.g. the empty regular file an `optional` bind leaves),
// wrong-device (a char device with other numbers), then open(O_RDWR): denied (EPERM from
// the device cgroup, or EACCES from the node's mode), no-driver (ENXIO, ENODEV: nothing
// behind the major), ok.
func (p Paths) CheckDevice(want *pb.ExpectedDevice) *pb.DeviceCheck {
	p = p.withDefaults()
	dc := &pb.DeviceCheck{Path: truncate(want.GetPath(), maxPath)}
	path, ok := p.devPath(want.GetPath())
	if !ok {
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_MISSING
		dc.Detail = "not checked: the expected path is not a clean path under /dev"
		return dc
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		classifyStatErr(dc, path, err)
		return dc
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR {
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE
		dc.Detail = describeNonChar(&st)
		return dc
	}
	dc.Major, dc.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	if dc.Major != want.GetMajor() || dc.Minor != want.GetMinor() {
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE
		dc.Detail = fmt.Sprintf("char device %d:%d, want %d:%d", dc.Major, dc.Minor, want.GetMajor(), want.GetMinor())
		return dc
	}
	fd, err := unix.Open(path, openFlags, 0)
	if err != nil {
		classifyOpenErr(dc, &st, err)
		return dc
	}
	defer unix.Close(fd)
	// The node may have been replaced between stat and open: judge what was opened.
	var fst unix.Stat_t
	if err := unix.Fstat(fd, &fst); err == nil && (fst.Mode&unix.S_IFMT != unix.S_IFCHR || fst.Rdev != st.Rdev) {
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE
		dc.Detail = fmt.Sprintf("replaced while checking: opened %d:%d, want %d:%d",
			unix.Major(fst.Rdev), unix.Minor(fst.Rdev), want.GetMajor(), want.GetMinor())
		return dc
	}
	dc.Status = pb.DeviceStatus_DEVICE_STATUS_OK
	return dc
}

func classifyStatErr(dc *pb.DeviceCheck, path string, err error) {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENOTDIR):
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_MISSING
		dc.Detail = "no such file"
		if fi, lerr := os.Lstat(path); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			dc.Detail = "dangling symbolic link"
		}
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_DENIED
		dc.Detail = "stat: " + err.Error()
	default:
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_MISSING
		dc.Detail = "stat: " + err.Error()
	}
}

// classifyOpenErr maps the errno of open() on a char device with the right numbers.
func classifyOpenErr(dc *pb.DeviceCheck, st *unix.Stat_t, err error) {
	var errno unix.Errno
	if !errors.As(err, &errno) {
		errno = 0
	}
	switch errno {
	case unix.EPERM:
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_DENIED
		dc.Detail = "open: operation not permitted: the device cgroup denies it (add the allow rule for this major and restart the container)"
	case unix.EACCES:
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_DENIED
		dc.Detail = fmt.Sprintf("open: permission denied: node mode %04o owner %d:%d", st.Mode&0o7777, st.Uid, st.Gid)
	case unix.ENXIO, unix.ENODEV:
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER
		dc.Detail = fmt.Sprintf("open: %s: no driver behind major %d", err.Error(), dc.Major)
	default:
		// The node is right and reachable, but the driver refuses it (EIO, EBUSY, ...).
		dc.Status = pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER
		dc.Detail = "open: " + err.Error()
	}
}

func describeNonChar(st *unix.Stat_t) string {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Size == 0 {
			return "empty regular file: an `optional` bind mount whose host node is missing leaves this"
		}
		return fmt.Sprintf("regular file of %d bytes", st.Size)
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFBLK:
		return fmt.Sprintf("block device %d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	case unix.S_IFIFO:
		return "named pipe"
	case unix.S_IFSOCK:
		return "socket"
	default:
		return fmt.Sprintf("file of type %#o", st.Mode&unix.S_IFMT)
	}
}
