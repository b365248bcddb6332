#!/usr/bin/env bash
# gpupass PVE lab teardown: stops the lab's containers (ids 9900-9999 only), the daemons
# setup.sh started (by their recorded pids), unmounts /etc/pve, and removes what would affect
# other LXC users or programs on this machine: PVE's snippets in common.conf.d/userns.conf.d,
# the systemctl and timedatectl shims, the /etc/hosts line. The installed PVE modules, pct, the
# hooks (guarded) and the build cache stay, so setup.sh is quick again.
# PVELAB_PURGE=1 also destroys those containers (pct destroy --purge).
set -uo pipefail
# shellcheck source=test/pvelab/lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "pvelab: teardown.sh needs root" >&2; exit 1; }
unmount_dead_etc_pve
if mountpoint -q /etc/pve && [ -x /usr/sbin/pct ]; then
	for f in /etc/pve/lxc/*.conf; do
		[ -f "$f" ] || continue
		id=$(basename "$f" .conf)
		case "$id" in *[!0-9]*) continue ;; esac
		[ "$id" -ge "$PVELAB_IDS_FIRST" ] && [ "$id" -le "$PVELAB_IDS_LAST" ] || continue
		if lxc-info -n "$id" -s 2>/dev/null | grep -q RUNNING; then
			step "stopping container $id"
			lxc-stop -n "$id" -k 2>/dev/null || true
		fi
		if [ "${PVELAB_PURGE:-0}" = 1 ]; then
			pct unlock "$id" >/dev/null 2>&1 || true
			pct destroy "$id" --purge >/dev/null 2>&1 && step "destroyed container $id"
		fi
	done
fi
for n in lxc-monitord syslogd; do
	if pid_alive "$PVELAB_RUN/$n.pid"; then
		kill "$(cat "$PVELAB_RUN/$n.pid")" && step "stopped $n"
		[ $n = syslogd ] && rm -f /dev/log
	fi
	rm -f "$PVELAB_RUN/$n.pid"
done
if mountpoint -q /etc/pve; then
	umount /etc/pve 2>/dev/null || umount -l /etc/pve
	step "unmounted /etc/pve"
fi
if pmxcfs_pid >/dev/null; then
	stop_pmxcfs
	step "stopped pmxcfs"
fi
rm -f "$PVELAB_RUN/pmxcfs.pid"
rm -f /usr/share/lxc/config/common.conf.d/01-pve.conf /usr/share/lxc/config/userns.conf.d/01-pve.conf
grep -q 'gpupass PVE lab: systemctl shim' /usr/sbin/systemctl 2>/dev/null && rm -f /usr/sbin/systemctl
grep -q 'gpupass PVE lab: timedatectl shim' /usr/sbin/timedatectl 2>/dev/null && rm -f /usr/sbin/timedatectl
sed -i "/$PVELAB_HOSTS_MARK/d" /etc/hosts
step "teardown done"
