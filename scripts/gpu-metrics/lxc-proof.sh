#!/bin/bash
# Proof on a real GPU host (docs/metrics.md, issue 18): a REAL LXC container (busybox, no
# NVIDIA files in its template, `driver: host` through our lxc.hook.mount as in
# scripts/driver-host/proof.sh) runs cudaalloc (a known amount of GPU memory through the
# CUDA driver API, then sleeps); the real gpupass-host-agent on the host must show that
# amount under gpupass_container_gpu_memory_used_bytes{container="<name>"}. What it saw
# lands under $OUT (8 files) as the fixture internal/gpumetrics TestReplayGPUHostLXC replays.
#
# Prepare on the development machine, in the repo root (a folder git ignores, carried):
#   mkdir -p .gpuhost/h14/bin .gpuhost/h14/deps && cd .gpuhost/h14
#   apt-get download lxc liblxc1 liblxc-common busybox-static
#   (cd deps && apt-get download libapparmor1 libseccomp2 libcap2 libselinux1 libpcre2-8-0)
#   cd ../.. && go build -o .gpuhost/h14/bin/ ./agent-host ./controller   # cgo: go-nvml dlopens
#   mv .gpuhost/h14/bin/controller .gpuhost/h14/bin/gpupass
#   mv .gpuhost/h14/bin/agent-host .gpuhost/h14/bin/gpupass-host-agent
#   gcc -O2 -o .gpuhost/h14/bin/cudaalloc scripts/gpu-metrics/cudaalloc.c -ldl
#   cp scripts/gpu-metrics/lxc-proof.sh .gpuhost/h14/
# Run there as root: bash .gpuhost/h14/lxc-proof.sh
set -u
OUT=${OUT:-/tmp/gpupass-gpu-lxc-proof}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
P=${P:-$(cd "$(dirname "$0")" && pwd)}
B=$P/bin
NAME=${NAME:-901}
BYTES=${BYTES:-1073741824}
S=/var/lib/gpupass-gpumetrics
W=$(mktemp -d)
note() { echo "### $*"; sync; }
cleanup() {
	[ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
	timeout 20 lxc-stop -n "$NAME" -P $S/lxc -k 2>/dev/null
	rm -rf "$W"
	sync
}
trap cleanup EXIT

note "unpack LXC"
cd "$P" || exit 3
for f in liblxc1*.deb liblxc-common*.deb lxc_*.deb; do dpkg -x "$f" /; done
mkdir -p /opt/bb /opt/lxdeps; dpkg -x busybox-static*.deb /opt/bb; for f in deps/*.deb; do dpkg -x "$f" /opt/lxdeps; done
export LD_LIBRARY_PATH=/opt/lxdeps/lib/x86_64-linux-gnu:/opt/lxdeps/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
export PATH=/usr/local/nvidia/bin:$PATH
lxc-start --version
chmod 0755 "$B"/*; chmod o+x "$P" "$B"

note "host"
uname -r; nvidia-smi -L
cat /proc/driver/nvidia/version > "$OUT/driver-version.txt"
echo "own cgroup: $(cat /proc/self/cgroup)"

note "container $NAME: busybox, no NVIDIA files; conf apply --driver host"
rm -rf $S; R=$S/lxc/$NAME/rootfs
mkdir -p $R/{bin,dev,proc,sys,tmp,etc,run,usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin}
ln -sfn usr/lib $R/lib; ln -sfn usr/lib64 $R/lib64
cp /opt/bb/bin/busybox $R/bin/; for a in sh ls cat sleep wc; do ln -sf busybox $R/bin/$a; done
cp "$B/cudaalloc" $R/usr/local/bin/
cat > $S/lxc/$NAME/config <<EOT
lxc.uts.name = $NAME
lxc.rootfs.path = dir:$R
lxc.net.0.type = empty
lxc.init.cmd = /bin/sleep 1000000
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.signal.halt = SIGKILL
lxc.cgroup2.devices.deny = a
lxc.cgroup2.devices.allow = c 1:3 rwm
lxc.cgroup2.devices.allow = c 1:5 rwm
lxc.cgroup2.devices.allow = c 1:9 rwm
lxc.mount.entry = /usr/lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu none ro,bind 0 0
lxc.mount.entry = /usr/lib64 usr/lib64 none ro,bind,optional 0 0
EOT
echo "NVIDIA files in the template: $(find $R | grep -ci nvidia)"
"$B/gpupass-host-agent" conf apply --conf $S/lxc/$NAME/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply rc=$?"
cp $S/lxc/$NAME/config "$OUT/ct.config"
timeout 60 lxc-start -n "$NAME" -P $S/lxc -l INFO -o $S/lxc.log; echo "lxc-start rc=$?"
grep -i 'gpupass' $S/lxc.log | tail -2
att() { timeout 30 lxc-attach -n "$NAME" -P $S/lxc --clear-env -v PATH=/usr/local/bin:/bin -- "$@"; }
echo "driver files bound in: $(att ls /usr/lib/gpupass-driver/lib | wc -l) libraries, source $(att cat /usr/lib/gpupass-driver/source)"

note "cudaalloc $BYTES bytes inside container $NAME"
lxc-attach -n "$NAME" -P $S/lxc --clear-env -v PATH=/usr/local/bin:/bin -- cudaalloc "$BYTES" 240 > "$OUT/cudaalloc.txt" 2>&1 &
for _ in $(seq 1 60); do grep -q allocated "$OUT/cudaalloc.txt" && break; sleep 0.5; done
cat "$OUT/cudaalloc.txt"
grep -q allocated "$OUT/cudaalloc.txt" || { echo "PROOF FAILED: cudaalloc did not allocate"; exit 1; }
PID=
for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = cudaalloc ] && PID=${d#/proc/}; done
echo "$PID" > "$OUT/pid.txt"
cat /proc/$PID/cgroup > "$OUT/proc-cgroup.txt"
echo "host pid $PID, $(grep NSpid /proc/$PID/status), cgroup $(cat "$OUT/proc-cgroup.txt")"
echo "its libcuda: $(grep -m1 libcuda /proc/$PID/maps | awk '{print $6}')"
note "allocated"

note "host agent"
"$B/gpupass" pki init --dir "$W/pki" >/dev/null && "$B/gpupass" pki issue --dir "$W/pki" --name host --ip 127.0.0.1 >/dev/null
cat > "$W/host-agent.yaml" <<CFG
version: 1
listen: "127.0.0.1:17420"
runtime: lxc
tls: {ca: $W/pki/ca.crt, cert: $W/pki/host.crt, key: $W/pki/host.key}
state_dir: $W/state
guest_socket_dir: $W/guests
lxc_path: $W/lxc
metrics_listen: "127.0.0.1:19742"
CFG
"$B/gpupass-host-agent" --config "$W/host-agent.yaml" > "$W/agent.log" 2>&1 &
AGENT=$!
fetch() {
	if command -v curl >/dev/null; then curl -fsS http://127.0.0.1:19742/metrics
	else python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:19742/metrics").read().decode())'; fi
}
for _ in $(seq 1 40); do fetch > "$OUT/metrics.txt" 2>/dev/null && break; sleep 0.5; done
sleep 2
fetch > "$OUT/metrics.txt"
"$B/gpupass-host-agent" gpu-snapshot > "$OUT/nvml-snapshot.txt" 2>&1
nvidia-smi --query-compute-apps=pid,used_memory,gpu_uuid --format=csv
chmod 644 "$OUT"/*
grep '^gpupass_\(container_gpu\|nvml\|host_driver\|gpu_persistence\)' "$OUT/metrics.txt"
note "agent log"; head -20 "$W/agent.log"
if grep "container=\"$NAME\"" "$OUT/metrics.txt" | grep -q '^gpupass_container_gpu_memory_used_bytes'; then
	echo "PROOF: container $NAME shows GPU memory"
else
	echo "PROOF FAILED: no memory series for container $NAME"
fi
note done
