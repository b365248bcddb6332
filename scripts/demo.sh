#!/usr/bin/env bash
# The README's main command: a local gpupass demo on a SIMULATED GPU host.
#
#   bash scripts/demo.sh          install what is needed, build, then: a simulated GPU host,
#                                 PKI, one host agent (lxc runtime, 127.0.0.1), one busybox
#                                 container with the guest agent baked in, and
#                                 gpupass plan / apply / status, with a transcript
#   bash scripts/demo.sh clean    remove what the demo made: the container, the host agent,
#                                 everything under $GPUPASS_DEMO_DIR; it leaves bin/ (the build,
#                                 make clean), the Debian packages deps.sh installed and Go's
#                                 caches, and says so
#
# Run it as root on Debian 12 with Go 1.26 at /usr/local/go. It is idempotent: a second run
# reuses the host agent and the container, and plan then has nothing to change and apply
# restarts nothing. There is no NVIDIA GPU here: the host's "GPUs" are stand-in char
# devices (see internal/gpu/sim_linux.go), and everything that shows it says SIMULATED.
# Everything lives under $GPUPASS_DEMO_DIR (default /var/lib/gpupass-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export PATH=/usr/local/go/bin:${HOME:-/root}/go/bin:/usr/sbin:/sbin:$PATH
export LC_ALL=C

DEMO=${GPUPASS_DEMO_DIR:-/var/lib/gpupass-demo}
DEMO_PKGS="lxc busybox-static make git ca-certificates" # scripts/deps.sh demo
PORT=${GPUPASS_DEMO_PORT:-7420}
CT=gpupass-demo
HOSTNAME_=demo-host
LXCPATH=$DEMO/lxc
HOSTROOT=$DEMO/simulated-host
PKI=$DEMO/pki
CFG=$DEMO/host-agent.yaml
FLEET=$DEMO/fleet.yaml
AGENT_LOG=$DEMO/host-agent.log
AGENT_PID=$DEMO/host-agent.pid
TRANSCRIPT=$DEMO/transcript.txt
BIN=$REPO/bin
# The controller's TLS session tickets live with the demo, so that clean removes them.
export GPUPASS_TLS_SESSION_CACHE=$DEMO/tls-sessions.json

die() { echo "demo: $*" >&2; exit 1; }

agent_pid() {
  # The pid of our host agent, if it runs.
  local pid
  [ -f "$AGENT_PID" ] || return 1
  pid=$(cat "$AGENT_PID" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "gpupass-host-agent --config $CFG" || return 1
  echo "$pid"
}

ct_state() { lxc-info -P "$LXCPATH" -n "$CT" -s -H 2>/dev/null || echo ABSENT; }

clean() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  echo "demo: cleaning up everything under $DEMO"
  if [ -d "$LXCPATH/$CT" ] && command -v lxc-stop >/dev/null 2>&1; then
    if [ "$(ct_state)" = RUNNING ]; then
      echo "demo: stopping container $CT"
      lxc-stop -P "$LXCPATH" -n "$CT" -k </dev/null || true
      lxc-wait -P "$LXCPATH" -n "$CT" -s STOPPED -t 10 </dev/null || true
    fi
  fi
  if pid=$(agent_pid); then
    echo "demo: stopping host agent (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$DEMO"
  # LXC's lock directory for the container path (lxc-start makes it).
  case $DEMO in /?*) rm -rf "/run/lxc/lock$DEMO" ;; esac
  echo "demo: clean: removed $DEMO (container, host agent state, PKI, TLS tickets, transcript)"
  echo "      and LXC's lock directory /run/lxc/lock$DEMO"
  echo "demo: left in place:"
  echo "  $BIN: the build (make clean removes it; make uninstall what make install copied)"
  echo "  the Debian packages scripts/deps.sh demo installed: $DEMO_PKGS"
  echo "  Go's build and module caches (go clean -cache -modcache)"
}

if [ "${1:-}" = clean ]; then
  clean
  exit 0
fi
[ $# -eq 0 ] || die "usage: bash scripts/demo.sh [clean]"
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages, makes device nodes and containers)"

mkdir -p "$DEMO"
[ -f "$TRANSCRIPT" ] && mv -f "$TRANSCRIPT" "$DEMO/transcript.previous.txt"
# Everything from here on also goes to the transcript.
exec > >(tee -a "$TRANSCRIPT") 2>&1
tee_pid=$!
# Let tee write out the last lines before the script's exit status reaches the caller.
trap 'exec >&- 2>&-; wait "$tee_pid" 2>/dev/null || true' EXIT

step=0
header() {
  step=$((step + 1))
  echo
  echo "================================================================================"
  echo "== $step. $1"
  echo "================================================================================"
  shift
  for line in "$@"; do echo "   $line"; done
  echo
}
show() { echo "\$ $*"; }

header "Install what the demo needs, and build" \
  "scripts/deps.sh demo installs only what the demo needs ($DEMO_PKGS; idempotent);" \
  "make build builds bin/gpupass, bin/gpupass-host-agent and the static bin/gpupass-guest-agent."
show "scripts/deps.sh demo && make build"
./scripts/deps.sh demo </dev/null
make --no-print-directory build </dev/null
go build -o "$DEMO/simhost" ./test/simhost </dev/null

header "A SIMULATED GPU host under $HOSTROOT" \
  "This machine has no NVIDIA GPU. The demo host has 2 SIMULATED GPUs: /proc/devices and" \
  "/proc/driver/nvidia fixtures name stand-in char devices (whose drivers exist here) as" \
  "the NVIDIA ones, so the device cgroup really allows or denies them and a container can" \
  "really open them. The host agent labels this host simulated wherever it shows."
if [ -e "$HOSTROOT/proc/driver/nvidia/SIMULATED" ]; then
  echo "(already there from an earlier run)"
fi
show "simhost --root $HOSTROOT --gpus 2"
"$DEMO/simhost" --root "$HOSTROOT" --gpus 2
echo
show "cat $HOSTROOT/proc/driver/nvidia/gpus/*/information | grep -E 'Model|Minor'"
grep -hE 'Model|Minor' "$HOSTROOT"/proc/driver/nvidia/gpus/*/information

header "Fleet PKI: a CA, a certificate for the host agent, one for the controller" \
  "The host agent accepts only TLS 1.3 clients whose certificate chains to the fleet CA."
if [ -f "$PKI/ca.crt" ]; then
  echo "(already there from an earlier run)"
else
  show "gpupass pki init --dir $PKI"
  "$BIN/gpupass" pki init --dir "$PKI"
  show "gpupass pki issue --dir $PKI --role host --name $HOSTNAME_ --ip 127.0.0.1"
  "$BIN/gpupass" pki issue --dir "$PKI" --role host --name "$HOSTNAME_" --ip 127.0.0.1
  show "gpupass pki issue --dir $PKI --role controller --name controller"
  "$BIN/gpupass" pki issue --dir "$PKI" --role controller --name controller
fi

header "The host agent (runtime lxc) on 127.0.0.1:$PORT" \
  "On Proxmox it runs under systemd; here it runs in the background, logging to" \
  "$AGENT_LOG. LXC enforces lxc.cgroup2.devices rules only on a pure cgroup2" \
  "hierarchy (as on Proxmox): on this hybrid host the agent, and every lxc-start it runs," \
  "live in a private mount namespace with cgroup2 mounted on /sys/fs/cgroup."
cat >"$CFG" <<EOF
version: 1
listen: "127.0.0.1:$PORT"
runtime: lxc
tls: {ca: $PKI/ca.crt, cert: $PKI/$HOSTNAME_.crt, key: $PKI/$HOSTNAME_.key}
state_dir: $DEMO/state
guest_socket_dir: $DEMO/guests
host_root: $HOSTROOT
lxc_path: $LXCPATH
heartbeat: 10s
guest_stale_after: 35s
simulated: true
EOF
mkdir -p "$LXCPATH"
show "cat $CFG"
cat "$CFG"
echo
if pid=$(agent_pid); then
  echo "(the host agent from an earlier run is still running: pid $pid)"
else
  mount_cg='true'
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
    mount_cg='mount -t cgroup2 none /sys/fs/cgroup'
  fi
  show "unshare -m sh -c '$mount_cg && exec gpupass-host-agent --config $CFG' &"
  : >"$AGENT_PID"
  # $$ of the inner sh is the agent's pid after exec.
  setsid -f unshare -m --propagation private sh -c \
    'echo $$ >"$2"; '"$mount_cg"' && exec "$0" --config "$1"' \
    "$BIN/gpupass-host-agent" "$CFG" "$AGENT_PID" </dev/null >>"$AGENT_LOG" 2>&1
  for _ in $(seq 100); do
    grep -q '"host agent ready"' "$AGENT_LOG" 2>/dev/null && break
    sleep 0.1
  done
  pid=$(agent_pid) || { tail -20 "$AGENT_LOG"; die "the host agent did not start (log: $AGENT_LOG)"; }
  grep -q '"host agent ready"' "$AGENT_LOG" || { tail -20 "$AGENT_LOG"; die "the host agent did not get ready (log: $AGENT_LOG)"; }
  echo "host agent running: pid $pid, log $AGENT_LOG"
fi

header "A busybox container, $CT, with the guest agent baked in" \
  "Its own init (/etc/gpupass-init.sh) starts gpupass-guest-agent, which dials the host" \
  "agent over /dev/gpupass/agent.sock and pushes readiness reports; nobody execs into it." \
  "Its device cgroup list is its own (deny all, allow the basics): no GPU lines yet."
if [ -f "$LXCPATH/$CT/config" ]; then
  echo "(already there from an earlier run: $(ct_state))"
else
  rootfs=$LXCPATH/$CT/rootfs
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,dev,proc,sys,etc,run,root,var/log,mnt,tmp}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\n' >"$rootfs/etc/group"
  cp "$BIN/gpupass-guest-agent" "$rootfs/usr/local/bin/gpupass-guest-agent"
  cat >"$rootfs/etc/gpupass-init.sh" <<'EOF'
#!/bin/sh
# Container init: start the gpupass guest agent, then idle as PID 1.
/usr/local/bin/gpupass-guest-agent >>/var/log/gpupass-guest-agent.log 2>&1 &
exec /bin/sleep 2147483647
EOF
  cat >"$LXCPATH/$CT/config" <<EOF
# gpupass demo container (busybox); gpupass adds and owns the GPU lines below
lxc.uts.name = $CT
lxc.rootfs.path = dir:$rootfs
lxc.net.0.type = empty
lxc.init.cmd = /bin/sh /etc/gpupass-init.sh
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.signal.halt = SIGKILL
lxc.tty.max = 0
lxc.pty.max = 16
lxc.cgroup2.devices.deny = a
lxc.cgroup2.devices.allow = c 1:3 rwm
lxc.cgroup2.devices.allow = c 1:5 rwm
lxc.cgroup2.devices.allow = c 1:7 rwm
lxc.cgroup2.devices.allow = c 1:8 rwm
lxc.cgroup2.devices.allow = c 1:9 rwm
lxc.cgroup2.devices.allow = c 5:* rwm
lxc.cgroup2.devices.allow = c 136:* rwm
# The simulated host's driver files, where a real host's procfs has them (not a GPU line)
lxc.mount.entry = $HOSTROOT/proc/driver proc/driver none ro,bind 0 0
EOF
  echo "created $LXCPATH/$CT (stopped); its config:"
  cat "$LXCPATH/$CT/config"
fi

header "fleet.yaml: container $CT on host $HOSTNAME_ gets GPU 1, and should run" \
  "GPU 1 on purpose: the bash scripts this replaces only ever waited for /dev/nvidia0."
cat >"$FLEET" <<EOF
version: 1
tls: {ca: $PKI/ca.crt, cert: $PKI/controller.crt, key: $PKI/controller.key}
hosts:
  - {name: $HOSTNAME_, address: "127.0.0.1:$PORT"}
containers:
  - {host: $HOSTNAME_, id: "$CT", gpus: ["1"], style: raw, state: running}
EOF
show "cat $FLEET"
cat "$FLEET"

header "gpupass plan: what would change, and would the container restart? (changes nothing)" \
  "Exit 0: nothing to change; 2: changes pending. Expect the warning \"userspace driver not" \
  "installed\" on every container here: a simulated host has no NVIDIA libraries to give it."
show "gpupass plan -f $FLEET"
code=0
"$BIN/gpupass" plan -f "$FLEET" </dev/null || code=$?
echo "(exit $code)"

header "gpupass apply: write the config, (re)start only if needed, wait for the guest's push" \
  "The host agent journals, locks, writes atomically, starts the container, and waits" \
  "for the guest agent's readiness report (no exec into the container, no polling)."
show "gpupass apply -f $FLEET --timeout 60s"
code=0
"$BIN/gpupass" apply -f "$FLEET" --timeout 60s </dev/null || code=$?
echo "(exit $code)"
[ "$code" -eq 0 ] || { echo; echo "host agent log (end):"; tail -20 "$AGENT_LOG"; die "apply did not make the container ready (exit $code)"; }

header "gpupass status: which GPU containers are ready, and if not, why" \
  "Answered from what the guests already pushed: one round trip per host."
show "gpupass status -f $FLEET"
code=0
"$BIN/gpupass" status -f "$FLEET" </dev/null || code=$?
echo "(exit $code)"
status_code=$code

header "gpupass doctor: the same container explained (host, config, guest), with what to do" \
  "Its exit code agrees with status: 0 when ready with nothing to change (warnings only)."
show "gpupass doctor -f $FLEET $HOSTNAME_/$CT"
code=0
"$BIN/gpupass" doctor -f "$FLEET" "$HOSTNAME_/$CT" </dev/null || code=$?
echo "(exit $code)"
code=$status_code

header "What the container really has (looked at from the host, without exec)"
if pid=$(lxc-info -P "$LXCPATH" -n "$CT" -p -H 2>/dev/null) && [ -n "$pid" ]; then
  show "ls -l /proc/$pid/root/dev/nvidia*"
  ls -l /proc/"$pid"/root/dev/nvidia* || true
fi
show "grep -E '^lxc[.](cgroup2[.]devices[.]allow|mount[.]entry)' $LXCPATH/$CT/config"
grep -E '^lxc[.](cgroup2[.]devices[.]allow|mount[.]entry)' "$LXCPATH/$CT/config" || true

echo
echo "================================================================================"
if [ "$code" -eq 0 ]; then
  echo "demo: container $CT is READY with SIMULATED GPU 1 (exit 0)."
else
  echo "demo: container $CT is not ready (status exit $code)."
fi
echo "  run it again:        bash scripts/demo.sh   (idempotent: nothing to change, no restart)"
echo "  the binaries:        $BIN (export PATH=$BIN:\$PATH, or make install: /usr/local/bin)"
echo "  look inside:         lxc-attach -P $LXCPATH -n $CT -- ls -l /dev"
echo "  remove it:           bash scripts/demo.sh clean   (or make demo-clean; it says what stays)"
echo "  transcript:          $TRANSCRIPT"
echo "================================================================================"
exit "$code"
