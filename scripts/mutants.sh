#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of convoy's core: each file with the
# tests that cover it, so one mutant costs an incremental build and a few
# seconds of tests. Every surviving mutant is either harmless (say why in
# docs/mutants.md) or a missing test (add one that kills it). Too slow for
# every CI run (minutes per file); its report is recorded in
# docs/mutants.md with the date.
#
# Usage: scripts/mutants.sh [FILE...]   (default: every file below)
# Needs cargo-mutants (cargo install cargo-mutants).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || { echo "mutants: cargo-mutants is not installed (cargo install cargo-mutants)"; exit 1; }
declare -A tests=(
  [src/intake/gate.rs]="--lib --test runtime"
  [src/plan/ledger.rs]="--lib --test ledger_model --test runtime"
  [src/intake/shed.rs]="--lib --test runtime"
  [src/intake/ring.rs]="--lib --test ring_model --test intake_threads"
  [src/intake/sharded.rs]="--lib --test intake_threads"
  [src/outcome/ticket.rs]="--lib --test ticket_threads"
  [src/plan/order.rs]="--lib --test runtime"
  [src/plan/planner.rs]="--lib --test runtime"
  [src/runtime/handle.rs]="--test runtime --test dedup"
  [src/runtime/handoff.rs]="--lib"
  [src/device/stop.rs]="--lib --test preemption"
  [src/runtime/collector/displace.rs]="--lib --test preemption"
)
mkdir -p target/mutants
# Test builds without debug info link faster; a mutant costs a build.
export CARGO_PROFILE_DEV_DEBUG=0
# --iterate: a rerun skips the mutants an earlier run of the file caught.
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(src/intake/gate.rs src/plan/ledger.rs src/intake/shed.rs src/intake/ring.rs src/intake/sharded.rs src/outcome/ticket.rs src/plan/order.rs src/plan/planner.rs src/runtime/handle.rs src/runtime/handoff.rs src/device/stop.rs src/runtime/collector/displace.rs)
for f in "${files[@]}"; do
  echo "== mutants: $f (tests: ${tests[$f]:---lib})"
  # cargo-mutants exits non-zero when a mutant survives; the file's
  # survivors are listed below, and the next file still runs.
  # shellcheck disable=SC2086
  cargo mutants --iterate --file "$f" --timeout 90 --output "target/mutants/$(basename "$f" .rs)" -- ${tests[$f]:---lib} | tail -2 || true
  missed="target/mutants/$(basename "$f" .rs)/mutants.out/missed.txt"
  if [ -s "$missed" ]; then echo "-- survived:"; cat "$missed"; fi
done
