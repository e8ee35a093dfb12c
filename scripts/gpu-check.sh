#!/usr/bin/env bash
# Every GPU check in one go, on a machine with an NVIDIA GPU, the CUDA 13
# driver and NVRTC (libnvrtc.so.13): takes the folder scripts/gpu-build.sh
# filled (prebuilt test and bench binaries, the convoy binary, kernels/,
# data/) and runs nvidia-smi, the parity tests (a skip is a failure here),
# the custom-kernel example, a GPU replay and the GPU bench. Logs go to
# $OUT (or ./gpu-out) when set.
set -uo pipefail
dir=${1:-.gpu}
out=${OUT:-gpu-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export CONVOY_REQUIRE_GPU=1
status=0
step() { echo; echo "== $*"; }
# Every step is bounded: the GPU code has never run, and a hang (a lane
# that never reports ready, a stuck copy) must cost one step's bound, not
# the whole call's 600 s and most of the device time a check is lent. The
# bounds add up to 570 s (two test binaries), inside the 600 s a call may run.
bounded() {
  local secs=$1
  shift
  timeout --kill-after=5 "$secs" "$@"
  local rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "gpu-check: timed out after ${secs} s: $*"
  return $rc
}

step "device"
nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
# cudarc dlopens libcuda.so.1 and libnvrtc.so.13 by name. Where the loader
# does not know them (CUDA's lib64 not in ld.so.conf, NVRTC only in a pip
# wheel), put the first copy found on LD_LIBRARY_PATH.
for lib in libcuda.so.1 libnvrtc.so.13; do
  if ldconfig -p 2>/dev/null | grep -q " $lib "; then
    echo "$lib: known to the loader"
    continue
  fi
  found=$(ls /usr/local/nvidia/lib64/$lib /usr/lib/x86_64-linux-gnu/$lib \
    /usr/local/cuda*/lib64/$lib /usr/local/cuda*/targets/x86_64-linux/lib/$lib \
    /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib/$lib \
    /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib/$lib 2>/dev/null | head -1)
  if [ -n "$found" ]; then
    echo "$lib: $found (added to LD_LIBRARY_PATH)"
    export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "$lib: not found; the tests will say which is missing"
  fi
done
date -u

step "parity and pipelining tests (CONVOY_REQUIRE_GPU=1)"
for t in "$dir"/test-*; do
  bounded 60 "$t" --test-threads=1 2>&1 | tee -a "$out/tests.log" || status=1
done

step "custom kernel example"
bounded 30 "$dir/custom_kernel" 2>&1 | tee "$out/custom_kernel.log" || status=1

step "replay on GPU workers"
(cd "$dir" && bounded 60 ./convoy replay --gpu --json "$out/replay-gpu.json") 2>&1 | tee "$out/replay-gpu.log" || status=1

step "serve on GPU workers: token ids run on the device, a vector is refused (422)"
(cd "$dir" && {
  ./convoy serve --gpu --addr 127.0.0.1:18999 > "$out/serve-gpu.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18999/healthz >/dev/null 2>&1 && break; sleep 0.1; done
  t=$(curl -s -o /dev/null -w '%{http_code}' -d '{"tokens":[1,2,3],"priority":"critical"}' http://127.0.0.1:18999/v1/infer)
  v=$(curl -s -o /dev/null -w '%{http_code}' -d "{\"vector\":[$(printf '0.5,%.0s' $(seq 1 255))0.5]}" http://127.0.0.1:18999/v1/infer)
  kill -TERM $pid; wait $pid
  echo "tokens: $t, vector: $v"
  grep -q "GPU workers on" "$out/serve-gpu.log" && [ "$t" = 200 ] && [ "$v" = 422 ] && grep -q "lost: 0" "$out/serve-gpu.log"
}) 2>&1 | tee "$out/serve-gpu-check.log" || status=1

step "bench"
bounded 180 "$dir/bench-gpu" --bench 2>&1 | tee "$out/bench-gpu.log" || status=1

# The two CPU goals that 2 cores cannot settle: intake vs ArrayQueue at 2
# and 4 producers (issue 2) and convoy vs batched-fn (issue 6), here with
# more cores than threads. Bounded, so a slow run cannot eat the call.
step "cpu benches on $(nproc) cores (intake P = 2, 4; peers)"
nproc; lscpu | grep -E "Model name|^CPU\(s\)"
(cd "$dir" && bounded 60 ./bench-intake --bench 'intake_throughput/(convoy|array_queue|mutex_heap)/[24]$' \
  --warm-up-time 1 --measurement-time 3 --noplot) 2>&1 | tee "$out/bench-intake.log"
(cd "$dir" && bounded 120 ./bench-peers --bench --warm-up-time 1 --measurement-time 5 --noplot) 2>&1 | tee "$out/bench-peers.log"

# Preemption's tail on a machine whose collector has cores of its own
# (on 2 shared cores the scheduler's share of the tail is large).
step "compare --preemption on $(nproc) cores (CPU workers)"
(cd "$dir" && bounded 90 ./convoy compare --preemption --duration 3 --calibrate 1 \
  --json "$out/compare-preemption.json") 2>&1 | tail -20 | tee "$out/compare-preemption.log"

step "summary"
grep -E "test result|running on|skipped" "$out/tests.log" | sort | uniq -c
tail -12 "$out/bench-gpu.log"
echo "gpu-check status: $status"
exit $status
