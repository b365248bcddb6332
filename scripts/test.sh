#!/usr/bin/env bash
# The one test command (README): installs what tests need, then runs lint, the protobuf
# drift check, every unit and integration test (real LXC containers where root) and the
# end-to-end suite. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH

./scripts/deps.sh
echo "== PVE lab (test/pvelab: the real pct for test/pve and the pct end-to-end tests)"
trap 'bash test/pvelab/teardown.sh >/dev/null 2>&1 || true' EXIT
bash test/pvelab/setup.sh
echo "== lint"
make --no-print-directory lint
echo "== protobuf drift"
make --no-print-directory proto-check
echo "== build"
make --no-print-directory build
echo "== tests (unit, integration, end to end)"
bash test/rootfs/debian.sh   # Debian 12 rootfs with systemd and with OpenRC for real-init containers (built once, cached)
go test -count=1 -timeout 25m ./... 2>&1 | tee /tmp/gpupass-test.log
echo "== fuzz (brief, over the committed corpus)"
./scripts/fuzz.sh "${FUZZ_BRIEF:-2s}"
