package controller

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"syscall"
	"testing"
	"time"

	"gpupass/internal/controller/agenttest"
	"gpupass/internal/fleet"
	"gpupass/internal/log"
)

// benchFleet starts n fake host agents, each on its own loopback address (127.0.x.y, like
// n machines) with its own certificate, with two GPU containers each.
func benchFleet(b *testing.B, p *agenttest.PKI, n int) *fleet.Fleet {
	b.Helper()
	f := &fleet.Fleet{Version: 1}
	for i := range n {
		ip := net.IPv4(127, 0, byte(1+i/250), byte(1+i%250))
		a := agenttest.New(fmt.Sprintf("pve%04d", i))
		a.Add(agenttest.Container{ID: "901", GPUs: []string{"0"}, Guest: true, Lib: agenttest.KernelVersion})
		a.Add(agenttest.Container{ID: "902", GPUs: []string{"1"}, Guest: true, Lib: agenttest.KernelVersion})
		addr := a.Serve(b, agenttest.Listen(b, net.JoinHostPort(ip.String(), "0")), p.HostTLS(b, a.Name, ip))
		f.Hosts = append(f.Hosts, fleet.Host{Name: a.Name, Address: addr, ServerName: ip.String()})
		for _, id := range []string{"901", "902"} {
			f.Containers = append(f.Containers, fleet.Container{Host: a.Name, ID: id, GPUs: []string{"0"}, Style: fleet.StyleRaw})
		}
	}
	return f
}

// ensureFDs raises the soft open-file limit to fit n hosts (a listener and two ends of a
// connection each, plus slack) or skips.
func ensureFDs(b *testing.B, n int) {
	need := uint64(3*n + 256)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("getrlimit: %v", err)
	}
	if lim.Cur >= need {
		return
	}
	if lim.Max < need {
		b.Skipf("%d hosts need %d open files; ulimit -Hn is %d", n, need, lim.Max)
	}
	lim.Cur = need
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Skipf("setrlimit: %v", err)
	}
}

// BenchmarkStatusFanout measures `gpupass status` against 1, 10, 100 and 1000 in-process
// host agents on loopback TLS: "fanout" asks all hosts at once (the controller's way),
// "sequential" one after another (the baseline). "cold" makes every TLS handshake a full
// one, as a fresh CLI process does; "resumed" keeps the TLS session cache across
// iterations (status --watch reconnects, long-running callers). p50 and p99 are of the
// whole fleet query.
func BenchmarkStatusFanout(b *testing.B) {
	// As the gpupass binary does (controller/main.go), unless GOGC is set.
	if os.Getenv("GOGC") == "" {
		defer debug.SetGCPercent(debug.SetGCPercent(400))
	}
	p := agenttest.NewPKI(b)
	for _, n := range []int{1, 10, 100, 1000} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			ensureFDs(b, n)
			f := benchFleet(b, p, n)
			for _, mode := range []struct {
				name     string
				parallel int
				resume   bool
			}{
				{"fanout/cold", DefaultParallel, false},
				{"fanout/resumed", DefaultParallel, true},
				{"sequential/cold", 1, false},
			} {
				b.Run(mode.name, func(b *testing.B) {
					tlsCfg := p.ClientTLS(b)
					if !mode.resume {
						tlsCfg.ClientSessionCache = nil
					}
					c := New(Options{Fleet: f, TLS: tlsCfg, Timeout: 30 * time.Second, Parallel: mode.parallel, Log: log.Discard()})
					ctx := context.Background()
					if mode.resume {
						c.Status(ctx) // fill the session cache
					}
					var lat []time.Duration
					b.ResetTimer()
					for b.Loop() {
						start := time.Now()
						r := c.Status(ctx)
						lat = append(lat, time.Since(start))
						if code := r.ExitCode(); code != ExitOK {
							b.Fatalf("status exit %d: %+v", code, r.Hosts[0])
						}
					}
					b.StopTimer()
					slices.Sort(lat)
					b.ReportMetric(float64(percentile(lat, 50).Microseconds())/1000, "p50-ms")
					b.ReportMetric(float64(percentile(lat, 99).Microseconds())/1000, "p99-ms")
				})
			}
		})
	}
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}
