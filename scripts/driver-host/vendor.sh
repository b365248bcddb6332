#!/bin/bash
# Proof of `driver: host`'s vendor files on a real NVIDIA GPU host (docs/driver.md): a
# busybox LXC container whose template has NO NVIDIA files gets, through the real
# `gpupass-host-agent conf apply --driver host` and its lxc.hook.mount, the host's vendor
# files (Vulkan ICD, glvnd EGL vendor JSON, ...) at their normal paths: the host's content,
# read-only, beside the libraries. Inside: ls, cat, a write attempt on each, the
# /usr/lib/gpupass-driver listing, nvidia-smi -L, and the Vulkan and EGL loaders (Debian's
# libvulkan1 and libglvnd, carried in gl/) finding the NVIDIA driver through those files
# (loadercheck.c), and not without them. Then a container with its OWN nvidia_icd.json:
# the host's is bound read-only over it while it runs, its own is unchanged on its disk.
# Everything lands under $OUT (log.txt, driver-show.json, g1.config, fixture.tar).
#
# Prepare on the development machine, in the checkout the device call sends (a folder git
# ignores, carried as .gpuhost/vendor):
#   mkdir -p .gpuhost/vendor/bin .gpuhost/vendor/deps .gpuhost/vendor/gl && cd .gpuhost/vendor
#   apt-get download lxc liblxc1 liblxc-common busybox-static
#   (cd deps && apt-get download libapparmor1 libseccomp2 libcap2 libselinux1 libpcre2-8-0)
#   (cd gl && apt-get download libvulkan1 libegl1 libglvnd0 libgl1 libglx0)
#   cd ../.. && go build -o .gpuhost/vendor/bin/ ./agent-host
#   gcc -O2 -o .gpuhost/vendor/bin/loadercheck scripts/driver-host/loadercheck.c -ldl
#   cp scripts/driver-host/vendor.sh .gpuhost/vendor/
# Run there as root: bash .gpuhost/vendor/vendor.sh
set -u
OUT=${OUT:-/tmp/gpupass-vendor-proof}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
P=$(cd "$(dirname "$0")" && pwd)
B=$P/bin
note() { echo "### $*"; sync; }
ts() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }

note "unpack LXC"
cd "$P" || exit 3
for f in liblxc1*.deb liblxc-common*.deb lxc_*.deb; do dpkg -x $f /; done
mkdir -p /opt/bb /opt/lxdeps /opt/gl; dpkg -x busybox-static*.deb /opt/bb; for f in deps/*.deb; do dpkg -x $f /opt/lxdeps; done
for f in gl/*.deb; do dpkg -x $f /opt/gl; done
export LD_LIBRARY_PATH=/opt/lxdeps/lib/x86_64-linux-gnu:/opt/lxdeps/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu
lxc-start --version
chmod 0755 "$B"/*; chmod o+x "$P" "$B"

note "host"
uname -r; head -1 /proc/driver/nvidia/version; /usr/local/nvidia/bin/nvidia-smi -L
t0=$(ts); "$B/gpupass-host-agent" driver show > "$OUT/driver-show.json"; echo "driver show rc=$? in $(ms $t0 $(ts)) ms"
echo "libs=$(sed -n '/"Libs"/,/]/p' "$OUT/driver-show.json" | grep -c '"Name"') tools=$(sed -n '/"Tools"/,/]/p' "$OUT/driver-show.json" | grep -c '"Name"')"
CONFIGS=$(sed -n '/"Configs"/,/]/p' "$OUT/driver-show.json" | grep '"Path"' | cut -d'"' -f4)
echo "configs:"; echo "$CONFIGS"
for c in $CONFIGS; do ls -l "$c"; echo "  -> $(readlink -f "$c") $(sha256sum < "$c" | cut -c1-16)"; done
echo "host libraries the vendor files name:"; grep -h library_path $CONFIGS
ls -l /usr/local/nvidia/lib64 | grep -E 'libGLX_nvidia|libEGL_nvidia'
ldconfig -p | grep -E 'libGLX_nvidia|libEGL_nvidia|libvulkan|libEGL\.so|libGLdispatch|libX11\.so|libXext\.so'

# The fixture: the vendor directories under the three roots and the directories the
# links lead to: listings (ls -la --time-style=+) and the small files' content.
F=/tmp/fixture; rm -rf $F; mkdir -p $F/host
dirs=""
for r in /etc /usr/local/share /usr/share; do
  for d in OpenCL/vendors vulkan/icd.d vulkan/implicit_layer.d glvnd/egl_vendor.d egl/egl_external_platform.d nvidia; do
    [ -d $r/$d ] && dirs="$dirs $r/$d"
  done
done
for c in $CONFIGS; do d=$(dirname "$(readlink -f "$c")"); case " $dirs " in *" $d "*) ;; *) dirs="$dirs $d";; esac; done
for d in $dirs; do
  echo "== $d"; ls -la --time-style=+ $d
  ls -la --time-style=+ $d | grep -v -E ' \.\.?$|^total' > "$F/host/ls$(echo $d | tr / _).txt"
  find $d -maxdepth 1 -type f -size -64k | while read -r f; do mkdir -p "$F/host$(dirname "$f")"; cp "$f" "$F/host$f"; done
done
mkdir -p $F/host/proc/driver/nvidia; cp /proc/driver/nvidia/version $F/host/proc/driver/nvidia/version
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/bin /usr/lib/x86_64-linux-gnu /usr/bin; do
  ls -la --time-style=+ "$d" | grep -E 'nvidia|libcuda|libnv' > "$F/host/ls$(echo $d | tr / _).txt"
done
ls -laR /usr/local/nvidia/share 2>&1 | head -40

S=/var/lib/gpupass-vendor; rm -rf $S; mkdir -p $S/lxc
mkrootfs() { # name: busybox, the host's glibc bound in, the GL loaders in /opt/gl; no NVIDIA file
  local R=$S/lxc/$1/rootfs
  mkdir -p $R/{bin,dev,proc,sys,tmp,etc,run,usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin,opt/gl}
  ln -sfn usr/lib $R/lib; ln -sfn usr/lib64 $R/lib64
  cp /opt/bb/bin/busybox $R/bin/
  for a in sh ls cat test sleep head mount grep touch wc echo sha256sum cmp readlink env; do ln -sf busybox $R/bin/$a; done
  cp $B/loadercheck $R/usr/local/bin/
  cp -a /opt/gl/usr/lib/x86_64-linux-gnu/. $R/opt/gl/
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
att() { timeout 30 lxc-attach -n "$1" -P $S/lxc --clear-env -v PATH=/usr/local/bin:/bin -- "${@:2}"; }
# start: lxc-start at DEBUG; prints the hook's output and its time from LXC's log stamps
# (YYYYmmddHHMMSS.mmm, "Executing script" to "produced output").
start() {
  local t=$(ts); timeout 60 lxc-start -n "$1" -P $S/lxc -l DEBUG -o $S/$1-lxc.log; local rc=$?
  echo "lxc-start $1 rc=$rc in $(ms $t $(ts)) ms"
  grep -E 'gpupass' $S/$1-lxc.log | grep -v 'Executing script' | sed 's/.*produced output: //' | head -5
  grep -E 'Executing script .*driver hook|driver hook .* produced output' $S/$1-lxc.log | awk '{s=$3; t=(substr(s,9,2)*3600+substr(s,11,2)*60+substr(s,13,6))*1000; if (a=="") a=t; else printf "hook %.0f ms (LXC log stamps)\n", t-a}'
  cat $S/$1-lxc.log >> $S/lxc-all.log; : > $S/$1-lxc.log
}
VK=/usr/share/vulkan/icd.d/nvidia_icd.json
EGL=/usr/share/glvnd/egl_vendor.d/10_nvidia.json
inside() { # name: what the container sees at the host's vendor paths
  for c in $CONFIGS; do
    echo "-- $c"
    att $1 ls -l "$c"; att $1 readlink -f "$c"
    att $1 cat "$c" > $S/in.txt; echo "cat rc=$?"; cat $S/in.txt
    cmp $S/in.txt "$c" && echo "cmp with the host's: same"
    att $1 sh -c "echo x >> $c; echo append-rc=\$?; touch $c; echo touch-rc=\$?"
    cmp $S/in.txt "$c" && echo "host's file unchanged"
  done
}
loaders() { # name
  att $1 env LD_LIBRARY_PATH=/opt/gl VK_LOADER_DEBUG=driver loadercheck vulkan > $S/vk.txt 2>&1; echo "loadercheck vulkan rc=$?"
  grep -iE 'nvidia|vkCreateInstance|devices|device [0-9]' $S/vk.txt | head -12
  att $1 env LD_LIBRARY_PATH=/opt/gl loadercheck egl; echo "loadercheck egl rc=$?"
}

note "g1: busybox, no NVIDIA files; conf apply --driver host"
mkrootfs g1
echo "NVIDIA names in the template: $(find $S/lxc/g1/rootfs | grep -ci nvidia); its /usr/share: $(ls -d $S/lxc/g1/rootfs/usr/share 2>&1)"
"$B/gpupass-host-agent" conf apply --conf $S/lxc/g1/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply rc=$?"
cp $S/lxc/g1/config "$OUT/g1.config"
start g1
inside g1
echo "-- /usr/lib/gpupass-driver"
att g1 ls -lR /usr/lib/gpupass-driver/conf; att g1 cat /usr/lib/gpupass-driver/source
att g1 ls /usr/lib/gpupass-driver/lib | grep -E 'GLX_nvidia|EGL_nvidia'
att g1 grep -E 'gpupass-driver( |/conf)' /proc/self/mountinfo | awk '{print $5, $6}'
att g1 nvidia-smi -L; echo "nvidia-smi rc=$?"
loaders g1
echo "-- the loaders without those files"
att g1 env LD_LIBRARY_PATH=/opt/gl VK_DRIVER_FILES=/nonexistent.json loadercheck vulkan; echo "vulkan without the ICD file rc=$?"
att g1 env LD_LIBRARY_PATH=/opt/gl __EGL_VENDOR_LIBRARY_DIRS=/nonexistent loadercheck egl; echo "egl without the vendor file rc=$?"
mkdir -p $F/g1; att g1 ls -lR /usr/lib/gpupass-driver/conf > $F/g1/ls-conf.txt
for c in $CONFIGS; do att g1 ls -l "$c"; done > $F/g1/ls-configs.txt
timeout 20 lxc-stop -n g1 -P $S/lxc -k
echo "after stop, on the container's disk:"; for c in $CONFIGS; do ls -l $S/lxc/g1/rootfs$c; done
note "g1 again (every start)"; start g1; for c in $CONFIGS; do att g1 cat "$c" | cmp - "$c" && echo "$c: same as the host's"; done
loaders g1; timeout 20 lxc-stop -n g1 -P $S/lxc -k

note "g2: its own $VK (another content), driver: host"
mkrootfs g2
R=$S/lxc/g2/rootfs; mkdir -p $R$(dirname $VK)
printf '{"file_format_version":"1.0.0","ICD":{"library_path":"libGLX_nvidia.so.0","api_version":"1.2.0"},"comment":"the template own copy"}\n' > $R$VK
cp $R$VK $S/own.json
"$B/gpupass-host-agent" conf apply --conf $S/lxc/g2/config --gpus 0 --driver host --state-dir $S/state; echo "conf apply rc=$?"
start g2
att g2 ls -l $VK $EGL
att g2 cat $VK | cmp - $VK && echo "$VK inside g2: the host's"
att g2 grep -F "$VK" /proc/self/mountinfo | awk '{print $5, $6}'
att g2 sh -c "echo x >> $VK; echo append-rc=\$?"
loaders g2
timeout 20 lxc-stop -n g2 -P $S/lxc -k
cmp $S/own.json $R$VK && echo "after stop: g2's own $VK unchanged on its disk"

grep -iE 'warning|error' $S/lxc-all.log | grep -i gpupass | head
tar -C $F -cf "$OUT/fixture.tar" .; ls -la "$OUT"; note done
