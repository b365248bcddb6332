#!/usr/bin/env bash
# `make soak`: 200 simulated guests reporting and 50 controllers querying host.Status
# concurrently against one host agent for 60 s (internal/hostagent TestSoak); fails on any
# error or unbounded memory, and writes its figures into docs/reliability.md between the
# soak markers. Tune with GPUPASS_SOAK_GUESTS, GPUPASS_SOAK_CLIENTS, GPUPASS_SOAK_DURATION
# and GPUPASS_SOAK_REPORT_EVERY. Run as root for a simulated GPU host (else: no driver).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:${HOME:-/root}/go/bin:$PATH
out=$(mktemp -t gpupass-soak.XXXXXX.md)
trap 'rm -f "$out"' EXIT
GPUPASS_SOAK=1 GPUPASS_SOAK_OUT="$out" go test -count=1 -timeout 15m -run '^TestSoak$' -v ./internal/hostagent
doc=docs/reliability.md
if grep -q '^<!-- soak:begin -->$' "$doc" && grep -q '^<!-- soak:end -->$' "$doc"; then
  awk -v f="$out" '
    /^<!-- soak:begin -->$/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
    /^<!-- soak:end -->$/   { skip = 0 }
    !skip                   { print }' "$doc" > "$doc.tmp" && mv "$doc.tmp" "$doc"
  echo "soak: figures written to $doc"
else
  echo "soak: $doc has no soak markers; figures:" >&2
  cat "$out"
fi
