#!/usr/bin/env bash
# make bench: every gpupass benchmark side by side with its baseline, in one run. Builds
# bin/gpupass-bench, runs it as root in a private mount namespace with cgroup2 mounted on
# /sys/fs/cgroup (as on Proxmox, FACTS.md §2), writes bench/results.json and
# docs/benchmarks.md, and removes every container, process and cgroup it made, also when
# interrupted. Extra arguments go to the program (e.g. -only fleet, -runs 5); a run with
# any writes /tmp/gpupass-bench-results.json and /tmp/gpupass-bench.md instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:/usr/sbin:/sbin:$PATH
export LC_ALL=C
WORK=${GPUPASS_BENCH_DIR:-/var/lib/gpupass-bench}

[ "$(id -u)" -eq 0 ] || { echo "bench: run as root (it starts LXC containers and makes cgroups)" >&2; exit 1; }
for c in lxc-start lxc-attach unshare; do
  command -v "$c" >/dev/null || { echo "bench: $c is missing: run scripts/deps.sh" >&2; exit 1; }
done
[ -x bin/gpupass-host-agent ] && [ -x bin/gpupass-guest-agent ] && [ -x bin/gpupass ] || make --no-print-directory build
go build -trimpath -o bin/gpupass-bench ./bench/cmd/gpupass-bench

# The host agent section raises fs.inotify.max_user_instances for its 200 guest agents and
# puts it back; this is the backstop for a run that is killed.
inotify_max=$(cat /proc/sys/fs/inotify/max_user_instances)

cleanup() {
  # Whatever an interrupted run left: its containers and the cgroups of its guests (in a
  # fresh namespace with the same cgroup2 hierarchy mounted), then its directory.
  unshare -m --propagation private sh -c '
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup
    for cfg in "$1"/*/lxc/*/config; do
      [ -f "$cfg" ] || continue
      d=$(dirname "$cfg"); p=$(dirname "$d")
      lxc-stop -P "$p" -n "$(basename "$d")" -k >/dev/null 2>&1 || true
    done
    for cg in /sys/fs/cgroup/lxc.payload.gpb-*; do
      [ -d "$cg" ] || continue
      for pid in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      rmdir "$cg" 2>/dev/null || true
    done
    # The pct section'"'"'s lab containers (ids 9990-9999, hostname gpb-pct-<id>).
    if command -v pct >/dev/null; then
      for conf in /etc/pve/lxc/99[9][0-9].conf; do
        [ -f "$conf" ] && grep -q "^hostname: gpb-pct-" "$conf" || continue
        id=$(basename "$conf" .conf)
        lxc-stop -n "$id" -k >/dev/null 2>&1 || true
        pct destroy "$id" --purge >/dev/null 2>&1 || true
      done
    fi' sh "$WORK" || true
  rm -rf "$WORK"
  echo "$inotify_max" >/proc/sys/fs/inotify/max_user_instances 2>/dev/null || true
}
trap cleanup EXIT

# A partial run (any argument, e.g. -only fleet) must not overwrite the committed results
# with some of the figures: it writes beside them unless told otherwise (-json, -md).
# With -merge (and -only), the sections run replace theirs in the committed files and the
# rest stays as the last full run wrote it.
out=(-json bench/results.json -md docs/benchmarks.md)
if [ $# -gt 0 ] && [[ " $* " != *" -merge "* ]]; then
  out=(-json /tmp/gpupass-bench-results.json -md /tmp/gpupass-bench.md)
fi

# The old /sys/fs/cgroup (tmpfs and v1 mounts) is taken away rather than mounted over:
# Proxmox decides its cgroup mode from the first /proc/mounts entry there
# (pve-common:src/PVE/CGroup.pm, cgroup_mode), and the pct section wants PVE 9's pure cgroup2.
mount_cg='true'
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || mount_cg='umount -l /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup'
unshare -m --propagation private sh -c "$mount_cg"' && exec "$@"' sh \
  bin/gpupass-bench -bin bin -work "$WORK" "${out[@]}" "$@"
