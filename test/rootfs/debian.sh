#!/usr/bin/env bash
# Builds, once, Debian 12 root filesystems that boot a real init as PID 1, and caches each
# as a tarball that the tests unpack for each container and that `pct create` accepts as a
# template:
#
#   systemd  every Debian/Ubuntu container template on Proxmox: debootstrap --variant=minbase
#            --include=systemd,systemd-sysv,dbus bookworm
#   openrc   sysvinit as PID 1 running OpenRC (Debian's openrc package): mmdebstrap
#            --variant=minbase --include=sysvinit-core,openrc bookworm (debootstrap's own
#            resolver picks sysv-rc for sysvinit-core, which conflicts with openrc; apt's
#            does not)
#
#   $GPUPASS_ROOTFS_CACHE/bookworm-<flavor>.tar.zst    (default /var/cache/gpupass/rootfs)
#   $GPUPASS_ROOTFS_CACHE/bookworm-<flavor>.stamp      the recipe it was built with
#
# Usage: debian.sh [FLAVOR...]   (default: systemd openrc)
#
# A cached tarball whose stamp matches its recipe is reused (milliseconds); otherwise it is
# built from the Debian mirror named in /etc/apt (about 80-150 s each here, 150-170 MB
# unpacked, 45 MB packed). Safe to run concurrently (flock) and idempotent. Needs root.
# scripts/test.sh runs it before `go test`; the tests find the tarballs through
# internal/lxctest (Kind*: SystemdRootfs) and fail in CI without them.
set -euo pipefail

CACHE=${GPUPASS_ROOTFS_CACHE:-/var/cache/gpupass/rootfs}
SUITE=bookworm

if [ "$(id -u)" -ne 0 ]; then
  echo "rootfs: building root filesystems needs root (debootstrap); skipped" >&2
  exit 0
fi
[ $# -gt 0 ] || set -- systemd openrc
mkdir -p "$CACHE"

# The mirror this machine's apt already uses (one-line or deb822 sources), so that the
# build reaches exactly what apt reaches.
mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; exit } }' "$f" |
      grep -v -- '-security' | head -n1
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f" | grep -v -- '-security' | head -n1
  done
}
MIRROR=${GPUPASS_DEBIAN_MIRROR:-$(mirror | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

need_tools() {
  local need=() c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "rootfs: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
  fi
}

build() {
  local flavor=$1 name recipe work start
  name=$SUITE-$flavor
  case $flavor in
    systemd) recipe="v1 debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus $SUITE" ;;
    openrc) recipe="v1 mmdebstrap --variant=minbase --include=sysvinit-core,openrc $SUITE" ;;
    *) echo "rootfs: unknown flavor $flavor (want systemd or openrc)" >&2; return 1 ;;
  esac
  exec 9>"$CACHE/.$name.lock"
  flock 9
  if [ -s "$CACHE/$name.tar.zst" ] && [ "$(cat "$CACHE/$name.stamp" 2>/dev/null)" = "$recipe" ]; then
    echo "rootfs: $CACHE/$name.tar.zst is up to date"
    exec 9>&-
    return 0
  fi
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  # dbus refuses to start in a root whose / is not 0755 (mktemp makes 0700).
  mkdir -m 0755 "$work/root"
  chmod 0755 "$work/root"
  echo "rootfs: $recipe from $MIRROR (once; cached in $CACHE)"
  start=$(date +%s)
  case $flavor in
    systemd)
      need_tools debootstrap zstd
      if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" "$work/root" "$MIRROR" >"$work/build.log" 2>&1; then
        echo "rootfs: debootstrap failed; the end of its log:" >&2
        tail -n 30 "$work/build.log" >&2
        tail -n 30 "$work/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
        return 1
      fi
      ;;
    openrc)
      need_tools mmdebstrap zstd
      if ! mmdebstrap --variant=minbase --include=sysvinit-core,openrc "$SUITE" "$work/root" "$MIRROR" >"$work/build.log" 2>&1; then
        echo "rootfs: mmdebstrap failed; the end of its log:" >&2
        tail -n 30 "$work/build.log" >&2
        return 1
      fi
      ;;
  esac
  # A template, not a machine: no apt lists or package cache, no machine id (systemd makes
  # one at first boot), a hostname the container runtime replaces.
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  : >"$work/root/etc/machine-id"
  echo localhost >"$work/root/etc/hostname"
  tar --numeric-owner --xattrs -C "$work/root" -cf - . | zstd -q -T0 -10 -o "$work/$name.tar.zst"
  mv -f "$work/$name.tar.zst" "$CACHE/$name.tar.zst"
  echo "$recipe" >"$CACHE/$name.stamp"
  echo "rootfs: built $CACHE/$name.tar.zst ($(du -h "$CACHE/$name.tar.zst" | cut -f1)) in $(($(date +%s) - start)) s"
  rm -rf "$work"
  trap - EXIT
  exec 9>&-
}

for flavor in "$@"; do
  build "$flavor"
done
