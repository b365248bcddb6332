package guest

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/testing/protocmp"

	pb "gpupass/proto/gpupass/v1"
)

func TestCheckDevice(t *testing.T) {
	requireDevNodesWork(t)
	nodrv := freeMajor(t)
	f := newTree(t)
	f.chardev("dev/nvidia0", 1, 3) // /dev/null's numbers: opens
	f.chardev("dev/nvidia1", 1, 5) // /dev/zero's: the wrong device
	f.file("dev/nvidia2", "")      // what a `bind,optional,create=file` leaves
	f.file("dev/nvidia3", "junk")
	f.chardev("dev/nvidia4", nodrv, 0)
	f.symlink("dev/nvidia5", "nvidia0")
	f.symlink("dev/nvidia6", "gone")
	f.chardev("dev/nvidia-caps/nvidia-cap1", 1, 3)
	if err := unix.Mkdir(f.path("dev/nvidia7"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(f.path("dev/nvidia8"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 0))); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		want *pb.ExpectedDevice
		got  *pb.DeviceCheck
	}{
		{name: "ok", want: &pb.ExpectedDevice{Path: "/dev/nvidia0", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 1, Minor: 3}},
		{name: "ok through a symlink", want: &pb.ExpectedDevice{Path: "/dev/nvidia5", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia5", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 1, Minor: 3}},
		{name: "ok in nvidia-caps", want: &pb.ExpectedDevice{Path: "/dev/nvidia-caps/nvidia-cap1", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia-caps/nvidia-cap1", Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 1, Minor: 3}},
		{name: "wrong minor", want: &pb.ExpectedDevice{Path: "/dev/nvidia1", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia1", Status: pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE, Major: 1, Minor: 5, Detail: "char device 1:5, want 1:3"}},
		{name: "wrong major", want: &pb.ExpectedDevice{Path: "/dev/nvidia0", Major: 195, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia0", Status: pb.DeviceStatus_DEVICE_STATUS_WRONG_DEVICE, Major: 1, Minor: 3, Detail: "char device 1:3, want 195:3"}},
		{name: "empty regular file (the optional trap)", want: &pb.ExpectedDevice{Path: "/dev/nvidia2", Major: 195, Minor: 2},
			got: &pb.DeviceCheck{Path: "/dev/nvidia2", Status: pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, Detail: "empty regular file: an `optional` bind mount whose host node is missing leaves this"}},
		{name: "regular file with content", want: &pb.ExpectedDevice{Path: "/dev/nvidia3", Major: 195, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/nvidia3", Status: pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, Detail: "regular file of 4 bytes"}},
		{name: "directory", want: &pb.ExpectedDevice{Path: "/dev/nvidia7", Major: 195, Minor: 7},
			got: &pb.DeviceCheck{Path: "/dev/nvidia7", Status: pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, Detail: "directory"}},
		{name: "block device", want: &pb.ExpectedDevice{Path: "/dev/nvidia8", Major: 7, Minor: 0},
			got: &pb.DeviceCheck{Path: "/dev/nvidia8", Status: pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE, Detail: "block device 7:0"}},
		{name: "no driver behind the major", want: &pb.ExpectedDevice{Path: "/dev/nvidia4", Major: nodrv, Minor: 0},
			got: &pb.DeviceCheck{Path: "/dev/nvidia4", Status: pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, Major: nodrv, Minor: 0,
				Detail: fmt.Sprintf("open: no such device or address: no driver behind major %d", nodrv)}},
		{name: "missing", want: &pb.ExpectedDevice{Path: "/dev/nvidia9", Major: 195, Minor: 9},
			got: &pb.DeviceCheck{Path: "/dev/nvidia9", Status: pb.DeviceStatus_DEVICE_STATUS_MISSING, Detail: "no such file"}},
		{name: "dangling symlink", want: &pb.ExpectedDevice{Path: "/dev/nvidia6", Major: 195, Minor: 6},
			got: &pb.DeviceCheck{Path: "/dev/nvidia6", Status: pb.DeviceStatus_DEVICE_STATUS_MISSING, Detail: "dangling symbolic link"}},
		{name: "missing directory", want: &pb.ExpectedDevice{Path: "/dev/nope/nvidia-cap1", Major: 195, Minor: 6},
			got: &pb.DeviceCheck{Path: "/dev/nope/nvidia-cap1", Status: pb.DeviceStatus_DEVICE_STATUS_MISSING, Detail: "no such file"}},
		{name: "outside /dev", want: &pb.ExpectedDevice{Path: "/etc/passwd", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/etc/passwd", Status: pb.DeviceStatus_DEVICE_STATUS_MISSING, Detail: "not checked: the expected path is not a clean path under /dev"}},
		{name: "unclean path", want: &pb.ExpectedDevice{Path: "/dev/../etc/passwd", Major: 1, Minor: 3},
			got: &pb.DeviceCheck{Path: "/dev/../etc/passwd", Status: pb.DeviceStatus_DEVICE_STATUS_MISSING, Detail: "not checked: the expected path is not a clean path under /dev"}},
	}
	p := f.paths()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(p.CheckDevice(tc.want), tc.got, protocmp.Transform()); diff != "" {
				t.Errorf("CheckDevice (-got +want):\n%s", diff)
			}
		})
	}
}

// TestClassifyOpenErr covers the errno of open() on the right node; the device cgroup's
// EPERM is shown for real in the LXC tests.
func TestClassifyOpenErr(t *testing.T) {
	st := &unix.Stat_t{Mode: unix.S_IFCHR | 0o600, Uid: 65534, Gid: 65534}
	tests := []struct {
		errno  unix.Errno
		status pb.DeviceStatus
		detail string
	}{
		{unix.EPERM, pb.DeviceStatus_DEVICE_STATUS_DENIED, "open: operation not permitted: the device cgroup denies it (add the allow rule for this major and restart the container)"},
		{unix.EACCES, pb.DeviceStatus_DEVICE_STATUS_DENIED, "open: permission denied: node mode 0600 owner 65534:65534"},
		{unix.ENXIO, pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, "open: no such device or address: no driver behind major 195"},
		{unix.ENODEV, pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, "open: no such device: no driver behind major 195"},
		{unix.EIO, pb.DeviceStatus_DEVICE_STATUS_NO_DRIVER, "open: input/output error"},
	}
	for _, tc := range tests {
		t.Run(tc.errno.Error(), func(t *testing.T) {
			dc := &pb.DeviceCheck{Major: 195}
			classifyOpenErr(dc, st, tc.errno)
			if dc.Status != tc.status || dc.Detail != tc.detail {
				t.Errorf("classifyOpenErr(%v) = %v %q; want %v %q", tc.errno, dc.Status, dc.Detail, tc.status, tc.detail)
			}
		})
	}
}
