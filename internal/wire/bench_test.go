package wire

import (
	"context"
	"sort"
	"testing"
	"time"

	"gpupass/internal/log"
	pb "gpupass/proto/gpupass/v1"
)

// BenchmarkRoundTripUnix measures a small unary call over a real unix socket and reports
// p50/p99 latency and calls per second.
func BenchmarkRoundTripUnix(b *testing.B) {
	cli := benchSession(b)
	ctx := context.Background()
	req := &pb.Call{Method: "901"}
	var resp pb.Call
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if err := cli.Call(ctx, "test.Echo", req, &resp); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	total := time.Since(start)
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(b.N)/total.Seconds(), "calls/s")
}

// BenchmarkRoundTripUnixParallel runs the same call from concurrent callers on one session.
func BenchmarkRoundTripUnixParallel(b *testing.B) {
	cli := benchSession(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(16) // 32 callers on 2 cores: a host agent serves many controllers and guests at once
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb_ *testing.PB) {
		req := &pb.Call{Method: "901"}
		var resp pb.Call
		for pb_.Next() {
			if err := cli.Call(ctx, "test.Echo", req, &resp); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
}

func benchSession(b *testing.B) *Session {
	cc, sc := unixPair(b)
	ctx := context.Background()
	type res struct {
		s   *Session
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := Server(ctx, sc, Config{Role: pb.Role_ROLE_HOST_AGENT, Log: log.Discard()}, echoMux())
		ch <- res{s, err}
	}()
	cli, err := Client(ctx, cc, Config{Role: pb.Role_ROLE_CONTROLLER}, nil)
	if err != nil {
		b.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		b.Fatal(r.err)
	}
	done := make(chan struct{})
	go func() { _ = r.s.Serve(ctx); close(done) }()
	b.Cleanup(func() { cli.Close(); r.s.Close(); <-done })

	return cli
}
