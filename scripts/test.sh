#!/usr/bin/env bash
# The one test command (README): installs what tests need, then runs lint, the protobuf
# drift check, every unit and integration test (real LXC containers where root) and the
# end-to-end suite. CI runs exactly this.
#
# The tests' full output goes to $GPUPASS_TEST_LOG (default /tmp/gpupass-test.log); the
# terminal gets one line per package with its passed/failed/skipped counts, the failing
# tests' names with the last lines of their output, and a summary. The exit status is
# that of the run (non-zero when anything failed); the last line is PASS or FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$HOME/go/bin:$PATH
TEST_LOG=${GPUPASS_TEST_LOG:-/tmp/gpupass-test.log}

./scripts/deps.sh test
echo "== PVE lab (test/pvelab: the real pct for test/pve and the pct end-to-end tests)"
trap 'bash test/pvelab/teardown.sh >/dev/null 2>&1 || true' EXIT
bash test/pvelab/setup.sh
echo "== lint"
make --no-print-directory lint
echo "== protobuf drift"
make --no-print-directory proto-check
echo "== build"
make --no-print-directory build
go build -o bin/testreport ./test/testreport
echo "== packages (make deb, lintian: no errors) and alert rules (promtool)"
(cd packaging/deb && go vet ./... && go test -count=1 ./...)
make --no-print-directory deb
lintian --fail-on error --tag-display-limit 0 build/deb/*.deb
promtool check rules packaging/prometheus/alerts.yml
echo "== tests (unit, integration, end to end)"
bash test/rootfs/debian.sh   # Debian 12 rootfs with systemd and with OpenRC for real-init containers (built once, cached)
tests=0
go test -count=1 -timeout 25m -json ./... 2>&1 | bin/testreport --log "$TEST_LOG" --summary "$TEST_LOG.summary" || tests=$?
fuzz=skipped
if [ "$tests" -eq 0 ]; then
  echo "== fuzz (brief, over the committed corpus)"
  fuzz=0
  ./scripts/fuzz.sh "${FUZZ_BRIEF:-2s}" || fuzz=$?
fi

echo "== summary (full test log: $TEST_LOG)"
case $fuzz in
  skipped) echo "fuzz: not run (tests failed)" ;;
  0) echo "fuzz: ok" ;;
  *) echo "fuzz: FAILED (see above)" ;;
esac
cat "$TEST_LOG.summary" 2>/dev/null || echo "tests: no summary (the test run did not start)"
if [ "$tests" -ne 0 ] || [ "$fuzz" != 0 ]; then
  echo FAIL
  exit 1
fi
echo PASS
