package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"gpupass/internal/guestchan"
	"gpupass/internal/log"
	"gpupass/internal/wire"
	pb "gpupass/proto/gpupass/v1"
)

// MeasureFanIn measures the reports per second the host agent's guest registry accepts
// and stores from n guests pushing as fast as they can over real unix sockets, k reports
// each, with the per-container rate limit lifted (it caps a real agent at 20 reports/s
// per container). Guests and registry share this process.
func (e *Env) MeasureFanIn(ctx context.Context, n, k int) (perSec float64, cpuPerReport time.Duration, err error) {
	dir := filepath.Join(e.Work, "fanin")
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "f" + strconv.Itoa(i)
	}
	reg := guestchan.New(guestchan.Config{
		Dir: dir, Heartbeat: time.Hour, ReportRate: 1e9, ReportBurst: 1e9, Log: log.Discard(), Build: "bench",
		PeerPID: func(c *net.UnixConn) (int32, error) {
			id := filepath.Base(filepath.Dir(c.LocalAddr().String()))
			i, err := strconv.Atoi(strings.TrimPrefix(id, "f"))
			return int32(i + 1), err
		},
		PeerCgroup: func(pid int32) (string, error) { return "0::/lxc.payload." + ids[pid-1] + "\n", nil },
		PeerRoot:   func(*net.UnixConn, int32, time.Time) error { return nil }, // simulated guests are root
	})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reg.Run(rctx) }()
	defer func() { cancel(); <-done }()
	streams := make([]*wire.Stream, n)
	for i, id := range ids {
		sock, err := reg.Ensure(id)
		if err != nil {
			return 0, 0, err
		}
		reg.SetExpectation(id, simExpectation())
		conn, err := net.Dial("unix", filepath.Join(sock, guestchan.SocketName))
		if err != nil {
			return 0, 0, err
		}
		s, err := wire.Client(ctx, conn, wire.Config{Role: pb.Role_ROLE_GUEST_AGENT, ContainerID: id, Log: log.Discard()}, nil)
		if err != nil {
			return 0, 0, err
		}
		defer s.Close()
		st, err := s.Open(ctx, guestchan.Method)
		if err != nil {
			return 0, 0, err
		}
		if err := st.RecvReply(&pb.Expectation{}); err != nil {
			return 0, 0, err
		}
		streams[i] = st
	}
	waitSeq := func(seq uint64) error {
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer wcancel()
		for _, id := range ids {
			if _, err := reg.Wait(wctx, id, func(s guestchan.Snapshot) bool { return s.Report.GetSeq() >= seq }); err != nil {
				return fmt.Errorf("guest %s: %w", id, err)
			}
		}
		return nil
	}
	// Reports are built before the clock starts: what is measured is the channel and the
	// registry, not the guests' report building.
	reports := make([][]*pb.GuestReport, n)
	for i := range n {
		for s := range k + 1 {
			reports[i] = append(reports[i], readyReport(ids[i], uint64(s+1)))
		}
		if err := streams[i].Send(reports[i][0]); err != nil {
			return 0, 0, err
		}
	}
	if err := waitSeq(1); err != nil {
		return 0, 0, err
	}
	cpu0, _ := ProcCPU(os.Getpid())
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i, st := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, r := range reports[i][1:] {
				if err := st.Send(r); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	if err := waitSeq(uint64(k + 1)); err != nil {
		return 0, 0, err
	}
	el := time.Since(start)
	cpu1, _ := ProcCPU(os.Getpid())
	total := n * k
	return float64(total) / el.Seconds(), (cpu1 - cpu0) / time.Duration(total), nil
}
