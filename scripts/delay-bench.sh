#!/usr/bin/env bash
# The queue delay rules over HTTP: `convoy serve` (max batch 64, 2 ms
# queue delay, the built-in model, 128 tokens a request) under wrk's closed
# loop (each connection sends its next request when the answer comes) at
# several connection counts, with `batching.delay = "fixed"`, `"adaptive"`
# and a delay of 0. Prints one table row per run: req/s, p50, p99.
#
# Usage: scripts/delay-bench.sh [SECONDS] [CONNECTIONS...]   (default 5 s; 8 32 128)
# Needs wrk (apt-get install wrk). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
shift || true
conns=("$@")
[ ${#conns[@]} -gt 0 ] || conns=(8 32 128)
command -v wrk >/dev/null || { echo "delay-bench: wrk is not installed (apt-get install wrk)"; exit 1; }
cargo build --release --quiet --bin convoy
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
port=18490
echo "| connections | rule | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
for c in "${conns[@]}"; do
  for rule in fixed adaptive zero; do
    delay_ms=2; name=$rule
    if [ "$rule" = zero ]; then delay_ms=0; name=fixed; fi
    printf '[batching]\nmax_batch_size = 64\nmax_queue_delay_ms = %s\ndelay = "%s"\n' "$delay_ms" "$name" > "$dir/c.toml"
    ./target/release/convoy serve --addr "127.0.0.1:$port" --config "$dir/c.toml" > "$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    out=$(wrk -t2 -c"$c" -d"${secs}s" --timeout 10s -s scripts/delay-bench.lua "http://127.0.0.1:$port" | grep '^RESULT')
    kill -TERM "$pid"; wait "$pid" || true
    grep -q 'lost: 0' "$dir/log" || { echo "delay-bench: the server lost requests:"; cat "$dir/log"; exit 1; }
    label=$rule; [ "$rule" = zero ] && label="delay 0"
    rps=$(sed -n 's/.*rps=\([0-9]*\).*/\1/p' <<<"$out")
    p50=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out")
    p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$out")
    printf '| %s | %s | %s | %.2f | %.2f |\n' "$c" "$label" "$rps" "$(echo "$p50/1000" | bc -l)" "$(echo "$p99/1000" | bc -l)"
    port=$((port + 1))
  done
done
