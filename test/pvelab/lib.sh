# Shared by test/pvelab/setup.sh and teardown.sh (sourced, not run).
# shellcheck shell=bash

PVELAB_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PVELAB_REPO=$(cd "$PVELAB_HERE/../.." && pwd)
# Proxmox's sources (git archive tarballs, SOURCES.md): ../shared/pve/src beside the checkout.
PVELAB_SRC=${GPUPASS_PVE_SRC:-$PVELAB_REPO/../shared/pve/src}
PVELAB_CACHE=${GPUPASS_PVELAB_CACHE:-/var/cache/gpupass/pvelab}
# Run state: the pids of the daemons setup.sh started, the systemctl shim's units, id locks.
PVELAB_RUN=/run/gpupass-pvelab
PVELAB_LOG=$PVELAB_RUN/setup.log
# The PVE repositories the lab installs (lxc is separate).
PVELAB_REPOS="pve-container pve-common pve-guest-common pve-cluster pve-storage pve-access-control pve-firewall pve-ha-manager pve-apiclient"
# Container ids the lab's tests use; teardown stops these and only these.
PVELAB_IDS_FIRST=9900
PVELAB_IDS_LAST=9999
PVELAB_HOSTS_MARK="# gpupass pvelab: pmxcfs needs a non-loopback address for the node name"
PVELAB_TEMPLATE_DIR=/var/lib/vz/template/cache

pvelab_node() {
	local n
	n=$(uname -n)
	echo "${n%%.*}"
}

PVELAB_T0=$(date +%s%N)
# step prints one timed line: "pvelab [  12.3s] what" (no bc: it may not be installed yet).
step() {
	local ds=$((($(date +%s%N) - PVELAB_T0) / 100000000))
	printf 'pvelab [%4d.%ds] %s\n' $((ds / 10)) $((ds % 10)) "$*"
}

# quiet runs a command with its output in the log; on failure it prints the log's tail and
# exits. PVELAB_VERBOSE=1 shows everything.
quiet() {
	if [ "${PVELAB_VERBOSE:-0}" = 1 ]; then
		"$@"
		return
	fi
	if ! "$@" >>"$PVELAB_LOG" 2>&1; then
		echo "pvelab: failed: $*" >&2
		tail -n 40 "$PVELAB_LOG" >&2
		exit 1
	fi
}

# etc_pve_listed: something is mounted on /etc/pve (from mountinfo: `mountpoint` fails on a
# dead FUSE mount, "Transport endpoint is not connected", after pmxcfs was killed).
etc_pve_listed() {
	awk '$5 == "/etc/pve" { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# unmount_dead_etc_pve lazily unmounts /etc/pve when its pmxcfs is gone (the mount is listed
# but cannot be read).
unmount_dead_etc_pve() {
	if etc_pve_listed && ! ls /etc/pve >/dev/null 2>&1; then
		step "unmounting a dead /etc/pve (its pmxcfs is gone)"
		umount -l /etc/pve
	fi
}

# pmxcfs_pid prints the pid of the running pmxcfs (the one the lab recorded, else the one
# pmxcfs itself recorded), or fails.
pmxcfs_pid() {
	local f p
	for f in "$PVELAB_RUN/pmxcfs.pid" /run/pve-cluster.pid; do
		p=$(cat "$f" 2>/dev/null) || continue
		# A zombie (state Z: dead, its parent has not reaped it) holds nothing any more.
		if [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = pmxcfs ] &&
			! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# stop_pmxcfs stops the running pmxcfs (if any) and waits up to 3 s for it to go.
stop_pmxcfs() {
	local p
	p=$(pmxcfs_pid) || return 0
	kill "$p" 2>/dev/null || return 0
	for _ in $(seq 30); do pmxcfs_pid >/dev/null || return 0; sleep 0.1; done
	kill -9 "$p" 2>/dev/null || true
}

# pid_alive FILE: the process recorded in FILE is running.
pid_alive() {
	[ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}
