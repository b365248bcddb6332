package hostagent

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gpupass/internal/pveconf"
	pb "gpupass/proto/gpupass/v1"
)

// What Proxmox itself does with a container config that decides whether apply may write or
// restart it. Each rule cites the Proxmox code it follows (../shared/pve/src, pinned commits
// in SOURCES.md).

// pveFacts are the Proxmox facts of one container's config.
type pveFacts struct {
	// locked is the main section's `lock:` (backup, snapshot, migrate, ...). pct refuses
	// writes and starts of a locked container ("CT is locked (backup)":
	// pve-guest-common:src/PVE/AbstractConfig.pm:339), but vm_reboot does not check it
	// (pve-container:src/PVE/LXC.pm:3273-3287): a reboot runs, and the start that a
	// rollback needs would then be refused. A locked container is never written or
	// restarted.
	locked string
	// pending are the lines of [pve:pending] (its header matched case-insensitively:
	// pve-container:src/PVE/LXC/Config.pm:1160). Every start applies ALL of them
	// (vm_start -> vmconfig_apply_pending: pve-container:src/PVE/LXC.pm:3128-3134), and so
	// does a reboot (vm_reboot calls vm_start).
	pending []string
	// pendingLXC: a pending raw lxc.* line. Pending lxc.* lines are kept as one list
	// (Config.pm:1189 pushes them onto the pending section's `lxc`), and applying the
	// pending changes assigns that list to the main section's `lxc` key
	// (Config.pm:1844, `$conf->{$opt} = delete $conf->{pending}->{$opt}`): at the next
	// start the whole raw lxc.* list of the main section, the GPU lines included, is
	// REPLACED by the pending one.
	pendingLXC bool
}

// pveFactsOf reads the facts of a PVE config.
func pveFactsOf(cfg *pveconf.Config) pveFacts {
	var f pveFacts
	if v, ok := cfg.Get("lock"); ok {
		f.locked = v
	}
	for _, s := range cfg.Sections() {
		if s.Name != pveconf.PendingSection {
			continue
		}
		for _, l := range s.Lines {
			if l.Kind != pveconf.KeyValue {
				continue
			}
			f.pending = append(f.pending, l.Key+": "+l.Value)
			if strings.HasPrefix(l.Key, "lxc.") {
				f.pendingLXC = true
			}
		}
	}
	return f
}

// haResource returns the HA resource id ("ct:901") when Proxmox HA manages container id:
// <hostRoot>/etc/pve/ha/resources.cfg has a "ct: <id>" section whose state is not
// "ignored" (pve-ha-manager:src/PVE/HA/Config.pm:352-365, service_check_ha_state; the file
// is a SectionConfig: "<type>: <name>" headers, indented "key value" properties). A
// missing file means no HA.
func haResource(hostRoot, id string) (sid, state string, err error) {
	p := filepath.Join(hostRoot, "etc/pve/ha/resources.cfg")
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("read HA resources: %w", err)
	}
	in := false
	found := false
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			typ, name, ok := strings.Cut(t, ":")
			in = ok && strings.TrimSpace(typ) == "ct" && strings.TrimSpace(name) == id
			found = found || in
			continue
		}
		if in {
			if k, v, ok := strings.Cut(t, " "); ok && k == "state" {
				state = strings.TrimSpace(v)
			}
		}
	}
	if !found || state == "ignored" {
		return "", "", nil
	}
	if state == "" {
		state = "started" // the default (Config.pm read_and_check_resources_config)
	}
	return "ct:" + id, state, nil
}

// haRestartCommand is what a person runs to restart an HA-managed container through HA.
// `pct start`/`pct stop` of an HA-managed container only ask HA and return before the state
// changes (pve-container:src/PVE/API2/LXC/Status.pm:166-176, 266-277), `pct reboot` bypasses
// HA, and ha-manager has no restart (pve-ha-manager:src/PVE/CLI/ha_manager.pm:273-300):
// setting the requested state is asynchronous, so the person waits between the two steps.
func haRestartCommand(sid string) string {
	return fmt.Sprintf("ha-manager set %s --state stopped; wait until `ha-manager status` shows %s stopped; ha-manager set %s --state started", sid, sid, sid)
}

// setPVEFacts fills the Proxmox fields of a plan.
func (a *Agent) setPVEFacts(p *planned, cfg *pveconf.Config) error {
	if cfg.Format != pveconf.FormatPVE {
		return nil
	}
	f := pveFactsOf(cfg)
	p.pb.Locked, p.pb.Pending, p.pb.PendingReplacesLxc = f.locked, f.pending, f.pendingLXC
	if a.rt.Name() != "pct" {
		return nil
	}
	sid, _, err := haResource(a.cfg.HostRoot, p.spec.GetId())
	if err != nil {
		return err
	}
	if sid != "" {
		p.pb.Ha, p.pb.HaCommand = sid, haRestartCommand(sid)
	}
	return nil
}

// pveRefusal says why apply must not restart (or start) a planned container, or "" when it
// may, and whether the config may still be written. A locked container is neither written
// nor restarted; a restart or start that would apply pending changes needs applyPending
// and is refused outright when a pending lxc.* line would drop the GPU lines; an
// HA-managed container is written but not restarted behind HA's back (the person restarts
// it through HA with the command given, and a later apply finds nothing to change).
func pveRefusal(p *pb.ContainerPlan, running, changed, applyPending bool) (why string, mayWrite bool) {
	id := p.GetId()
	restarts := running && p.GetRestart().GetRequired() || !running && p.GetStart()
	if l := p.GetLocked(); l != "" && (changed || restarts) {
		return fmt.Sprintf("locked: %s: container %s has `lock: %s` in %s (a %s is running, or one failed and left the lock): nothing was written or restarted; wait for it to end and apply again (if no %s is running, `pct unlock %s` removes a stale lock)",
			l, id, l, p.GetConfigPath(), l, l, id), false
	}
	if !restarts {
		return "", true
	}
	if n := len(p.GetPending()); n > 0 && !applyPending {
		why := fmt.Sprintf("container %s has %d pending change(s) in [pve:pending] that its restart would apply: %s", id, n, strings.Join(p.GetPending(), "; "))
		if p.GetPendingReplacesLxc() {
			why += " (a pending lxc.* line replaces ALL raw lxc.* lines at start, the GPU lines included)"
		}
		return why + ": nothing was written or restarted; review them (pct pending " + id + ") and apply with --apply-pending, or revert them (pct set " + id + " --revert KEY)", false
	}
	if p.GetPendingReplacesLxc() {
		// `pct set --revert lxc` is refused: lxc is no option of the schema
		// (pve-container:src/PVE/LXC/Config.pm:1588 option_exists, API2/LXC/Config.pm:187).
		return fmt.Sprintf("container %s has a pending lxc.* line: at start PVE replaces ALL raw lxc.* lines with the pending ones, dropping the GPU lines; nothing was written or restarted: remove the lxc.* lines from [pve:pending] in %s by hand (pct cannot revert raw lxc keys), or copy the GPU lines there too", id, p.GetConfigPath()), false
	}
	if sid := p.GetHa(); sid != "" {
		cmd := p.GetHaCommand()
		if !running {
			cmd = "ha-manager set " + sid + " --state started"
		}
		return fmt.Sprintf("container %s is managed by Proxmox HA (%s): gpupass does not restart it behind HA's back (pct reboot bypasses HA; HA's own start and stop return before the state changes); the config is written, the restart is yours: %s", id, sid, cmd), true
	}
	return "", true
}
