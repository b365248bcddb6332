package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Row 13: every not-ready state carries a reason. Containers are made ready by gpupass,
// then someone else edits a config and restarts the container by hand; the guest's push
// names what is wrong (missing, denied, not-char-device, wrong-device, no network, a
// version mismatch; no-driver is row 9), plan asks for a restart with a reason, and one
// apply brings them all back.
func testEveryNotReadyHasReason(t *testing.T, f *fabric) {
	h := f.addHost(t, hostOpts{})
	nv, _ := h.hostMajors(t)
	node := func(n string) string { return filepath.Join(h.root, "dev", n) }
	mount1 := fmt.Sprintf("lxc.mount.entry = %s dev/nvidia1 none bind,create=file 0 0", node("nvidia1"))
	cases := []struct {
		short   string
		edit    func(ct *container) // after the first apply; then a hand restart
		files   map[string]string
		network bool
		device  string // the expected status of /dev/nvidia1, "" to skip
		reason  string // a reason must contain this
		kind    string // ... and be of this kind in reasons_detail (of /dev/nvidia1 where device is set)
	}{
		{short: "missing", device: "missing", reason: "missing", kind: "DeviceCheck",
			edit: func(ct *container) { ct.replaceConfig(t, mount1+"\n", "") }},
		{short: "denied", device: "denied", reason: "denied", kind: "DeviceCheck",
			edit: func(ct *container) {
				ct.replaceConfig(t, fmt.Sprintf("lxc.cgroup2.devices.allow = c %d:1 rwm\n", nv), "")
			}},
		{short: "notchar", device: "not-char-device", reason: "not-char-device", kind: "DeviceCheck",
			edit: func(ct *container) {
				ct.replaceConfig(t, mount1, fmt.Sprintf("lxc.mount.entry = %s dev/nvidia1 none bind,optional,create=file 0 0", node("absent")))
			}},
		{short: "wrong", device: "wrong-device", reason: "wrong-device", kind: "DeviceCheck",
			edit: func(ct *container) {
				ct.replaceConfig(t, mount1, fmt.Sprintf("lxc.mount.entry = %s dev/nvidia1 none bind,create=file 0 0", node("nvidia0")))
			}},
		{short: "nonet", network: true, reason: "network", kind: "Network"},
		{short: "mismatch", reason: "version mismatch", kind: "DriverMismatch",
			files: map[string]string{"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.575.51.02": "not a real library\n"}},
	}
	var entries []fleetCt
	cts := make([]*container, len(cases))
	for i, tc := range cases {
		cts[i] = h.newContainer(t, "r13"+tc.short, ctOpts{Files: tc.files})
		entries = append(entries, fleetCt{Host: h, Ct: cts[i], GPUs: []string{"1"}, State: "running", RequireNetwork: tc.network})
	}
	fl := f.writeFleet(t, "reasons", entries)
	first := f.ctl(t, "apply", fl, "--timeout", "20s")
	for i, tc := range cases {
		c := first.Report.ct(t, cts[i].name)
		if tc.edit == nil {
			continue
		}
		if c.State != "ready" {
			t.Fatalf("%s: first apply: %s %q, want ready", tc.short, c.State, c.Reasons)
		}
		tc.edit(cts[i])
		cts[i].Kill(t)
		cts[i].Start(t)
	}
	for i, tc := range cases {
		t.Run(tc.short, func(t *testing.T) {
			c := f.waitStatus(t, fl, cts[i].name, 10*time.Second, func(c reportCt) bool {
				return c.State == "not-ready" && anyContains(c.Reasons, tc.reason)
			})
			if tc.device != "" && c.deviceStatus()["/dev/nvidia1"] != tc.device {
				t.Errorf("/dev/nvidia1 status %q, want %q (all %v)", c.deviceStatus()["/dev/nvidia1"], tc.device, c.deviceStatus())
			}
			for _, r := range c.Reasons {
				if strings.TrimSpace(r) == "" {
					t.Errorf("an empty reason in %q", c.Reasons)
				}
			}
			// The same reasons as data (reasons_detail): one per reason, the kind decided
			// where the reason was (the guest's checks, the host's judge).
			kinds := map[string]bool{}
			for j, d := range c.ReasonsDetail {
				if j >= len(c.Reasons) || d.Text != c.Reasons[j] {
					t.Errorf("reasons_detail[%d] %q is not reasons[%d] (reasons %q)", j, d.Text, j, c.Reasons)
				}
				if tc.device == "" || (d.Device == "/dev/nvidia1" && d.Got == tc.device) {
					kinds[d.Kind] = true
				}
			}
			if len(c.ReasonsDetail) != len(c.Reasons) || !kinds[tc.kind] {
				t.Errorf("reasons_detail %+v, want one per reason with kind %s", c.ReasonsDetail, tc.kind)
			}
			t.Logf("not-ready: %s", c.reasons())
		})
	}
	plan := f.ctl(t, "plan", fl)
	for i, tc := range cases {
		if tc.edit == nil {
			continue
		}
		c := plan.Report.ct(t, cts[i].name)
		if !c.RestartRequired || len(c.RestartReasons) == 0 {
			t.Errorf("%s: plan after the hand edit: restart %v reasons %q, want a restart with a reason", tc.short, c.RestartRequired, c.RestartReasons)
		}
		// The restart rule's reasons keep their kinds (NodeMissing, StartedWithoutRule, ...).
		typed := false
		for _, d := range c.ReasonsDetail {
			typed = typed || (strings.HasPrefix(d.Text, "restart: ") && d.Kind != "Other" && d.Kind != "Unknown")
		}
		if !typed {
			t.Errorf("%s: plan's reasons_detail %+v has no restart reason of the rule's kinds", tc.short, c.ReasonsDetail)
		}
	}
	again := f.ctl(t, "apply", fl, "--timeout", "20s")
	for i, tc := range cases {
		c := again.Report.ct(t, cts[i].name)
		if tc.edit != nil && c.State != "ready" {
			t.Errorf("%s: apply after the hand edit: %s %q, want ready", tc.short, c.State, c.Reasons)
		}
		if tc.edit == nil && (c.State != "not-ready" || !anyContains(c.Reasons, tc.reason)) {
			t.Errorf("%s: %s %q, want not-ready naming %q", tc.short, c.State, c.Reasons, tc.reason)
		}
	}
}
