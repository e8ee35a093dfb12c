#!/usr/bin/env bash
# Runs test binaries over and over beside two CPU hogs, to shake out races
# that a quiet machine hides (a thread descheduled at the wrong moment).
# Not a CI job: it runs for as long as asked and reports what failed.
#
#   scripts/soak.sh [SECONDS] [TEST ...]     default: 600 s, chaos and runtime
#
# A TEST is a file in tests/ (without .rs), or `lib` for the unit tests.
#
# Each failing run's output is kept in target/soak/fail-N.txt. Exits 1 if any
# run failed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
tests=("$@")
[ ${#tests[@]} -eq 0 ] && tests=(chaos runtime)
args=()
for t in "${tests[@]}"; do
  if [ "$t" = lib ]; then args+=(--lib); else args+=(--test "$t"); fi
done
# The test binaries, built once: their paths from cargo's JSON messages.
mapfile -t bins < <(cargo test --release "${args[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
[ ${#bins[@]} -gt 0 ] || { echo "soak: no test binary built for: ${tests[*]}"; exit 2; }
out=target/soak
rm -rf "$out" && mkdir -p "$out"
hogs=()
for _ in 1 2; do
  timeout "$seconds" sh -c 'while :; do :; done' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
end=$((SECONDS + seconds))
rounds=0
fails=0
while [ $SECONDS -lt $end ]; do
  for b in "${bins[@]}"; do
    if ! "$b" >"$out/last.txt" 2>&1; then
      fails=$((fails + 1))
      cp "$out/last.txt" "$out/fail-$fails.txt"
      echo "soak: $(basename "$b") failed (round $((rounds + 1))): $out/fail-$fails.txt"
    fi
  done
  rounds=$((rounds + 1))
done
echo "soak: ${tests[*]}: $rounds rounds in $seconds s beside two CPU hogs, $fails failed"
[ $fails -eq 0 ]
