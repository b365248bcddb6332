package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gpupass/internal/gpu"
)

// setHostDriver makes the simulated host's loaded module ver with only ver's userspace
// libraries under /usr/lib/x86_64-linux-gnu: the host tree after a driver install or
// upgrade.
func (h *host) setHostDriver(t *testing.T, ver string) {
	t.Helper()
	lib := filepath.Join(h.root, "usr/lib/x86_64-linux-gnu")
	if err := os.RemoveAll(lib); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvcuvid"} {
		if err := os.WriteFile(filepath.Join(lib, l+".so."+ver), []byte(l+" "+ver+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	v := "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  " + ver + "  Release Build  (dvs-builder@U22)\n"
	if err := os.WriteFile(filepath.Join(h.root, "proc/driver/nvidia/version"), []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

// DriverHost: containers with no NVIDIA files get the host's userspace (driver: host);
// an own container with an old libnvidia-ml beside them. The host driver is upgraded
// (the host tree changes from 580.95.05 to 580.159.04): plan --driver-version said before
// which would realign and which break; status then says "restart required: host driver
// changed A -> B" for the driver: host container and names the own one's mismatch; apply
// restarts the driver: host container and it comes back ready with the new userspace.
func testDriverHostUpgrade(t *testing.T, f *fabric) {
	const v1, v2 = "580.95.05", "580.159.04"
	h := f.addHost(t, hostOpts{Sim: gpu.SimOptions{DriverVersion: v1}})
	h.setHostDriver(t, v1)
	hc := h.newContainer(t, "drvhost", ctOpts{})
	oc := h.newContainer(t, "drvown", ctOpts{Files: map[string]string{"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so." + v1: "not a real library\n"}})
	fl := f.writeFleet(t, "drv", []fleetCt{
		{Host: h, Ct: hc, GPUs: []string{"0"}, State: "running", Driver: "host"},
		{Host: h, Ct: oc, GPUs: []string{"1"}, State: "running"},
	})
	ap := f.mustApplyReady(t, fl, hc.name, oc.name)
	if d := ap.Report.ct(t, hc.name).Driver; d.Userspace != v1 || d.Source != "host" {
		t.Fatalf("driver: host after apply: %+v, want userspace %s from the host", d, v1)
	}
	if d := ap.Report.ct(t, oc.name).Driver; d.Userspace != v1 || d.Source != "own" {
		t.Fatalf("driver: own after apply: %+v, want its own %s", d, v1)
	}

	pl := f.ctl(t, "plan", fl, "--driver-version", v2)
	for _, tc := range []struct{ id, want string }{
		{hc.name, "realigns by itself"},
		{oc.name, "would break: its own userspace is " + v1},
	} {
		var got string
		if u := pl.Report.ct(t, tc.id).DriverUpgrade; u != nil {
			got = u.Message
		}
		if !strings.Contains(got, tc.want) {
			t.Errorf("plan --driver-version %s for %s: %q, want %q", v2, tc.id, got, tc.want)
		}
	}

	h.setHostDriver(t, v2) // the upgrade
	st := f.ctl(t, "status", fl)
	if st.Code != 2 {
		t.Errorf("status after the upgrade: exit %d, want 2", st.Code)
	}
	if c := st.Report.Hosts[0].Driver.Change; !strings.Contains(c, "host driver changed "+v1+" -> "+v2) {
		t.Errorf("host driver change in status: %q", c)
	}
	hs := st.Report.ct(t, hc.name)
	if !hs.RestartRequired || !anyContains(hs.Reasons, "restart required: host driver changed "+v1+" -> "+v2) {
		t.Errorf("driver: host after the upgrade: restart_required %v reasons %q", hs.RestartRequired, hs.Reasons)
	}
	if ow := st.Report.ct(t, oc.name); ow.RestartRequired || !anyContains(ow.Reasons, "own userspace is "+v1) {
		t.Errorf("driver: own after the upgrade: restart_required %v reasons %q, want no restart and the mismatch named", ow.RestartRequired, ow.Reasons)
	}

	ap = f.ctl(t, "apply", fl, "--timeout", "30s")
	hr := ap.Report.ct(t, hc.name)
	if !hr.Restarted || hr.State != "ready" || hr.Driver.Userspace != v2 || hr.Driver.Source != "host" || hr.Driver.Kernel != v2 {
		t.Errorf("driver: host after apply: restarted %v state %s driver %+v reasons %q, want restarted, ready, %s from the host", hr.Restarted, hr.State, hr.Driver, hr.Reasons, v2)
	}
	if or := ap.Report.ct(t, oc.name); or.Restarted || or.State != "not-ready" {
		t.Errorf("driver: own after apply: restarted %v state %s, want left alone and not ready (its userspace is %s)", or.Restarted, or.State, v1)
	}
}
