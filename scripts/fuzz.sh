#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer, AddressSanitizer) of what
# convoy reads from outside: the TOML config loader, the trace loaders
# (Azure and generic CSV), the server's request bodies, and the ring and the
# sharded intake driven by operation sequences against a model. Each target
# runs SECONDS (default 30) from the committed seeds in fuzz/corpus/; new inputs go to a scratch
# folder, so the committed corpus changes only by hand. A crash fails the
# run and leaves its input in fuzz/artifacts/TARGET/; add it to the seeds and
# a regression test.
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`); without them it
# skips with a reason, and under CI=true fails.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  why="cargo-fuzz is not installed (cargo install cargo-fuzz)"
  if [ "${CI:-}" = "true" ]; then echo "fuzz: $why"; exit 1; fi
  echo "fuzz: SKIPPED, $why"; exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in config_toml trace_csv request_body ring_ops intake_ops; do
  echo "-- fuzz: $target for ${secs} s"
  mkdir -p "$scratch/$target"
  cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|.*panicked|.*Test unit written)" || true
  # libFuzzer exits non-zero on a crash; grep above hides the status.
  if [ -n "$(ls -A "fuzz/artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target found a crash: fuzz/artifacts/$target/"; exit 1
  fi
done
echo "fuzz: OK"
