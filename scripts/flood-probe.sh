#!/usr/bin/env bash
# A Critical probe's latency while a flood of Background requests holds
# CONNECTIONS connections open against `convoy serve` (wrk, closed loop:
# each connection sends its next request when the answer comes). The probe
# opens a fresh connection for each request (curl), so accepting it is part
# of what it measures, every INTERVAL seconds, for SECONDS seconds.
#
# Prints the flood's throughput, the probe's p50/p99/max as its client saw
# them, and the server's own Critical end-to-end p50/p99 (GET /v1/sla),
# which count from the connection's accept or the request's first byte.
#
# Usage: scripts/flood-probe.sh [SECONDS] [CONNECTIONS]   (default 20 s, 2000)
# CONFIG=FILE serves with that config; URGENT=none serves every connection
# on the one runtime (`--urgent none`), for the figure without the door's
# urgent thread; SERVE_FLAGS adds flags to `convoy serve` (for example
# "--max-connections 500", a flood larger than the connection budget).
# Needs wrk and curl. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-2000}
interval=${INTERVAL:-0.05}
port=${PORT:-18520}
command -v wrk >/dev/null || { echo "flood-probe: wrk is not installed (apt-get install wrk)"; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet --bin convoy
dir=$(mktemp -d)
./target/release/convoy serve --addr "127.0.0.1:$port" ${CONFIG:+--config "$CONFIG"} ${URGENT:+--urgent "$URGENT"} ${SERVE_FLAGS:-} >"$dir/log" 2>"$dir/err" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

wrk -t1 -c"$conns" -d"$((secs + 2))s" --timeout 10s -s scripts/flood-probe.lua "http://127.0.0.1:$port" >"$dir/wrk" 2>&1 &
flood=$!
sleep 2 # let the flood open its connections
body='{"priority":"critical","tokens":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}'
end=$((SECONDS + secs - 1))
: >"$dir/probe"
while [ $SECONDS -lt $end ]; do
  curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 \
    -H 'content-type: application/json' -H 'x-priority: critical' \
    -d "$body" "http://127.0.0.1:$port/v1/infer" >>"$dir/probe" || echo "000 10" >>"$dir/probe"
  sleep "$interval"
done
wait $flood || true
sla=$(curl -sf "http://127.0.0.1:$port/v1/sla" || echo '{}')
kill -TERM $server; wait $server || true
trap - EXIT
grep '^FLOOD' "$dir/wrk" || { cat "$dir/wrk"; }
python3 - "$dir/probe" "$sla" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
ok = sorted(float(t) * 1e3 for c, t in rows if c == "200")
bad = [c for c, _ in rows if c != "200"]
def q(xs, p): return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
print(f"PROBE n={len(rows)} ok={len(ok)} non200={len(bad)} p50_ms={q(ok,.5):.1f} p99_ms={q(ok,.99):.1f} max_ms={max(ok) if ok else float('nan'):.1f}")
sla = json.loads(sys.argv[2]) if sys.argv[2] else {}
crit = sla.get("priorities", {}).get("critical", {}).get("end_to_end_ms", {})
print(f"SERVER critical n={crit.get('count')} p50_ms={crit.get('p50')} p99_ms={crit.get('p99')}")
PY
tail -1 "$dir/log"
rm -rf "$dir"
