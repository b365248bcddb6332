package guest

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gpupass/internal/guest/guesttest"
	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

// BenchmarkDeviceToHost measures what the benchmark asks for: from a device node
// becoming usable in the container's /dev (renamed into place, as a hot-plug does) to the
// host side holding the report that says so, over a real unix socket. It reports the
// median and the 90th percentile. Without root the node is a regular file (the change
// still travels the same path).
func BenchmarkDeviceToHost(b *testing.B) {
	root := b.TempDir()
	for _, d := range []string{"dev", "proc/driver/nvidia"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "proc/driver/nvidia/version"), []byte(procVersionOpen), 0o644); err != nil {
		b.Fatal(err)
	}
	socket := filepath.Join(b.TempDir(), "agent.sock")
	exp := &pb.Expectation{DriverLoaded: true, KernelDriverVersion: "580.159.04",
		Devices: []*pb.ExpectedDevice{{Path: "/dev/nvidia0", Major: 1, Minor: 3}}}
	host := guesttest.NewHost(b, socket, exp)
	// Hot-plugs are isolated events: pacing (which holds back storms) is off here, so that
	// back-to-back iterations measure the path itself.
	a, err := New(Config{Socket: socket, Checker: &Checker{Paths: Paths{Root: root}, Network: okNetwork}, Log: log.Discard(),
		ReportRate: 1e6, ReportBurst: 1e6})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if _, err := host.Wait(5*time.Second, nil); err != nil {
		b.Fatalf("first report: %v", err)
	}
	node := filepath.Join(root, "dev/nvidia0")
	staging := filepath.Join(root, "staging")
	if err := os.Mkdir(staging, 0o755); err != nil {
		b.Fatal(err)
	}
	usable := pb.DeviceStatus_DEVICE_STATUS_OK
	if !mknodNull(filepath.Join(staging, "probe")) {
		usable = pb.DeviceStatus_DEVICE_STATUS_NOT_CHAR_DEVICE
	}
	status := func(s pb.DeviceStatus) func(*pb.GuestReport) bool {
		return func(r *pb.GuestReport) bool { return r.GetDevices()[0].GetStatus() == s }
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if os.Remove(node) == nil {
			if _, err := host.Wait(5*time.Second, status(pb.DeviceStatus_DEVICE_STATUS_MISSING)); err != nil {
				b.Fatalf("report of the removal: %v", err)
			}
		}
		src := filepath.Join(staging, "nvidia0")
		if usable == pb.DeviceStatus_DEVICE_STATUS_OK {
			mknodNull(src)
		} else if err := os.WriteFile(src, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if err := os.Rename(src, node); err != nil {
			b.Fatal(err)
		}
		r, err := host.Wait(5*time.Second, status(usable))
		if err != nil {
			b.Fatalf("report of the new node: %v", err)
		}
		lat = append(lat, r.At.Sub(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Microseconds())/1000, "p90-ms")
}

func mknodNull(path string) bool {
	return mknod(path, 1, 3) == nil
}
