package bench

import (
	"math"
	"slices"
	"time"
)

// Sample is a set of measured durations.
type Sample []time.Duration

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) in milliseconds, or
// NaN for an empty sample.
func (s Sample) Percentile(p float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	sorted := slices.Clone(s)
	slices.Sort(sorted)
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return ms(sorted[rank-1])
}

// Median is the 50th percentile in milliseconds.
func (s Sample) Median() float64 { return s.Percentile(50) }

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// round keeps d decimals.
func round(v float64, d int) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}
