package guest

import (
	"time"

	"golang.org/x/time/rate"
)

// Default pacing of change reports, below what a host agent accepts (gpupass's takes 20 a
// second with a burst of 40 and drops the excess): a device storm is reported at once and
// then at most this often, and the latest state is sent late rather than dropped.
const (
	reportRate  = 10 // per second, sustained
	reportBurst = 20
)

// pacer is a token bucket that says how long to wait instead of dropping. Not safe for
// concurrent use: the session goroutine owns it.
type pacer struct{ lim *rate.Limiter }

// newPacer starts with a full burst (now is the clock the caller passes to take).
func newPacer(r float64, burst int, now time.Time) *pacer {
	lim := rate.NewLimiter(rate.Limit(r), burst)
	lim.SetBurstAt(now, burst) // fills the bucket as of now
	return &pacer{lim: lim}
}

// take spends a token and returns 0, or returns how long until one is available (and
// spends nothing).
func (p *pacer) take(now time.Time) time.Duration {
	if tok := p.lim.TokensAt(now); tok < 1 {
		return time.Duration((1 - tok) / float64(p.lim.Limit()) * float64(time.Second))
	}
	p.lim.AllowN(now, 1)
	return 0
}
