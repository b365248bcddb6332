#!/usr/bin/env bash
# Builds, once, a Debian 12 root filesystem that boots systemd as PID 1 (the shape of every
# Debian/Ubuntu container template on Proxmox) and caches it as a tarball that the tests
# unpack for each container and that `pct create` accepts as a template:
#
#   $GPUPASS_ROOTFS_CACHE/bookworm-systemd.tar.zst    (default /var/cache/gpupass/rootfs)
#   $GPUPASS_ROOTFS_CACHE/bookworm-systemd.stamp      the recipe it was built with
#
# A cached tarball whose stamp matches the recipe below is reused (seconds); otherwise
# debootstrap builds it from the Debian mirror named in /etc/apt (about 80 s, 150 MB
# unpacked, 45 MB packed). Safe to run concurrently (flock) and idempotent. Needs root.
# Used by scripts/test.sh before `go test`; the tests find it through internal/lxctest
# (SystemdRootfs) and fail in CI without it.
set -euo pipefail

CACHE=${GPUPASS_ROOTFS_CACHE:-/var/cache/gpupass/rootfs}
NAME=bookworm-systemd
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus
# Bump when the recipe changes: a stamp that differs rebuilds the tarball.
RECIPE="v1 debootstrap --variant=minbase --include=$INCLUDE $SUITE"

if [ "$(id -u)" -ne 0 ]; then
  echo "rootfs: building $NAME needs root (debootstrap); skipped" >&2
  exit 0
fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.$NAME.lock"
flock 9

if [ -s "$CACHE/$NAME.tar.zst" ] && [ "$(cat "$CACHE/$NAME.stamp" 2>/dev/null)" = "$RECIPE" ]; then
  echo "rootfs: $CACHE/$NAME.tar.zst is up to date"
  exit 0
fi

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v zstd >/dev/null 2>&1 || need+=(zstd)
if [ ${#need[@]} -gt 0 ]; then
  echo "rootfs: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null
  apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
fi

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

work=$(mktemp -d "$CACHE/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dbus refuses to start in a root whose / is not 0755 (mktemp makes 0700).
mkdir -m 0755 "$work/root"
chmod 0755 "$work/root"

echo "rootfs: debootstrap $SUITE from $MIRROR (once; cached in $CACHE)"
start=$(date +%s)
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  echo "rootfs: debootstrap failed; the end of its log:" >&2
  tail -n 30 "$work/debootstrap.log" >&2
  tail -n 30 "$work/root/debootstrap/debootstrap.log" >&2 2>/dev/null || true
  exit 1
fi
# A template, not a machine: no apt lists or package cache, no machine id (systemd makes
# one at first boot), a hostname the container runtime replaces.
rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
: >"$work/root/etc/machine-id"
echo localhost >"$work/root/etc/hostname"
tar --numeric-owner --xattrs -C "$work/root" -cf - . | zstd -q -T0 -10 -o "$work/$NAME.tar.zst"
mv -f "$work/$NAME.tar.zst" "$CACHE/$NAME.tar.zst"
echo "$RECIPE" >"$CACHE/$NAME.stamp"
echo "rootfs: built $CACHE/$NAME.tar.zst ($(du -h "$CACHE/$NAME.tar.zst" | cut -f1)) in $(($(date +%s) - start)) s"
