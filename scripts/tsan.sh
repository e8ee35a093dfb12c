#!/usr/bin/env bash
# ThreadSanitizer over convoy's threaded tests: the sharded intake, the
# ring, the ticket, the runtime's nothing-lost stress and its preemption
# stress (staged batches recalled, running ones stopped), on real threads
# with std rebuilt under the sanitizer (-Zbuild-std), so every atomic in
# std and in convoy is seen. A data race fails the run.
#
# Needs the nightly toolchain with `rust-src`; without it it skips with a
# reason, and under CI=true fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  why="nightly rust-src is missing (rustup component add --toolchain nightly rust-src)"
  if [ "${CI:-}" = "true" ]; then echo "tsan: $why"; exit 1; fi
  echo "tsan: SKIPPED, $why"; exit 0
fi
target=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
# Its own target folder: sanitized artifacts must not mix with the others.
export CARGO_TARGET_DIR=target/tsan
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
cargo +nightly test -Zbuild-std --target "$target" --no-default-features \
  --test intake_threads --test ring_model --test ticket_threads --test runtime --test preemption -- \
  --test-threads=1 \
  many_producers owners_and_shared lose_nothing all_or_nothing_batches \
  a_value_sent cancel_racing a_ticket_dropped a_completer_gone a_polled_ticket \
  nothing_lost_under_load under_churn
echo "tsan: OK"
