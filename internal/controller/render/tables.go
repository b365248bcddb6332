package render

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"gpupass/internal/controller"
	"gpupass/internal/fleet"
)

// Report writes a plan, apply or status report as tables.
func Report(w io.Writer, r *controller.Report, s Style) {
	hosts(w, r, s)
	fmt.Fprintln(w)
	switch r.Kind {
	case controller.KindPlan:
		planBody(w, r, s)
	default:
		containers(w, r, s)
	}
	fmt.Fprintln(w)
	summary(w, r, s)
}

func hosts(w io.Writer, r *controller.Report, s Style) {
	t := &table{}
	t.add(cc("HOST", bold), cc("ADDRESS", bold), cc("REACHABLE", bold), cc("DRIVER", bold), cc("GPUS", bold), cc("NOTE", bold))
	for _, h := range r.Hosts {
		reach := cc("yes", green)
		if !h.Reachable {
			reach = cc("no", red)
		}
		driver, gpus := "-", "-"
		var note []string
		if h.Reachable {
			driver = h.Driver.Kernel
			if !h.Driver.Loaded {
				driver = "not loaded"
			}
			gpus = fmt.Sprint(len(h.GPUs))
		}
		if h.Simulated {
			note = append(note, "(simulated)")
		}
		if h.Error != "" {
			note = append(note, h.Error)
		}
		nc := ""
		if h.Driver.Change != "" {
			note = append(note, h.Driver.Change)
			nc = yellow
		}
		if h.Error != "" {
			nc = red
		}
		t.add(c(h.Name), c(h.Address), reach, c(orDash(driver)), c(gpus), cc(strings.Join(note, " "), nc))
	}
	t.write(w, s)
}

func gpus(g []string) string {
	if len(g) == 0 {
		return "none"
	}
	return strings.Join(g, ",")
}

func name(ct controller.Container) string {
	if ct.Simulated {
		return ct.Key() + " (simulated)"
	}
	return ct.Key()
}

func versions(d controller.Driver) string {
	if d.Kernel == "" && d.Userspace == "" {
		return "-"
	}
	return orDash(d.Kernel) + "/" + orDash(d.Userspace)
}

// restartCell is the RESTART column: yes (a running container is restarted), start (a
// stopped container the fleet asks to run is started: not a restart), or no.
func restartCell(ct controller.Container) string {
	switch {
	case ct.State == controller.StateUnreachable:
		return "-"
	case ct.RestartRequired:
		return "yes"
	case ct.Start || ct.Started || (ct.State == controller.StateStopped && ct.WantState == fleet.StateRunning):
		return "start"
	}
	return "no"
}

func containers(w io.Writer, r *controller.Report, s Style) {
	t := &table{}
	head := []cell{cc("CONTAINER", bold), cc("GPUS", bold), cc("STATE", bold), cc("RESTART", bold)}
	if r.Kind == controller.KindApply {
		head = append(head, cc("WRITTEN", bold), cc("RESTARTED", bold), cc("STARTED", bold))
	}
	head = append(head, cc("DRIVER KERNEL/USER", bold), cc("REASONS", bold))
	t.add(head...)
	var notes notes
	for _, ct := range r.Containers {
		g := gpus(ct.GPUs)
		if ct.GPUsDiffer {
			g = gpus(ct.ConfiguredGPUs) + " (fleet: " + g + ")"
		}
		row := []cell{c(name(ct)), c(g), cc(ct.State, StateColor(ct.State)), c(restartCell(ct))}
		if r.Kind == controller.KindApply {
			row = append(row, c(yesNo(ct.Written)), c(yesNo(ct.Restarted)), c(yesNo(ct.Started)))
		}
		parts := reasonTexts(ct)
		for _, wn := range ct.Warnings {
			parts = append(parts, "warning: "+notes.short(wn))
		}
		row = append(row, c(versions(ct.Driver)), c(strings.Join(parts, "; ")))
		t.add(row...)
	}
	t.write(w, s)
	notes.write(w)
}

// notes keeps the table rows short: a warning with a head ("userspace driver not
// installed: no libnvidia-ml.so.1 in ...") shows in a row as its head and a note number,
// and its full text once under the table, however many rows carry it.
type notes struct {
	texts []string
}

func (n *notes) short(warning string) string {
	head, _, ok := strings.Cut(warning, ": ")
	if !ok || len(warning) < 60 {
		return warning
	}
	i := slices.Index(n.texts, warning)
	if i < 0 {
		n.texts = append(n.texts, warning)
		i = len(n.texts) - 1
	}
	return fmt.Sprintf("%s (note %d)", head, i+1)
}

func (n *notes) write(w io.Writer) {
	if len(n.texts) == 0 {
		return
	}
	fmt.Fprintln(w)
	for i, text := range n.texts {
		fmt.Fprintf(w, "note %d: %s\n", i+1, text)
	}
}

func planBody(w io.Writer, r *controller.Report, s Style) {
	warned := map[string]string{} // a warning shown in full -> the first container it was shown for
	for i, ct := range r.Containers {
		if i > 0 {
			fmt.Fprintln(w)
		}
		head := fmt.Sprintf("%s  gpus %s", s.paint(bold, name(ct)), gpus(ct.GPUs))
		if ct.GPUsDiffer {
			head += " (now " + gpus(ct.ConfiguredGPUs) + ")"
		}
		if ct.RunState != "" {
			head += "  " + ct.RunState
		}
		switch {
		case ct.State == controller.StatePending:
			head += "  " + s.paint(yellow, "changes pending")
		case ct.State == controller.StateUnreachable || ct.State == controller.StateError:
			head += "  " + s.paint(red, ct.State)
		default:
			head += "  no changes (" + s.paint(StateColor(ct.State), ct.State) + ")"
		}
		fmt.Fprintln(w, head)
		if ct.State == controller.StateUnreachable || ct.State == controller.StateError {
			for _, r := range ct.Reasons {
				fmt.Fprintf(w, "    %s\n", r)
			}
			continue
		}
		if ct.ConfigPath != "" && len(ct.Changes) > 0 {
			fmt.Fprintf(w, "    %s\n", s.paint(grey, ct.ConfigPath))
		}
		for _, ch := range ct.Changes {
			if ch.Op == "remove" {
				fmt.Fprintf(w, "    %s\n", s.paint(red, "- "+ch.Line))
			} else {
				fmt.Fprintf(w, "    %s\n", s.paint(green, "+ "+ch.Line))
			}
		}
		switch {
		case ct.RestartRequired:
			fmt.Fprintf(w, "    restart: %s\n", s.paint(yellow, "yes"))
			for _, r := range ct.RestartReasons {
				fmt.Fprintf(w, "      - %s\n", r)
			}
		case ct.Start:
			fmt.Fprintf(w, "    start: %s (stopped; the fleet asks for it to run)\n", s.paint(yellow, "yes"))
		case ct.State == controller.StatePending && ct.RunState == "running":
			fmt.Fprintln(w, "    restart: no (the running container already has what the new config gives it)")
		case ct.State == controller.StatePending:
			fmt.Fprintln(w, "    restart: no (stopped; the new config applies at its next start)")
		}
		if ct.State != controller.StatePending {
			for _, r := range reasonTexts(ct) {
				fmt.Fprintf(w, "    %s\n", r)
			}
		}
		if u := ct.DriverUpgrade; u != nil {
			color := green
			if u.Breaks {
				color = red
			}
			fmt.Fprintf(w, "    host driver -> %s (driver: %s): %s\n", u.To, u.Mode, s.paint(color, u.Message))
		}
		for _, wn := range ct.Warnings {
			if first, ok := warned[wn]; ok {
				head, _, _ := strings.Cut(wn, ": ")
				fmt.Fprintf(w, "    warning: %s (as for %s above)\n", head, first)
				continue
			}
			warned[wn] = ct.Key()
			fmt.Fprintf(w, "    warning: %s\n", wn)
		}
	}
}

func summary(w io.Writer, r *controller.Report, s Style) {
	counts := r.Summary()
	states := make([]string, 0, len(counts))
	for st := range counts {
		states = append(states, st)
	}
	order := map[string]int{controller.StateReady: 0, controller.StatePending: 1, controller.StateNotReady: 2,
		controller.StateStopped: 3, controller.StateUnreachable: 4, controller.StateError: 5}
	sort.Slice(states, func(i, j int) bool { return order[states[i]] < order[states[j]] })
	var parts []string
	for _, st := range states {
		parts = append(parts, s.paint(StateColor(st), fmt.Sprintf("%d %s", counts[st], st)))
	}
	unreach := 0
	for _, h := range r.Hosts {
		if !h.Reachable {
			unreach++
		}
	}
	line := fmt.Sprintf("%s: %s", strings.ToUpper(r.Kind[:1])+r.Kind[1:], plural(len(r.Containers), "container", "containers"))
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	line += fmt.Sprintf(" on %s", plural(len(r.Hosts), "host", "hosts"))
	if unreach > 0 {
		line += ", " + s.paint(red, fmt.Sprintf("%d unreachable", unreach))
	}
	switch r.Kind {
	case controller.KindPlan:
		restarts, starts := 0, 0
		for _, ct := range r.Containers {
			if ct.State == controller.StatePending && ct.RestartRequired {
				restarts++
			}
			if ct.State == controller.StatePending && ct.Start {
				starts++
			}
		}
		if counts[controller.StatePending] > 0 {
			line += fmt.Sprintf("; apply would change %s and restart %d", plural(counts[controller.StatePending], "container", "containers"), restarts)
			if starts > 0 {
				line += fmt.Sprintf(", start %d", starts)
			}
		} else if r.ExitCode() == controller.ExitOK {
			line += "; nothing to change"
		}
	case controller.KindApply:
		written, restarted, started, rolled := 0, 0, 0, 0
		for _, ct := range r.Containers {
			if ct.Written {
				written++
			}
			if ct.Restarted {
				restarted++
			}
			if ct.Started {
				started++
			}
			if ct.RolledBack {
				rolled++
			}
		}
		line += fmt.Sprintf("; %d written, %d restarted", written, restarted)
		if started > 0 {
			line += fmt.Sprintf(", %d started", started)
		}
		if rolled > 0 {
			line += fmt.Sprintf(", %d rolled back", rolled)
		}
	}
	fmt.Fprintln(w, line+".")
}
