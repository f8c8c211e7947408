#!/usr/bin/env bash
# Load eventgw with many connections and streams and small client windows, over TLS
# and h2c, for /api GETs and /events POSTs, optionally with busy loops competing for
# the CPUs, and report every request that did not complete.  Everything runs on
# 127.0.0.1 and every run is bounded by `timeout`.
#
#   bench/stall/repro.sh [ROUNDS] [REQUESTS]     (defaults: 2 rounds, 20000 requests)
#
# Environment: PYTHON (the venv's python, default .venv/bin/python or
# /work/main/.venv/bin/python), BUSY (busy loops during the runs, default 2),
# PORT_BASE (default 19000: the gateway takes +1 TLS and +80 cleartext, the demo
# services +8080, +8051, +8052 on the next thousand), INACTIVITY (h2load -N, 20 s:
# a connection silent that long is dropped and its open requests count as timeouts),
# OUT (directory for logs, default bench/stall/out).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
ROUNDS=${1:-2}
REQUESTS=${2:-20000}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=/work/main/.venv/bin/python; fi
fi
BUSY=${BUSY:-2}
BASE=${PORT_BASE:-19000}
INACTIVITY=${INACTIVITY:-20}
OUT=${OUT:-bench/stall/out}
mkdir -p "$OUT"
TLS=$((BASE + 1)); CLEAR=$((BASE + 80))
HTTP=$((BASE + 1000 + 80)); GRPC=$((BASE + 1000 + 51)); BROKER=$((BASE + 1000 + 52))

command -v h2load >/dev/null || { echo "repro: h2load (nghttp2-client) is needed" >&2; exit 2; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

PYTHONPATH=$ROOT timeout 3600 "$PYTHON" -m demo.launch --port "$TLS" --cleartext-port "$CLEAR" \
  --http-port "$HTTP" --grpc-port "$GRPC" --broker-port "$BROKER" >"$OUT/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  grep -q "eventgw demo is up" "$OUT/gateway.log" && break
  sleep 0.3
done
grep -q "eventgw demo is up" "$OUT/gateway.log" || { echo "repro: the demo did not start" >&2; tail "$OUT/gateway.log" >&2; exit 1; }

printf '%s' '{"sensor": "stall-0001", "reading": 21.5, "unit": "celsius", "ok": true}' >"$OUT/event.json"
EVENT_HEADERS=(-H 'ce-specversion: 1.0' -H 'ce-id: stall-0001' -H 'ce-source: /bench/stall'
               -H 'ce-type: com.example.stall' -H 'content-type: application/json')

busy_pids=()
start_busy() {
  for _ in $(seq "$BUSY"); do
    timeout 900 sh -c 'while :; do :; done' &
    busy_pids+=($!)
  done
}
stop_busy() {
  for pid in "${busy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  busy_pids=()
}

# name url extra-args...
run() {
  local name=$1 url=$2; shift 2
  local log="$OUT/$name.txt"
  local start=$SECONDS
  timeout 300 h2load -c 64 -m 100 -n "$REQUESTS" --window-bits=12 --connection-window-bits=14 \
    -N "$INACTIVITY" "$@" "$url" >"$log" 2>&1 || echo "(h2load exit $?)" >>"$log"
  local summary max
  summary=$(grep -E '^requests:' "$log" || echo "requests: no summary")
  max=$(grep -E '^time for request:' "$log" | awk '{print $5}' || true)
  echo "$(date -u +%H:%M:%S) $name $((SECONDS - start))s | $summary | max request time ${max:-?}"
}

echo "repro: gateway on TLS $TLS, h2c $CLEAR; $ROUNDS rounds of $REQUESTS requests, $BUSY busy loops"
for round in $(seq "$ROUNDS"); do
  start_busy
  run "r$round-get-h2c" "http://127.0.0.1:$CLEAR/api/hello"
  run "r$round-get-tls" "https://127.0.0.1:$TLS/api/hello"
  run "r$round-events-h2c" "http://127.0.0.1:$CLEAR/events" -d "$OUT/event.json" "${EVENT_HEADERS[@]}"
  run "r$round-events-tls" "https://127.0.0.1:$TLS/events" -d "$OUT/event.json" "${EVENT_HEADERS[@]}"
  stop_busy
done
echo "repro: gateway log in $OUT/gateway.log"
echo "watchdog (eventgw.downstream.h2watch) findings, by kind (error = the gateway's own bug):"
grep -o "h2watch#[a-z]*\] .*stuck for [0-9.]*s ([a-z-]*)\|h2watch#[a-z]*\] .*streams waiting ([a-z-]*)" \
  "$OUT/gateway.log" | sed -E 's/\] .*(stuck|waiting) .*\(/ \1 (/; s/for [0-9.]*s //' \
  | sort | uniq -c || echo "  none"
echo "late sweeps (reactor busy that long): $(grep -c 'stall watchdog ran' "$OUT/gateway.log" || true)," \
  "longest $(grep -o 'stall watchdog ran [0-9.]*s' "$OUT/gateway.log" | awk '{print $4}' | sort -n | tail -1)"
