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

// Brief makes one of the reasons that differ only in their device, in place and in order;
// a reason whose want differs stays its own.
func TestBrief(t *testing.T) {
	denied := func(dev string) *Reason {
		return NewReason(&Reason{Kind: ReasonKind_REASON_KIND_GUEST_DENIED, Device: dev})
	}
	rs := []*Reason{
		NewReason(&Reason{Kind: ReasonKind_REASON_KIND_NODE_MISSING, Device: "/dev/nvidia1", Want: "195:1"}),
		denied("/dev/nvidia-uvm"),
		NewReason(&Reason{Kind: ReasonKind_REASON_KIND_NODE_MISSING, Device: "/dev/nvidiactl", Want: "195:255"}),
		denied("/dev/nvidia-uvm-tools"),
		OtherReason("something else"),
	}
	got := Brief(rs)
	want := ReasonText(rs[0]) + "; guest reports /dev/nvidia-uvm, /dev/nvidia-uvm-tools denied by the device cgroup: the running rules do not allow it; " +
		ReasonText(rs[2]) + "; something else"
	if got != want {
		t.Errorf("Brief:\n got %q\nwant %q", got, want)
	}
	if got := Brief(rs[:1]); got != ReasonText(rs[0]) {
		t.Errorf("one reason: %q", got)
	}
}
