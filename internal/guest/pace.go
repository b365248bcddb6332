package guest

import "time"

// Default pacing of change reports, below what a host agent accepts (gpupass's takes 20 a
// second with a burst of 40 and drops the excess): a device storm is reported at once and
// then at most this often, and the latest state is sent late rather than dropped.
const (
	reportRate  = 10 // per second, sustained
	reportBurst = 20
)

// pacer is a token bucket. Not safe for concurrent use: the session goroutine owns it.
type pacer struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newPacer(rate float64, burst int, now time.Time) *pacer {
	return &pacer{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

// take spends a token and returns 0, or returns how long until one is available (and
// spends nothing).
func (p *pacer) take(now time.Time) time.Duration {
	if el := now.Sub(p.last).Seconds(); el > 0 {
		p.tokens = min(p.burst, p.tokens+el*p.rate)
		p.last = now
	}
	if p.tokens >= 1 {
		p.tokens--
		return 0
	}
	return time.Duration((1 - p.tokens) / p.rate * float64(time.Second))
}
