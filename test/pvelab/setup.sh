#!/usr/bin/env bash
# gpupass PVE lab: the REAL Proxmox VE container tooling (pct, PVE's Perl libraries, PVE's LXC
# hooks, pmxcfs built from source and run in local mode) on a plain Debian 12 machine, offline
# but for Debian's mirror. docs/e2e.md ("The PVE lab") says what it is and where it differs
# from a real PVE 9 node; internal/pvelab is its Go side.
#
# Idempotent and quiet: every step checks before acting and prints one timed line; the slow
# builds (pmxcfs, PVE::IPCC) are cached under /var/cache/gpupass/pvelab/<hash of the Proxmox
# tarballs and our patches>, so a second run on the same machine takes seconds.
# Needs root. Knobs: GPUPASS_PVE_SRC (the tarball directory, default ../shared/pve/src beside
# the checkout), GPUPASS_PVELAB_CACHE, PVELAB_VERBOSE=1 (show every command's output).
# Undo with test/pvelab/teardown.sh.
set -euo pipefail
# Never fail silently: name the line and the command.
trap 'echo "pvelab: setup.sh failed at line $LINENO: $BASH_COMMAND (log: /run/gpupass-pvelab/setup.log)" >&2' ERR
# shellcheck source=test/pvelab/lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || { echo "pvelab: setup.sh needs root" >&2; exit 1; }
mkdir -p "$PVELAB_RUN" "$PVELAB_CACHE"
: >"$PVELAB_LOG"
export DEBIAN_FRONTEND=noninteractive
for r in $PVELAB_REPOS; do
	[ -f "$PVELAB_SRC/$r.tar.gz" ] || { echo "pvelab: missing $PVELAB_SRC/$r.tar.gz (set GPUPASS_PVE_SRC)" >&2; exit 1; }
done

# ------------------------------------------------------------------ Debian packages
# Build tools and libraries for pmxcfs and PVE::IPCC, Debian's lxc, busybox for the
# templates, and the Perl libraries the PVE repositories' debian/control files depend on.
PKGS="build-essential pkg-config iproute2 procps patch fuse libfuse-dev libqb-dev
 libcorosync-common-dev libcpg-dev libcmap-dev libquorum-dev libglib2.0-dev libsqlite3-dev
 librrd-dev libperl-dev lxc busybox-static file xz-utils zstd
 libanyevent-perl libclone-perl libcrypt-openssl-random-perl libcrypt-openssl-rsa-perl
 libdevel-cycle-perl libfilesys-df-perl libhttp-daemon-perl libhttp-message-perl
 libio-stringy-perl libjson-perl libjson-xs-perl liblinux-inotify2-perl libmime-base32-perl
 libnet-dbus-perl libnet-ip-perl libnet-ldap-perl libnet-ssleay-perl libnetaddr-ip-perl
 libstring-shellquote-perl libtimedate-perl liburi-perl libwww-perl libyaml-libyaml-perl
 libcrypt-ssleay-perl librrds-perl libfile-chdir-perl libposix-strptime-perl libxml-libxml-perl
 libauthen-pam-perl libuuid-perl libdigest-hmac-perl libio-socket-ssl-perl"
# shellcheck disable=SC2086
# dpkg-query exits 1 when any of them is not installed at all (a new machine): that is the
# answer, not an error (pipefail would end the script here, silently).
installed=" $( (dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' $PKGS 2>/dev/null || true) | awk '$1 == "ii" {printf "%s ", $2}')"
missing=""
for p in $PKGS; do
	case "$installed" in *" $p "*) ;; *) missing="$missing $p" ;; esac
done
if [ -n "$missing" ]; then
	step "apt-get install$missing"
	quiet apt-get update -q </dev/null
	# shellcheck disable=SC2086
	quiet apt-get install -y -q $missing </dev/null
else
	step "Debian packages present"
fi

# ------------------------------------------------------------------ sources and builds (cached)
hash=$( (cd "$PVELAB_SRC" && for r in $PVELAB_REPOS; do sha256sum "$r.tar.gz"; done
	cd "$PVELAB_HERE" && sha256sum glib-compat.h patches/*.patch) | sha256sum | cut -c1-16)
CACHE=$PVELAB_CACHE/$hash
SRC=$CACHE/src
if [ ! -f "$CACHE/sources.done" ]; then
	step "extracting Proxmox sources into $SRC"
	rm -rf "$SRC"
	for r in $PVELAB_REPOS; do
		mkdir -p "$SRC/$r"
		tar -xzf "$PVELAB_SRC/$r.tar.gz" -C "$SRC/$r"
	done
	for p in "$PVELAB_HERE"/patches/*.patch; do
		# patches/<repo>-<what>.patch applies to <repo>/src.
		r=$(basename "$p" | sed -E 's/^(pve-[a-z]+)-.*/\1/')
		quiet patch -d "$SRC/$r/src" -p1 --forward -i "$p"
	done
	touch "$CACHE/sources.done"
fi
PMX=$SRC/pve-cluster/src/pmxcfs
CL=$SRC/pve-cluster/src/PVE
if [ ! -f "$CACHE/build.done" ]; then
	step "building pmxcfs and PVE::IPCC (cached in $CACHE)"
	cflags=""
	pkg-config --atleast-version=2.76 glib-2.0 || cflags="-include $PVELAB_HERE/glib-compat.h"
	CFLAGS="$cflags" quiet make -C "$PMX" -j2 pmxcfs
	quiet make -C "$CL" IPCC.so
	quiet make -C "$CL/Cluster" IPCConst.pm
	touch "$CACHE/build.done"
else
	step "pmxcfs and PVE::IPCC cached ($CACHE)"
fi

# ------------------------------------------------------------------ install
# What gets installed depends on the sources, our patches, stubs and shims: a stamp with their
# hash skips the copying when nothing changed.
ihash=$( (echo "$hash"; cd "$PVELAB_HERE" && find stubs shims -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
STAMP=/usr/share/perl5/PVE/.gpupass-pvelab
if [ "$(cat "$STAMP" 2>/dev/null)" != "$ihash" ]; then
	step "installing pmxcfs, PVE Perl modules, stubs, pct and PVE's LXC hooks"
	install -m755 "$PMX/pmxcfs" /usr/bin/pmxcfs
	for r in $PVELAB_REPOS; do
		(cd "$SRC/$r/src" && find PVE -name '*.pm' -not -path '*/test/*' -not -path '*/Sim/*' -print0 |
			xargs -0 cp --parents -t /usr/share/perl5/)
	done
	install -D -m644 "$CL/IPCC.so" "$(perl -MConfig -e 'print $Config{vendorarch}')/auto/PVE/IPCC/IPCC.so"
	(cd "$PVELAB_HERE/stubs" && find . -name '*.pm' -print0 | xargs -0 cp --parents -t /usr/share/perl5/)
	C=$SRC/pve-container/src
	install -m755 "$C/pct" /usr/sbin/pct
	install -d /usr/share/lxc/hooks/pve-real
	for h in prestart autodev poststop; do
		install -m755 "$C/lxc-pve-$h-hook" /usr/share/lxc/hooks/pve-real/
		install -m755 "$PVELAB_HERE/shims/lxc-pve-hook-guard" "/usr/share/lxc/hooks/lxc-pve-$h-hook"
	done
	install -m755 "$C/pve-container-stop-wrapper" "$C/lxcnetaddbr" /usr/share/lxc/
	(cat /usr/share/lxc/config/common.seccomp; echo 'keyctl errno 38') >/usr/share/lxc/config/pve-userns.seccomp
	echo "$ihash" >"$STAMP"
else
	step "PVE modules, pct and hooks installed"
fi
# Removed by teardown.sh, so installed on every run: PVE's snippets that hook every container
# including common.conf (the hooks are guarded, see shims/lxc-pve-hook-guard), and the shims.
C=$SRC/pve-container/src
install -D -m644 "$C/lxc-pve.conf" /usr/share/lxc/config/common.conf.d/01-pve.conf
install -D -m644 "$C/lxc-pve-userns.conf" /usr/share/lxc/config/userns.conf.d/01-pve.conf
install -m755 "$PVELAB_HERE/shims/systemctl" /usr/sbin/systemctl
install -m755 "$PVELAB_HERE/shims/timedatectl" /usr/sbin/timedatectl
mkdir -p /run/pve /run/lxc /var/lib/lxc

# ------------------------------------------------------------------ daemons
if ! logger --socket-errors=on -u /dev/log -t gpupass-pvelab "setup" 2>/dev/null; then
	step "starting syslogd on /dev/log (PVE::SafeSyslog)"
	rm -f /dev/log
	setsid busybox syslogd -n -O /var/log/gpupass-pvelab.log </dev/null >/dev/null 2>&1 &
	echo $! >"$PVELAB_RUN/syslogd.pid"
	for _ in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done
fi
node=$(pvelab_node)
if ! getent ahosts "$node" | awk '{print $1}' | grep -qv -e '^127\.' -e '^::1$'; then
	ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1)
	[ -n "$ip" ] || { echo "pvelab: no global IPv4 address for node $node (pmxcfs needs one)" >&2; exit 1; }
	echo "$ip $node $PVELAB_HOSTS_MARK" >>/etc/hosts
	step "added '$ip $node' to /etc/hosts"
fi
unmount_dead_etc_pve
if ! mountpoint -q /etc/pve && pmxcfs_pid >/dev/null; then
	# A pmxcfs without its mount (its /etc/pve unmounted by a teardown that did not know its
	# pid) holds pmxcfs's lock, and a new one would fail "unable to acquire pmxcfs lock".
	step "stopping a pmxcfs that lost its /etc/pve mount"
	stop_pmxcfs
fi
if ! mountpoint -q /etc/pve; then
	step "starting pmxcfs -l (local mode, FUSE on /etc/pve)"
	mkdir -p /etc/pve /var/lib/pve-cluster /run/pve-cluster
	quiet /usr/bin/pmxcfs -l
	for _ in $(seq 100); do mountpoint -q /etc/pve && break; sleep 0.1; done
	mountpoint -q /etc/pve || { echo "pvelab: pmxcfs did not mount /etc/pve" >&2; exit 1; }
	cp /run/pve-cluster.pid "$PVELAB_RUN/pmxcfs.pid"
fi
mkdir -p "/etc/pve/nodes/$node/lxc" "/etc/pve/nodes/$node/qemu-server" "/etc/pve/nodes/$node/priv" /etc/pve/priv
if [ ! -f /etc/pve/storage.cfg ]; then
	printf 'dir: local\n\tpath /var/lib/vz\n\tcontent rootdir,vztmpl,iso,backup,images\n' >/etc/pve/storage.cfg
fi
mkdir -p "$PVELAB_TEMPLATE_DIR" /var/lib/vz/images
if ! pid_alive "$PVELAB_RUN/lxc-monitord.pid"; then
	step "starting lxc-monitord for /var/lib/lxc (pct start waits for RUNNING through it)"
	setsid /usr/libexec/lxc/lxc-monitord --daemon /var/lib/lxc </dev/null >/dev/null 2>&1 &
	echo $! >"$PVELAB_RUN/lxc-monitord.pid"
fi

# ------------------------------------------------------------------ the busybox template
# internal/pvelab builds templates with extra files (the guest agent) the same way
# (template_linux.go, keep them alike); this one is the plain one. Rebuilt when busybox changes.
TPL=$PVELAB_TEMPLATE_DIR/gpupass-busybox.tar.gz
bbsum=v2-$(sha256sum /bin/busybox | cut -c1-16)
if [ "$(cat "$TPL.src" 2>/dev/null)" != "$bbsum" ] || [ ! -f "$TPL" ]; then
	step "building the busybox template $TPL"
	R=$(mktemp -d)
	mkdir -p "$R"/{bin,sbin,etc,dev,proc,sys,tmp,root,run,var/log,usr/bin,usr/sbin}
	cp /bin/busybox "$R/bin/busybox"
	for a in $("$R/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf /bin/busybox "$R/bin/$a"; done
	ln -sf /bin/busybox "$R/sbin/init"
	printf '::sysinit:/etc/rc\n::respawn:/bin/sleep 100000\n::ctrlaltdel:/bin/reboot\n::shutdown:/bin/sync\n::restart:/sbin/init\n' >"$R/etc/inittab"
	printf '#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\nhostname > /run/ct-up\n' >"$R/etc/rc"
	chmod 755 "$R/etc/rc"
	echo 'root:x:0:0:root:/root:/bin/sh' >"$R/etc/passwd"
	echo 'root:x:0:' >"$R/etc/group"
	# PVE's "debian" ostype: pct writes /etc/hostname and /etc/hosts at create and start. With
	# ostype "unmanaged", PVE cannot start a container with any devN entry (see docs/e2e.md).
	echo 12.0 >"$R/etc/debian_version"
	tar --numeric-owner -czf "$TPL.tmp" -C "$R" .
	mv "$TPL.tmp" "$TPL"
	echo "$bbsum" >"$TPL.src"
	rm -rf "$R"
fi

# ------------------------------------------------------------------ sanity
# pct list asks each running container's status: where the tests run it, in a pure cgroup2
# namespace (in this hybrid namespace a lab container left running by a killed test answers
# "short read on command socket", PVE asking for the v1 memory cgroup).
quiet unshare -m sh -c 'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && pct list'
mode=$(unshare -m sh -c 'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup &&
	perl -MPVE::CGroup -e "print PVE::CGroup::cgroup_mode()"' 2>>"$PVELAB_LOG" || echo "?")
step "ready: pct works; PVE::CGroup::cgroup_mode() is $(perl -MPVE::CGroup -e 'print PVE::CGroup::cgroup_mode()') here, $mode in a pure cgroup2 namespace (where the tests run)"
