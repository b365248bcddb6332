package guestchan

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// The benchmark's guests run in a child process (this test binary again), so that the
// registry's heap can be measured apart from theirs.
const (
	envBenchClient = "GPUPASS_GUESTCHAN_BENCH_CLIENT" // the socket directory
	envBenchGuests = "GPUPASS_GUESTCHAN_BENCH_GUESTS"
	benchGuests    = 200
)

func benchID(i int) string { return "b" + strconv.Itoa(i) }

// BenchmarkReportFanIn: 200 guests, each on its own container's socket, push reports as
// fast as they can; b.N reports in all. Reports reports/s sustained by the registry (sent
// until every one is stored; on 2 cores the guests' process is the bottleneck), the
// registry's CPU time per report, and its memory per connected guest.
func BenchmarkReportFanIn(b *testing.B) {
	procs := newFakeProcs()
	for i := range benchGuests {
		procs.cgroups[int32(i+1)] = "0::/lxc.payload." + benchID(i) + "\n"
	}
	cfg := Config{
		Dir:        filepath.Join(b.TempDir(), "g"),
		ReportRate: 1e9, ReportBurst: 1e9,
		Heartbeat: time.Hour,
		Log:       log.Discard(),
		PeerPID:   procs.peerPID, PeerCgroup: procs.cgroup, PeerRoot: procs.root,
	}
	r := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	before := memNow()
	for i := range benchGuests {
		if _, err := r.Ensure(benchID(i)); err != nil {
			b.Fatal(err)
		}
		r.SetExpectation(benchID(i), gpuExpectation(0, 1))
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envBenchClient+"="+cfg.Dir, envBenchGuests+"="+strconv.Itoa(benchGuests))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	lines := bufio.NewScanner(stdout)
	expect := func(want string) {
		if !lines.Scan() || lines.Text() != want {
			b.Fatalf("bench client said %q (%v), want %q", lines.Text(), lines.Err(), want)
		}
	}
	expect("ready")
	waitAll := func(seq uint64) {
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer wcancel()
		for i := range benchGuests {
			if _, err := r.Wait(wctx, benchID(i), seqIs(seq)); err != nil {
				b.Fatalf("guest %d: %v", i, err)
			}
		}
	}
	waitAll(1)
	after := memNow()

	per := (b.N + benchGuests - 1) / benchGuests
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	fmt.Fprintf(stdin, "go %d\n", per)
	waitAll(uint64(1 + per))
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	expect("sent")
	b.ReportMetric(float64(per*benchGuests)/elapsed.Seconds(), "reports/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(per*benchGuests), "registry-cpu-ns/report")
	b.ReportMetric(float64(after.heap-before.heap)/benchGuests, "heap-B/guest")
	b.ReportMetric(float64(after.stack-before.stack)/benchGuests, "stack-B/guest")
}

// cpuTime is the CPU time this process (the registry's side) has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

type mem struct{ heap, stack uint64 }

func memNow() mem {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return mem{heap: m.HeapAlloc, stack: m.StackInuse}
}

// benchClientMain is the child process: it connects the guests, sends one report each and
// says "ready"; on "go K" every guest sends K more reports, then it says "sent". It exits
// when its standard input closes.
func benchClientMain() int {
	dir := os.Getenv(envBenchClient)
	n, err := strconv.Atoi(os.Getenv(envBenchGuests))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench client:", err)
		return 1
	}
	ctx := context.Background()
	streams := make([]*wire.Stream, n)
	for i := range n {
		conn, err := dialAs(filepath.Join(dir, benchID(i), SocketName), int32(i+1))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			return 1
		}
		sess, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT}, nil)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			return 1
		}
		defer sess.Close()
		st, err := sess.Open(ctx, Method)
		if err != nil || st.RecvReply(&pb.Expectation{}) != nil || st.Send(benchReport(1)) != nil {
			fmt.Fprintln(os.Stderr, "bench client: guest", i, "failed to start")
			return 1
		}
		streams[i] = st
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		k, err := strconv.Atoi(strings.TrimPrefix(in.Text(), "go "))
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			return 1
		}
		var wg sync.WaitGroup
		for _, st := range streams {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for s := range k {
					if err := st.Send(benchReport(uint64(s + 2))); err != nil {
						fmt.Fprintln(os.Stderr, "bench client:", err)
						return
					}
				}
			}()
		}
		wg.Wait()
		fmt.Println("sent")
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// benchReport is a realistic report: two GPUs' nodes, driver versions, the network.
func benchReport(seq uint64) *pb.GuestReport {
	r := &pb.GuestReport{
		ContainerId: "bench", BootId: "8c1f7a52-3b8e-4f0c-9d7e-2a5b6c7d8e9f", AgentBuild: "bench", Seq: seq,
		TimeUnixNano: time.Now().UnixNano(), Ready: true, Trigger: "heartbeat",
		Driver:  &pb.DriverVersions{Kernel: "550.54.15", Userspace: "550.54.15", UserspacePath: "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15"},
		Network: &pb.Network{Ok: true, DefaultRoute: true, Links: []*pb.NetLink{{Name: "eth0", Up: true, Addresses: []string{"10.0.0.12/24"}}}},
	}
	for _, p := range []string{"/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} {
		r.Devices = append(r.Devices, &pb.DeviceCheck{Path: p, Status: pb.DeviceStatus_DEVICE_STATUS_OK, Major: 195})
	}
	return r
}
