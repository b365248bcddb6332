package render

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"gpupass/internal/controller"
	pb "gpupass/proto/gpupass/v1"
)

// Doctor explains a diagnosis in words: what the host has, what the config has, what the
// guest sees, and per finding the likely cause and the command that fixes it.
func Doctor(w io.Writer, d *controller.Diagnosis, s Style) {
	ct := d.Container
	fmt.Fprintf(w, "%s  %s\n\n", s.paint(bold, name(ct)), s.paint(StateColor(ct.State), ct.State))

	h := d.Host
	fmt.Fprintf(w, "%s %s (%s", s.paint(bold, "Host"), h.Name, h.Address)
	if h.AgentBuild != "" {
		fmt.Fprintf(w, ", agent %s", h.AgentBuild)
	}
	if h.Runtime != "" {
		fmt.Fprintf(w, ", runtime %s", h.Runtime)
	}
	fmt.Fprint(w, ")")
	if h.Simulated {
		fmt.Fprint(w, " (simulated)")
	}
	fmt.Fprintln(w)
	if d.Inventory == nil {
		fmt.Fprintf(w, "  %s\n\n", s.paint(red, "not reachable: "+h.Error))
	} else {
		if h.Driver.Loaded {
			fmt.Fprintf(w, "  driver   %s loaded\n", h.Driver.Kernel)
		} else {
			fmt.Fprintf(w, "  driver   %s\n", s.paint(red, "not loaded: "+orDash(h.Driver.Error)))
		}
		keys := make([]string, 0, len(h.Driver.Majors))
		for k := range h.Driver.Majors {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var ms []string
		for _, k := range keys {
			ms = append(ms, fmt.Sprintf("%s %d", k, h.Driver.Majors[k]))
		}
		fmt.Fprintf(w, "  majors   %s\n", orDash(strings.Join(ms, ", ")))
		if len(h.GPUs) == 0 {
			fmt.Fprintln(w, "  GPUs     none")
		}
		t := &table{}
		for i, g := range h.GPUs {
			label := ""
			if i == 0 {
				label = "GPUs"
			}
			t.add(c(fmt.Sprintf("  %-7s", label)), c(fmt.Sprint(g.Index)), c(g.Model), c(g.Bus), c(fmt.Sprintf("/dev/nvidia%d", g.Minor)), c(g.UUID), c(persistence(d.Inventory, g.Bus)))
		}
		t.write(w, s)
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "%s ", s.paint(bold, "Config"))
	if d.InFleet {
		fmt.Fprintf(w, "(%s: gpus [%s], style %s", orDash(d.FleetFile), strings.Join(d.Entry.GPUs, ", "), d.Entry.Style)
		if d.Entry.State != "" {
			fmt.Fprintf(w, ", state %s", d.Entry.State)
		}
		if d.Entry.RequireNetwork {
			fmt.Fprint(w, ", require_network")
		}
		fmt.Fprintln(w, ")")
	} else {
		fmt.Fprintf(w, "(not in %s)\n", orDash(d.FleetFile))
	}
	switch p := d.Plan; {
	case p == nil:
		fmt.Fprintln(w, "  no plan")
	case p.GetError() != "":
		fmt.Fprintf(w, "  %s\n", s.paint(red, "plan failed: "+p.GetError()))
	default:
		if len(p.GetChanges()) == 0 {
			fmt.Fprintf(w, "  %s matches the fleet\n", orDash(p.GetConfigPath()))
		} else {
			fmt.Fprintf(w, "  %s: %d managed line(s) differ from the fleet\n", p.GetConfigPath(), len(p.GetChanges()))
			for _, ch := range p.GetChanges() {
				if ch.GetOp() == pb.ConfigChange_OP_REMOVE {
					fmt.Fprintf(w, "    %s\n", s.paint(red, "- "+ch.GetLine()))
				} else {
					fmt.Fprintf(w, "    %s\n", s.paint(green, "+ "+ch.GetLine()))
				}
			}
		}
		switch {
		case p.GetRestart().GetRequired():
			fmt.Fprintf(w, "  restart  required: %s\n", strings.Join(p.GetRestart().GetReasons(), "; "))
		case p.GetStart():
			fmt.Fprintln(w, "  start    required: stopped, and the fleet asks for it to run (a start, not a restart)")
		default:
			fmt.Fprintln(w, "  restart  not required")
		}
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "%s\n", s.paint(bold, "Guest"))
	st := d.Status
	switch {
	case st == nil:
		fmt.Fprintln(w, "  unknown (no status from the host)")
	default:
		fmt.Fprintf(w, "  state    %s", orDash(st.GetRunState()))
		switch {
		case st.GetGuestConnected():
			fmt.Fprintf(w, ", guest agent connected, last report %s ago\n", (time.Duration(st.GetReportAgeMs()) * time.Millisecond).String())
		case st.GetRunState() == "running":
			fmt.Fprintf(w, ", %s\n", s.paint(red, "no guest agent report"))
		default:
			fmt.Fprintln(w)
		}
		t := &table{}
		for i, dev := range st.GetDevices() {
			label := ""
			if i == 0 {
				label = "devices"
			}
			status := controller.DeviceStatusString(dev.GetStatus())
			col := green
			if status != "ok" {
				col = red
			}
			detail := dev.GetDetail()
			if dev.GetMajor() != 0 || dev.GetMinor() != 0 {
				detail = strings.TrimSpace(fmt.Sprintf("%d:%d %s", dev.GetMajor(), dev.GetMinor(), detail))
			}
			t.add(c(fmt.Sprintf("  %-7s", label)), c(dev.GetPath()), cc(status, col), c(detail))
		}
		t.write(w, s)
		if st.GetGuestConnected() {
			user := st.GetDriver().GetUserspace()
			if user == "" {
				user = "not installed"
			}
			switch st.GetDriver().GetUserspaceSource() {
			case "host":
				user += " (the host's, driver: host)"
			case "own":
				user += " (the template's own)"
			}
			fmt.Fprintf(w, "  driver   kernel %s, userspace %s\n", orDash(st.GetDriver().GetKernel()), user)
			fmt.Fprintf(w, "  network  %s\n", network(d))
		}
	}
	fmt.Fprintln(w)

	heading := "Findings"
	if len(d.Problems()) == 0 {
		// The same verdict as the exit code (0): fine, perhaps with warnings.
		fmt.Fprintf(w, "%s %s is %s with nothing to change", s.paint(bold, "Verdict"), ct.Key(), s.paint(StateColor(ct.State), ct.State))
		if len(d.Findings) == 0 {
			fmt.Fprintln(w, ".")
			return
		}
		fmt.Fprintf(w, " (%s below).\n\n", plural(len(d.Findings), "warning", "warnings"))
		heading = "Warnings"
	}
	fmt.Fprintf(w, "%s\n", s.paint(bold, heading))
	for i, f := range d.Findings {
		problem := f.Problem
		if f.Warning && heading == "Findings" {
			problem = "warning: " + problem
		}
		fmt.Fprintf(w, "  %d. %s\n", i+1, problem)
		fmt.Fprintf(w, "     cause: %s\n", f.Cause)
		fmt.Fprintf(w, "     fix:   %s\n", s.paint(bold, f.Fix))
	}
}

// network says whether the guest's network works and, when not, why (the guest's reason)
// and whether the fleet entry needs it.
func network(d *controller.Diagnosis) string {
	st := d.Status
	if st.GetNetworkOk() {
		return "ok"
	}
	why := st.GetReport().GetNetwork().GetReason()
	if why == "" {
		why = "no up link with an address and a default route"
	}
	out := "not ok: " + why
	if !d.Entry.RequireNetwork {
		out += " (not required: the fleet entry does not set require_network)"
	}
	return out
}

// persistence says the GPU's persistence mode as the host agent read it.
func persistence(inv *pb.HostInventory, bus string) string {
	for _, g := range inv.GetGpus() {
		if g.GetBusId() == bus {
			switch g.GetPersistenceMode() {
			case "enabled":
				return "persistence on"
			case "disabled":
				return "persistence OFF"
			}
		}
	}
	return "persistence ?"
}
