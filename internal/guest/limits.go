package guest

import (
	"strconv"
	"unicode/utf8"

	pb "gpupass/proto/gpupass/v1"
)

// Bounds on a report, so that a hostile or broken container cannot grow what the host
// agent holds: a full report stays well under 256 KiB.
const (
	MaxDevices   = 256 // expected devices checked; more are refused with a reason
	MaxReasons   = 64
	MaxWarnings  = 32
	MaxLinks     = 32
	MaxAddresses = 16 // per link
	maxDetail    = 512
	maxPath      = 512
	maxIDLen     = 128
)

// truncate shortens s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// capList keeps at most n entries, the last one saying how many were dropped.
func capList(l []string, n int) []string {
	for i := range l {
		l[i] = truncate(l[i], maxDetail)
	}
	if len(l) <= n {
		return l
	}
	dropped := len(l) - (n - 1)
	out := append([]string(nil), l[:n-1]...)
	return append(out, "... and "+strconv.Itoa(dropped)+" more")
}

// capReasons is capList for reasons as data: the texts capped and truncated as capList
// does, the last kept one (when some are dropped) a note of how many.
func capReasons(rs []*pb.Reason, n int) []*pb.Reason {
	texts := capList(pb.ReasonTexts(rs), n)
	out := make([]*pb.Reason, len(texts))
	for i, t := range texts {
		if i == len(texts)-1 && len(rs) > len(texts) {
			out[i] = pb.OtherReason(t)
			continue
		}
		out[i] = rs[i]
		out[i].Text = t
	}
	return out
}
