package gpupassv1

import (
	"regexp"
	"testing"
)

// TestReasonKinds: every kind has a unique, stable CamelCase name (the JSON `kind`) and a
// text when rendered from its data alone.
func TestReasonKinds(t *testing.T) {
	camel := regexp.MustCompile(`^[A-Z][a-z]+(?:[A-Z][a-z]*)*$`)
	seen := map[string]ReasonKind{}
	for v := range ReasonKind_name {
		k := ReasonKind(v)
		if k == ReasonKind_REASON_KIND_UNSPECIFIED {
			continue
		}
		name := ReasonKindName(k)
		if !camel.MatchString(name) || name == "Unknown" {
			t.Errorf("%v: name %q is not a CamelCase identifier", k, name)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("%v and %v share the name %q", k, other, name)
		}
		seen[name] = k
		if RenderReason(&Reason{Kind: k, Device: "/dev/nvidia0", Want: "195:0", Got: "195:1", Detail: "x"}) == "" {
			t.Errorf("%v renders no text", k)
		}
	}
	for k, want := range map[ReasonKind]string{
		ReasonKind_REASON_KIND_NODE_MISSING:        "NodeMissing",
		ReasonKind_REASON_KIND_GUEST_NOT_CONNECTED: "GuestNotConnected",
		ReasonKind_REASON_KIND_DRIVER_MISMATCH:     "DriverMismatch",
		ReasonKind_REASON_KIND_UNSPECIFIED:         "Unknown",
		ReasonKind(9999):                           "Unknown", // a newer peer's kind
	} {
		if got := ReasonKindName(k); got != want {
			t.Errorf("ReasonKindName(%v) = %q, want %q", k, got, want)
		}
	}
}
