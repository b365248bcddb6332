#!/usr/bin/env bash
# Lints the systemd units offline: systemd-analyze verify only warns on unknown keys with
# exit 0, so any output is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v systemd-analyze >/dev/null || { echo "check-units: systemd-analyze not installed (scripts/deps.sh installs it)" >&2; exit 1; }
make -s build >/dev/null
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
shopt -s nullglob
for u in packaging/*.service; do
  # ExecStart must exist for the verifier: point it at the built binaries.
  sed -e "s#/usr/local/bin/#$PWD/bin/#g" "$u" > "$tmp/$(basename "$u")"
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no "$tmp/$(basename "$u")" 2>&1 || true)
  out=$(grep -v -e 'pve-guests.service' -e '^$' <<<"$out" || true)
  if [ -n "$out" ]; then echo "$u:"; echo "$out"; exit 1; fi
  echo "ok $u"
done
