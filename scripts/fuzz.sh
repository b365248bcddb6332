#!/usr/bin/env bash
# Runs every fuzz target in the module (each `func FuzzX(f *testing.F)` in a _test.go file)
# for the given time each: `make fuzz` gives each 30s (FUZZTIME), the test command
# (scripts/test.sh) a few seconds over the committed corpus (testdata/fuzz/FuzzX/ beside each
# target, plus the seeds f.Add gives). A crash is written by go test to
# <package>/testdata/fuzz/FuzzX/<hash>: commit it as a regression case and fix the bug.
#
#   scripts/fuzz.sh [TIME] [PATTERN]    TIME: go test -fuzztime (default 30s);
#                                       PATTERN: only targets whose "pkg FuzzX" matches (grep -E)
#
# Every target runs even when one fails; the exit status is 1 if any failed.
#
# Go's fuzzing coordinator (go1.26) can end a run with a bare "context deadline exceeded"
# and no failing input when -fuzztime expires while a worker is mid-call
# (golang/go#75804, fixed in go1.27). Such a run wrote no input and is not a finding: it is
# reported as "flake" after the target's corpus replays cleanly, and does not fail.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:${HOME:-/root}/go/bin:$PATH
t=${1:-30s}
pattern=${2:-.}
log=$(mktemp -t gpupass-fuzz.XXXXXX)
trap 'rm -f "$log"' EXIT

targets=()
for dir in $(go list -f '{{.Dir}}' ./...); do
  pkg=$(go list -f '{{.ImportPath}}' "$dir")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    if grep -qE -- "$pattern" <<<"$pkg $f"; then
      targets+=("$dir $pkg $f")
    fi
  done
done

start=$SECONDS
failed=()
flakes=0
for tf in "${targets[@]}"; do
  read -r dir pkg f <<<"$tf"
  s=$SECONDS
  before=$(ls "$dir/testdata/fuzz/$f" 2>/dev/null | sort)
  # -run '^$': the package's other tests do not run here (go test runs them).
  if go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
    execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | awk '{print $2}')
    printf 'ok    %-40s %-26s %3ds  %s execs\n' "$pkg" "$f" $((SECONDS - s)) "${execs:-?}"
    continue
  fi
  after=$(ls "$dir/testdata/fuzz/$f" 2>/dev/null | sort)
  if [ "$before" = "$after" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log" &&
    go test -count=1 -run "^$f\$" "$pkg" >/dev/null 2>&1; then
    printf 'flake %-40s %-26s %3ds  (go fuzz coordinator deadline race, golang/go#75804; corpus replays clean)\n' "$pkg" "$f" $((SECONDS - s))
    flakes=$((flakes + 1))
    continue
  fi
  printf 'FAIL  %-40s %-26s %3ds\n' "$pkg" "$f" $((SECONDS - s))
  sed 's/^/      /' "$log"
  failed+=("$pkg $f")
done
echo "fuzz: ${#targets[@]} targets, $t each, $((SECONDS - start))s in all, ${#failed[@]} failed, $flakes flake(s)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
