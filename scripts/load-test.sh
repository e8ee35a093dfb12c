#!/usr/bin/env bash
# Load test of `convoy serve` with a real HTTP client (wrk) on loopback.
#
# Starts the server, drives it for DURATION seconds with CONNECTIONS
# connections, scrapes /v1/stats, stops the server with SIGTERM, and
# checks: every response wrk counted is an outcome the server counted
# (server outcomes ≥ client responses, and exceed them by at most the
# requests in flight when wrk stopped, one per connection); no 5xx other
# than the deliberate 503/504; the server exits 0 with `lost: 0`.
# Prints throughput and p99 for BENCHMARKS.md.
#
# CONFIG=FILE serves with that config (scripts/load-test-shed.toml forces
# shedding, so 429s are part of the run and must be counted on both sides).
# Without wrk it skips with a reason (exit 0); under CI=true a skip fails.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
PORT=${PORT:-18480}

if ! command -v wrk >/dev/null 2>&1; then
  if [ "${CI:-}" = "true" ]; then
    echo "load test: wrk is missing (apt-get install wrk)"; exit 1
  fi
  echo "load test: SKIPPED, wrk is not installed (apt-get install wrk)"; exit 0
fi

cargo build --release --quiet --bin convoy
log=$(mktemp)
./target/release/convoy serve --addr "127.0.0.1:$PORT" ${CONFIG:+--config "$CONFIG"} >"$log" 2>/dev/null &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s scripts/load-test.lua "http://127.0.0.1:$PORT")
echo "$out"
status=$(echo "$out" | grep '^STATUS')
get() { echo "$status" | sed -n "s/.* $1=\([0-9]*\).*/\1/p; s/^STATUS $1=\([0-9]*\).*/\1/p" | head -1; }
ok=$(get ok); s429=$(get s429); s503=$(get s503); s504=$(get s504)
s4xx=$(get s4xx); s5xx=$(get s5xx); requests=$(get requests); p99=$(get p99_us); rps=$(get rps)

stats=$(curl -sf "http://127.0.0.1:$PORT/v1/stats")
kill -TERM $server
wait $server
code=$?
trap - EXIT
cat "$log"
summary=$(tail -1 "$log")
rm -f "$log"

# The server's count of every request it answered a status for.
server_total=$(python3 -c "
import json,sys
t=json.loads(sys.argv[1])['total']
s=json.loads(sys.argv[1])
# Refusals at the door (a shed level named in the x-priority header) never
# reach the runtime's counts.
print(t['completed']+t['expired']+t['cancelled']+t['failed']+t['shut_down']+t['rejected_full']+t['rejected_shed']+s.get('shed_at_door',{}).get('total',0))
" "$stats")
client_total=$((ok + s429 + s503 + s504 + s4xx + s5xx))
echo "load test: client counted $client_total responses (200: $ok, 429: $s429, 503: $s503, 504: $s504, 4xx: $s4xx, 5xx: $s5xx); server counted $server_total outcomes; $rps req/s, p99 ${p99} µs"

fail=0
[ "$code" -eq 0 ] || { echo "FAIL: server exited $code"; fail=1; }
[ "$s5xx" -eq 0 ] || { echo "FAIL: $s5xx unexpected 5xx"; fail=1; }
[ "$s4xx" -eq 0 ] || { echo "FAIL: $s4xx unexpected 4xx"; fail=1; }
[ "$client_total" -gt 0 ] || { echo "FAIL: no responses"; fail=1; }
[ "$server_total" -ge "$client_total" ] || { echo "FAIL: server counted fewer outcomes than the client saw"; fail=1; }
[ "$server_total" -le $((client_total + CONNECTIONS)) ] || { echo "FAIL: server counted more than client + in flight"; fail=1; }
echo "$summary" | grep -q "lost: 0" || { echo "FAIL: server did not report lost: 0"; fail=1; }
# EXPECT_SHED=1: the config forces shedding, so some 429s must have come.
[ -z "${EXPECT_SHED:-}" ] || [ "$s429" -gt 0 ] || { echo "FAIL: shedding was forced but no 429 came"; fail=1; }
[ $fail -eq 0 ] && echo "load test: OK"
exit $fail
