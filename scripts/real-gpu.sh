#!/bin/bash
# The whole gpupass flow on a real NVIDIA GPU host (docs/real-gpu.md): a host agent (runtime
# lxc) and the controller on the GPU host apply GPUs to busybox LXC containers with the guest
# agent baked in. One container per GPU (GPU i -> container g<i>). Records reports, status
# JSON, nvidia-smi output and timings under $OUT. Run from a folder holding the LXC .debs
# (lxc, liblxc1, liblxc-common, busybox-static; deps/ with their libraries) and bin/ with
# static gpupass, gpupass-host-agent and gpupass-guest-agent (CGO_ENABLED=0).
exec > >(tee -a "$OUT/log.txt") 2>&1
set -u
cd "$(dirname "$0")"
HERE=$PWD
B=$HERE/bin
ts() { date +%s.%N; }
ms() { awk "BEGIN{printf \"%.0f\", ($2-$1)*1000}"; }
note() { echo "### $*"; sync; }

note "unpack LXC"
for f in liblxc1*.deb liblxc-common*.deb lxc_*.deb; do dpkg -x $f /; done
mkdir -p /opt/bb /opt/lxdeps; dpkg -x busybox-static*.deb /opt/bb; for f in deps/*.deb; do dpkg -x $f /opt/lxdeps; done
export LD_LIBRARY_PATH=/opt/lxdeps/lib/x86_64-linux-gnu:/opt/lxdeps/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
export PATH=$B:$PATH
lxc-start --version
NGPU=$(ls -d /proc/driver/nvidia/gpus/* | wc -l)
note "GPUs: $NGPU; uvm major $(awk '$2=="nvidia-uvm"{print $1}' /proc/devices)"

S=/var/lib/gpupass-real; rm -rf $S; mkdir -p $S/lxc $OUT/fixtures
gpupass pki init --dir $S/pki >/dev/null; gpupass pki issue --dir $S/pki --role host --name gpuhost --ip 127.0.0.1 >/dev/null; gpupass pki issue --dir $S/pki --role controller --name controller >/dev/null
cat > $S/host-agent.yaml <<EOT
version: 1
listen: "127.0.0.1:7420"
runtime: lxc
tls: {ca: $S/pki/ca.crt, cert: $S/pki/gpuhost.crt, key: $S/pki/gpuhost.key}
state_dir: $S/state
guest_socket_dir: $S/guests
host_root: /
lxc_path: $S/lxc
heartbeat: 5s
EOT

mkrootfs() { # name
  local R=$S/lxc/$1/rootfs
  mkdir -p $R/{bin,dev,proc,sys,tmp,etc,run,lib,usr/lib,usr/lib64,usr/local/nvidia,usr/local/bin}
  ln -sfn usr/lib64 $R/lib64   # as on the host: the loader link is relative (../lib/x86_64-linux-gnu)
  cp /opt/bb/bin/busybox $R/bin/; for a in sh ls cat test sleep head mknod echo env; do ln -sf busybox $R/bin/$a; done
  cp $B/gpupass-guest-agent $R/usr/local/bin/
  cat > $R/etc/init.sh <<'EOT'
#!/bin/sh
export PATH=/usr/local/bin:/usr/local/nvidia/bin:/bin LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib
/usr/local/bin/gpupass-guest-agent >/tmp/guest.log 2>&1 &
exec /bin/sleep 1000000
EOT
  chmod +x $R/etc/init.sh
  cat > $S/lxc/$1/config <<EOT
lxc.uts.name = $1
lxc.rootfs.path = dir:$R
lxc.net.0.type = empty
lxc.init.cmd = /etc/init.sh
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.signal.halt = SIGKILL
lxc.cgroup2.devices.deny = a
lxc.cgroup2.devices.allow = c 1:3 rwm
lxc.cgroup2.devices.allow = c 1:5 rwm
lxc.cgroup2.devices.allow = c 1:9 rwm
lxc.cgroup2.devices.allow = c 5:* rwm
lxc.cgroup2.devices.allow = c 136:* rwm
lxc.mount.entry = /usr/local/nvidia usr/local/nvidia none ro,bind,create=dir 0 0
lxc.mount.entry = /lib lib none ro,bind 0 0
lxc.mount.entry = /usr/lib64 usr/lib64 none ro,bind,optional 0 0
lxc.mount.entry = /usr/lib usr/lib none ro,bind 0 0
EOT
}

fleet() { # list of "ctid:gpu"
  { echo "version: 1"; echo "tls: {ca: $S/pki/ca.crt, cert: $S/pki/controller.crt, key: $S/pki/controller.key}"
    echo "hosts:"; echo "  - {name: gpuhost, address: \"127.0.0.1:7420\"}"; echo "containers:"
    for cg in "$@"; do echo "  - {host: gpuhost, id: ${cg%%:*}, gpus: [\"${cg##*:}\"], style: raw, state: running}"; done
  } > $S/fleet.yaml
}

in_ct() { timeout 30 lxc-attach -P $S/lxc -n "$@"; }

note "host agent"
gpupass-host-agent --config $S/host-agent.yaml > $OUT/host-agent.log 2>&1 &
AGENT=$!
sleep 1

note "container g0 running WITHOUT a GPU (the seed scenario), then apply GPU 0"
mkrootfs g0
lxc-start -P $S/lxc -n g0; sleep 0.5
fleet g0:0
gpupass plan -f $S/fleet.yaml; echo "plan rc=$?"
t0=$(ts); gpupass apply -f $S/fleet.yaml --timeout 60s; rc=$?; t1=$(ts)
echo "apply rc=$rc apply_to_ready_ms=$(ms $t0 $t1)" | tee $OUT/timing-apply1.txt
gpupass status -f $S/fleet.yaml -o json > $OUT/fixtures/status-ready-1gpu.json; echo "status rc=$?"
gpupass status -f $S/fleet.yaml
in_ct g0 -- /usr/local/bin/gpupass-guest-agent --once -o json > $OUT/fixtures/report-ready.json; echo "once rc=$?"
in_ct g0 -- env LD_LIBRARY_PATH=/usr/local/nvidia/lib64 /usr/local/nvidia/bin/nvidia-smi -L > $OUT/fixtures/smi-in-g0.txt 2>&1; echo "smi rc=$?"; cat $OUT/fixtures/smi-in-g0.txt
cp $S/lxc/g0/config $OUT/fixtures/g0-config-after-apply.txt
note "second apply changes nothing"
t0=$(ts); gpupass apply -f $S/fleet.yaml --timeout 60s; echo "reapply rc=$? ms=$(ms $t0 $(ts))" | tee $OUT/timing-reapply.txt

note "remove the allow rule and start g0 outside gpupass: the guest must report denied"
lxc-stop -P $S/lxc -n g0 -k
sed -i '/c 195:0 rwm/d' $S/lxc/g0/config
lxc-start -P $S/lxc -n g0; sleep 2
gpupass status -f $S/fleet.yaml -o json > $OUT/fixtures/status-denied.json; echo "status rc=$? (want 2)"
gpupass status -f $S/fleet.yaml
in_ct g0 -- /usr/local/bin/gpupass-guest-agent --once -o json > $OUT/fixtures/report-denied.json; echo "once rc=$? (want 2)"
gpupass doctor -f $S/fleet.yaml gpuhost/g0 > $OUT/fixtures/doctor-denied.txt 2>&1; cat $OUT/fixtures/doctor-denied.txt
note "apply again: ready"
t0=$(ts); gpupass apply -f $S/fleet.yaml --timeout 60s; rc=$?; t1=$(ts)
echo "apply rc=$rc apply_to_ready_ms=$(ms $t0 $t1)" | tee $OUT/timing-apply2.txt

if [ "$NGPU" -ge 2 ]; then
  note "two GPUs: g0 gets GPU 0, g1 gets GPU 1"
  mkrootfs g1
  fleet g0:0 g1:1
  t0=$(ts); gpupass apply -f $S/fleet.yaml --timeout 60s; rc=$?; t1=$(ts)
  echo "apply2 rc=$rc ms=$(ms $t0 $t1)" | tee $OUT/timing-apply-2gpu.txt
  gpupass status -f $S/fleet.yaml -o json > $OUT/fixtures/status-ready-2gpu.json
  gpupass status -f $S/fleet.yaml; echo "status rc=$?"
  for i in 0 1; do
    o=$((1-i))
    in_ct g$i -- env LD_LIBRARY_PATH=/usr/local/nvidia/lib64 /usr/local/nvidia/bin/nvidia-smi -L > $OUT/fixtures/smi-in-g$i.txt 2>&1; echo "g$i smi rc=$?"; cat $OUT/fixtures/smi-in-g$i.txt
    in_ct g$i -- /usr/local/bin/gpupass-guest-agent --once -o json > $OUT/fixtures/report-2gpu-g$i.json
    in_ct g$i -- /bin/sh -c "ls -la /dev/nvidia*; mknod /tmp/nv$o c 195 $o; echo mknod-other-rc=\$?; head -c0 /tmp/nv$o; echo open-other-rc=\$?; head -c0 /dev/nvidia$i; echo open-own-rc=\$?" > $OUT/fixtures/isolation-g$i.txt 2>&1; cat $OUT/fixtures/isolation-g$i.txt
  done
fi

note "done"
kill $AGENT; wait $AGENT
for c in $(ls $S/lxc); do lxc-stop -P $S/lxc -n $c -k 2>/dev/null; done
cp /proc/devices $OUT/fixtures/proc-devices.txt
for c in $(ls $S/lxc); do cp $S/lxc/$c/rootfs/tmp/guest.log $OUT/fixtures/guest-$c.log 2>/dev/null; done
tar czf $OUT/fixtures.tgz -C $OUT fixtures && rm -rf $OUT/fixtures
tar czf $OUT/state.tgz -C $S state 2>/dev/null
sync
