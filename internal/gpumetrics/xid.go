package gpumetrics

import (
	"bufio"
	"context"
	"io"
	"regexp"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// xidRe matches the NVIDIA driver's Xid report in the kernel log, e.g.
// "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."
var xidRe = regexp.MustCompile(`NVRM: Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+),`)

// ParseXid returns the GPU's PCI address and the Xid number of a kernel log line
// (/dev/kmsg's "prio,seq,usec,flags;message" or dmesg's plain text).
func ParseXid(line string) (pci, xid string, ok bool) {
	if i := strings.IndexByte(line, ';'); i >= 0 && !strings.Contains(line[:i], "NVRM") {
		line = line[i+1:]
	}
	m := xidRe.FindStringSubmatch(line)
	if m == nil {
		return "", "", false
	}
	return strings.ToLower(m[1]), m[2], true
}

// XidCounter counts Xid errors seen in the kernel log.
type XidCounter struct {
	c *prometheus.CounterVec
}

// NewXidCounter registers gpupass_gpu_xid_errors_total on reg.
func NewXidCounter(reg prometheus.Registerer, host string) *XidCounter {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "gpupass_gpu_xid_errors_total",
		Help:        "NVIDIA Xid errors in the kernel log (since boot, as far as /dev/kmsg still holds them), by GPU PCI address and Xid.",
		ConstLabels: prometheus.Labels{"host": host},
	}, []string{"pci", "xid"})
	reg.MustRegister(c)
	return &XidCounter{c: c}
}

// Follow reads kernel log records from r (an open /dev/kmsg, which starts at the oldest
// record it still holds and then blocks for new ones) until it ends or ctx is done, and
// counts every Xid. The caller closes r to stop a blocked read.
func (x *XidCounter) Follow(ctx context.Context, r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 8192), 64*1024)
	for sc.Scan() {
		if ctx.Err() != nil {
			return nil
		}
		if pci, xid, ok := ParseXid(sc.Text()); ok {
			x.c.WithLabelValues(pci, xid).Inc()
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return sc.Err()
}
