#!/bin/bash
# Proof of `driver: host` on a real NVIDIA GPU host (docs/driver.md): busybox LXC containers
# whose template has NO NVIDIA files get the host's userspace driver through our real code
# (`gpupass-host-agent conf apply --driver host` writes the lxc.hook.mount; the hook binds the
# files at start). Inside: nvidia-smi -L, a dynamically linked CUDA program (cudacheck.c:
# dlopen libcuda.so.1, cuInit, cuDeviceGetCount), and the guest agent's report (kernel =
# userspace, source host). Then a container with an OLD own libnvidia-ml: reported as
# mismatched, switched to driver: host, back matching. Then an UNPRIVILEGED container (root
# mapped to 100000, as Proxmox creates them by default) with driver: host: the same checks.
# Everything it saw lands under $OUT (7 files; the configs are in the fixture); the fixture
# internal/hostdriver TestReplayH200 replays.
#
# Prepare on the development machine, in the repo root (a folder git ignores, carried):
#   mkdir -p .gpuhost/driver/bin .gpuhost/driver/deps && cd .gpuhost/driver
#   apt-get download lxc liblxc1 liblxc-common busybox-static
#   (cd deps && apt-get download libapparmor1 libseccomp2 libcap2 libselinux1 libpcre2-8-0)
#   cd ../.. && CGO_ENABLED=0 go build -o .gpuhost/driver/bin/ ./agent-host ./agent-guest
#   gcc -O2 -o .gpuhost/driver/bin/cudacheck scripts/driver-host/cudacheck.c -ldl
# Run there as root: bash scripts/driver-host/proof.sh
set -u
OUT=${OUT:-/tmp/gpupass-driver-proof}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
P=${P:-$(cd "$(dirname "$0")/../.." && pwd)/.gpuhost/driver}
B=$P/bin
note() { echo "### $*"; sync; }
ts() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }

note "unpack LXC"
cd "$P" || { echo "no $P: carry .gpuhost/driver"; pwd; ls -a "$(dirname "$0")/../.."; exit 3; }
for f in liblxc1*.deb liblxc-common*.deb lxc_*.deb; do dpkg -x $f /; done
mkdir -p /opt/bb /opt/lxdeps; dpkg -x busybox-static*.deb /opt/bb; for f in deps/*.deb; do dpkg -x $f /opt/lxdeps; done
export LD_LIBRARY_PATH=/opt/lxdeps/lib/x86_64-linux-gnu:/opt/lxdeps/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
lxc-start --version
chmod 0755 "$B"/* ; chmod o+x "$P" "$B"

note "host"
uname -r; cat /proc/driver/nvidia/version; /usr/local/nvidia/bin/nvidia-smi -L
V=$(awk '/NVRM version/{for(i=1;i<=NF;i++) if ($i ~ /^[0-9]+\.[0-9]+\.[0-9]+$/) {print $i; exit}}' /proc/driver/nvidia/version)
t0=$(ts); "$B/gpupass-host-agent" driver show > "$OUT/driver-show.json"; echo "driver show rc=$? in $(ms $t0 $(ts)) ms"
grep -c '"Name"' "$OUT/driver-show.json"

# The fixture: what Find and the guest read, names and links only (no library bytes).
F=/tmp/fixture; rm -rf $F; mkdir -p $F/host/proc/driver/nvidia $F/host/etc
cp /proc/driver/nvidia/version $F/host/proc/driver/nvidia/version
cp /etc/ld.so.cache $F/host/etc/ld.so.cache
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/bin /usr/lib/x86_64-linux-gnu /usr/bin; do
  ls -la --time-style=+ "$d" | grep -E 'nvidia|libcuda|libnv' > "$F/host/ls$(echo $d | tr / _).txt"
done

S=/var/lib/gpupass-driver; rm -rf $S; mkdir -p $S/lxc
mkrootfs() { # name
  local R=$S/lxc/$1/rootfs
  # The host's glibc (nvidia-smi and cudacheck are dynamically linked) but the
  # container's own, writable /usr/lib: only its x86_64-linux-gnu is the host's.
  mkdir -p $R/{bin,dev,proc,sys,tmp,etc,run,usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin}
  ln -sfn usr/lib $R/lib; ln -sfn usr/lib64 $R/lib64
  cp /opt/bb/bin/busybox $R/bin/; for a in sh ls cat test sleep head mount grep touch wc echo; do ln -sf busybox $R/bin/$a; done
  cp $B/gpupass-guest-agent $B/cudacheck $R/usr/local/bin/
  cat > $S/lxc/$1/config <<EOT
lxc.uts.name = $1
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
}
expect() { # the guest's expectation: the assigned nodes, the loaded module
  local first=1
  printf '{"containerId":"%s","kernelDriverVersion":"%s","driverLoaded":true,"devices":[' "$1" "$V"
  for n in /dev/nvidia0 /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools; do
    [ -c $n ] || continue
    [ $first = 1 ] || printf ','; first=0
    printf '{"path":"%s","major":%d,"minor":%d}' $n $((16#$(stat -c %t $n))) $((16#$(stat -c %T $n)))
  done
  printf ']}\n'
}
att() { timeout 30 lxc-attach -n "$1" -P $S/lxc --clear-env -v PATH=/usr/local/bin:/bin -- "${@:2}"; }
start() { local t=$(ts); timeout 60 lxc-start -n "$1" -P $S/lxc -l DEBUG -o $S/$1-lxc.log; local rc=$?; echo "lxc-start $1 rc=$rc in $(ms $t $(ts)) ms"; grep -i 'gpupass' $S/$1-lxc.log | tail -3; : > $S/$1-lxc.log; }

note "g1: busybox, no NVIDIA files; conf apply --driver host"
mkrootfs g1
ls -R $S/lxc/g1/rootfs | grep -ci nvidia
"$B/gpupass-host-agent" conf apply --conf $S/lxc/g1/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply rc=$?"
mkdir -p $F/g1; cp $S/lxc/g1/config $F/g1/config
expect g1 > $S/lxc/g1/rootfs/etc/expect.json
start g1
att g1 ls /usr/lib/gpupass-driver/lib | wc -l
att g1 cat /usr/lib/gpupass-driver/source
att g1 sh -c 'touch /usr/lib/gpupass-driver/lib/x; echo touch-rc=$?'
att g1 nvidia-smi -L; echo "nvidia-smi rc=$?"
t0=$(ts); att g1 cudacheck; echo "cudacheck rc=$? in $(ms $t0 $(ts)) ms"
att g1 gpupass-guest-agent --once -o json --expect-file /etc/expect.json > "$OUT/guest-g1.json"; echo "guest rc=$?"
cat "$OUT/guest-g1.json" | head -c 1500; echo
cp $S/lxc/g1/rootfs/etc/ld.so.cache $F/g1/ld.so.cache
att g1 ls -l /usr/lib/gpupass-driver/lib /usr/lib/gpupass-driver/bin > $F/g1/ls.txt
att g1 cat /usr/lib/gpupass-driver/source > $F/g1/source
timeout 20 lxc-stop -n g1 -P $S/lxc -k
note "g1 again (every start)"; start g1; att g1 cudacheck; echo "cudacheck rc=$?"; timeout 20 lxc-stop -n g1 -P $S/lxc -k

note "g2: an OLD own libnvidia-ml (570.86.15), driver own"
mkrootfs g2
R=$S/lxc/g2/rootfs; mkdir -p $R/usr/local/nvidia/lib64 $R/etc/ld.so.conf.d
cp /usr/local/nvidia/lib64/libnvidia-ml.so.$V $R/usr/local/nvidia/lib64/libnvidia-ml.so.570.86.15
ln -s libnvidia-ml.so.570.86.15 $R/usr/local/nvidia/lib64/libnvidia-ml.so.1
echo 'include /etc/ld.so.conf.d/*.conf' > $R/etc/ld.so.conf; echo /usr/local/nvidia/lib64 > $R/etc/ld.so.conf.d/nvidia.conf
ldconfig -X -r $R
"$B/gpupass-host-agent" conf apply --conf $S/lxc/g2/config --gpus 0 --state-dir $S/state; echo "conf apply (own) rc=$?"
expect g2 > $R/etc/expect.json
start g2
att g2 gpupass-guest-agent --once -o json --expect-file /etc/expect.json > "$OUT/guest-g2-own.json"; echo "guest own rc=$?"
grep -o '"driver":{[^}]*}' "$OUT/guest-g2-own.json"; grep -o '"reasons":\[[^]]*\]' "$OUT/guest-g2-own.json" | head -c 600; echo
timeout 20 lxc-stop -n g2 -P $S/lxc -k
note "g2 switched to driver: host"
"$B/gpupass-host-agent" conf apply --conf $S/lxc/g2/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply (host) rc=$?"
start g2
att g2 gpupass-guest-agent --once -o json --expect-file /etc/expect.json > "$OUT/guest-g2-host.json"; echo "guest host rc=$?"
grep -o '"driver":{[^}]*}' "$OUT/guest-g2-host.json"
att g2 cudacheck; echo "cudacheck rc=$?"
mkdir -p $F/g2; cp $R/etc/ld.so.cache $F/g2/ld.so.cache; att g2 ls -l /usr/lib/gpupass-driver/lib > $F/g2/ls.txt
timeout 20 lxc-stop -n g2 -P $S/lxc -k
note "g3: UNPRIVILEGED busybox (root is 100000), no NVIDIA files; conf apply --driver host"
# The hook runs for a user-namespaced container: the agent it names must be reachable by
# any user, so this container's agent is a copy under /opt.
mkdir -p /opt/gpupass-bin; cp "$B/gpupass-host-agent" /opt/gpupass-bin/; chmod 0755 /opt/gpupass-bin /opt/gpupass-bin/*
mkrootfs g3
printf 'lxc.idmap = u 0 100000 65536\nlxc.idmap = g 0 100000 65536\n' >> $S/lxc/g3/config
/opt/gpupass-bin/gpupass-host-agent conf apply --conf $S/lxc/g3/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply (unprivileged) rc=$?"
mkdir -p $F/g3; cp $S/lxc/g3/config $F/g3/config
expect g3 > $S/lxc/g3/rootfs/etc/expect.json
chown -R 100000:100000 $S/lxc/g3/rootfs
start g3
att g3 cat /proc/self/uid_map
att g3 cat /usr/lib/gpupass-driver/source
att g3 sh -c 'touch /usr/lib/gpupass-driver/lib/x; echo touch-rc=$?'
att g3 sh -c 'echo x >> /usr/lib/gpupass-driver/lib/libcuda.so.1; echo append-rc=$?'
att g3 nvidia-smi -L; echo "nvidia-smi rc=$?"
t0=$(ts); att g3 cudacheck; echo "cudacheck rc=$? in $(ms $t0 $(ts)) ms"
att g3 gpupass-guest-agent --once -o json --expect-file /etc/expect.json > "$OUT/guest-g3-unprivileged.json"; echo "guest rc=$?"
grep -o '"ready": *[a-z]*' "$OUT/guest-g3-unprivileged.json" | head -1
cp $S/lxc/g3/rootfs/etc/ld.so.cache $F/g3/ld.so.cache; att g3 ls -l /usr/lib/gpupass-driver/lib > $F/g3/ls.txt
timeout 20 lxc-stop -n g3 -P $S/lxc -k
note "g3 again (every start)"; start g3; att g3 cudacheck; echo "cudacheck rc=$?"; timeout 20 lxc-stop -n g3 -P $S/lxc -k
tar -C $F -cf "$OUT/fixture.tar" . ; ls -la "$OUT"; note done
