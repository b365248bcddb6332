#!/usr/bin/env bash
# Lints the systemd units offline: systemd-analyze verify only warns on unknown keys with
# exit 0, so any output is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze not installed (scripts/deps.sh installs it)" >&2; exit 1; }
make -s build >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Stand-ins for the Proxmox units ours depend on (Requires=pve-cluster.service), so that
# the verifier checks the dependency instead of failing on a machine without Proxmox.
for pve in pve-cluster.service pve-guests.service; do
  printf '[Unit]\nDescription=stand-in for Proxmox %s (check-units)\n[Service]\nType=oneshot\nExecStart=/bin/true\n' "$pve" > "$tmp/$pve"
done
export SYSTEMD_UNIT_PATH="$tmp:"
shopt -s nullglob
cp packaging/*.target "$tmp/" # gpu-ready.target, which gpupass-gpu-ready.service orders before
for u in packaging/*.service; do
  # ExecStart must exist for the verifier: point it at the built binaries.
  sed -e "s#/usr/local/bin/#$PWD/bin/#g" "$u" > "$tmp/$(basename "$u")"
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$tmp/$(basename "$u")" 2>&1 || true)
  out=$(grep -v -e '^$' <<<"$out" || true)
  if [ -n "$out" ]; then echo "$u:"; echo "$out"; exit 1; fi
  echo "ok $u"
done
# The host agent reconciles /etc/pve: it must start after pmxcfs and not without it.
grep -qx 'Requires=pve-cluster.service' packaging/gpupass-host-agent.service &&
  grep -q '^After=.*pve-cluster.service' packaging/gpupass-host-agent.service ||
  { echo "packaging/gpupass-host-agent.service: needs Requires= and After=pve-cluster.service" >&2; exit 1; }
