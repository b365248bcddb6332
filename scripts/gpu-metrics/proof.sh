#!/usr/bin/env bash
# Proof on a real GPU host (docs/metrics.md): a CUDA program (cudaalloc.c) holds a known
# amount of GPU memory from inside a cgroup named like an LXC container's
# (lxc.payload.<id>); the real host agent's /metrics must show that amount under that
# container's label. Everything it saw is kept under $OUT as the fixture that
# internal/gpumetrics TestReplayGPUHost replays through the real code.
#
# Prepare on the development machine (a folder git ignores, carried to the GPU host):
#   make build && mkdir -p .gpuhost/gm && cp bin/gpupass bin/gpupass-host-agent .gpuhost/gm/
#   gcc -O2 -o .gpuhost/gm/cudaalloc scripts/gpu-metrics/cudaalloc.c -ldl
# Run there as root: OUT=/some/dir bash scripts/gpu-metrics/proof.sh
set -u
OUT=${OUT:-/tmp/gpupass-gpu-proof}
B=${B:-.gpuhost/gm}
ID=${ID:-9901}
BYTES=${BYTES:-1073741824}
W=$(mktemp -d)
mkdir -p "$OUT"
export PATH=/usr/local/nvidia/bin:$PATH
log() { echo "$*" | tee -a "$OUT/log.txt"; }
sync_out() { sync; }
cleanup() {
	[ -n "${AGENT:-}" ] && kill "$AGENT" 2>/dev/null
	[ -n "${CUDA:-}" ] && kill "$CUDA" 2>/dev/null
	sleep 1
	rmdir "/sys/fs/cgroup/lxc.payload.$ID" 2>/dev/null
	rm -rf "$W"
}
trap cleanup EXIT

log "== host"; uname -r >>"$OUT/log.txt"; nvidia-smi -L >>"$OUT/log.txt" 2>&1
cat /proc/driver/nvidia/version >"$OUT/driver-version.txt" 2>&1
CG=/sys/fs/cgroup/lxc.payload.$ID
mkdir -p "$CG" || { log "cannot make $CG"; exit 1; }
log "== cudaalloc $BYTES bytes in $CG"
sh -c "echo \$\$ > $CG/cgroup.procs && exec $B/cudaalloc $BYTES 300" >"$OUT/cudaalloc.txt" 2>&1 &
CUDA=$!
for _ in $(seq 1 60); do grep -q allocated "$OUT/cudaalloc.txt" && break; sleep 0.5; done
cat "$OUT/cudaalloc.txt" | tee -a "$OUT/log.txt"
grep -q allocated "$OUT/cudaalloc.txt" || exit 1
cat "/proc/$CUDA/cgroup" >"$OUT/proc-cgroup.txt"
echo "$CUDA" >"$OUT/pid.txt"
log "cgroup of pid $CUDA: $(cat "$OUT/proc-cgroup.txt")"
sync_out

log "== host agent"
"$B/gpupass" pki init --dir "$W/pki" >/dev/null && "$B/gpupass" pki issue --dir "$W/pki" --name host --ip 127.0.0.1 >/dev/null
cat >"$W/host-agent.yaml" <<CFG
version: 1
listen: "127.0.0.1:17420"
runtime: lxc
tls: {ca: $W/pki/ca.crt, cert: $W/pki/host.crt, key: $W/pki/host.key}
state_dir: $W/state
guest_socket_dir: $W/guests
lxc_path: $W/lxc
metrics_listen: "127.0.0.1:19742"
CFG
"$B/gpupass-host-agent" --config "$W/host-agent.yaml" >"$OUT/agent.log" 2>&1 &
AGENT=$!
fetch() {
	if command -v curl >/dev/null; then curl -fsS http://127.0.0.1:19742/metrics
	else python3 -c 'import urllib.request,sys; sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:19742/metrics").read().decode())'; fi
}
for _ in $(seq 1 40); do fetch >"$OUT/metrics.txt" 2>/dev/null && break; sleep 0.5; done
sleep 2
fetch >"$OUT/metrics.txt"
"$B/gpupass-host-agent" gpu-snapshot >"$OUT/nvml-snapshot.txt" 2>&1; chmod 644 "$OUT"/*
nvidia-smi --query-compute-apps=pid,used_memory,gpu_uuid --format=csv >"$OUT/smi-apps.csv" 2>&1
grep '^gpupass_\(container_gpu\|nvml\|host_driver\|gpu_persistence\|gpu_xid\)' "$OUT/metrics.txt" | tee -a "$OUT/log.txt"
grep "container=\"$ID\"" "$OUT/metrics.txt" | grep -q gpupass_container_gpu_memory_used_bytes && log "PROOF: container $ID shows GPU memory" || log "PROOF FAILED: no memory series for container $ID"
sync_out
