#!/usr/bin/env bash
# Miri over convoy's unsafe code and atomic protocols: the ring (its slot
# cells), the ticket (its value and waker cells), the sharded intake, its
# gate and doorbell, the staged batch's take-once cell, the SLA report's
# publication board, and the device code that runs without a device (the
# CUDA module's host side: packing a batch into the kernel's layout,
# reading the kernel's ABI from PTX, the model and its weight files),
# each at reduced sizes (`cfg!(miri)`),
# under several schedules and weak-memory choices (`-Zmiri-many-seeds`).
# Miri reports undefined behaviour (an uninitialised read, a use after free,
# an aliasing violation, a data race) and leaks; loom checks the orderings.
#
# Needs the nightly toolchain with `miri` and `rust-src`
# (`rustup component add --toolchain nightly miri rust-src`); without them
# it skips with a reason, and under CI=true fails.
# SEEDS=N runs each target under N seeds (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  why="the nightly miri component is missing (rustup component add --toolchain nightly miri rust-src)"
  if [ "${CI:-}" = "true" ]; then echo "miri: $why"; exit 1; fi
  echo "miri: SKIPPED, $why"; exit 0
fi
seeds=${SEEDS:-2}
# Isolation off: proptest reads its regressions file and seeds from the OS.
export MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-many-seeds=0..$seeds ${MIRIFLAGS:-}"
# No cudarc: its FFI cannot run under Miri, and none of the code below uses it.
run() { echo "-- miri: $*"; cargo +nightly miri test --no-default-features "$@"; }
run --test ticket_threads
run --test ring_model
run --test intake_threads
run --lib -- intake::ring:: intake::gate:: intake::doorbell:: runtime::handoff::
# With the cuda feature: its tests here call no driver function (cudarc
# loads the driver only when first called), so they run under Miri too.
echo "-- miri: --lib -- observe::sla:: device::"
cargo +nightly miri test --lib -- observe::sla:: device::
echo "miri: OK"
