#!/bin/bash
# Measure POST /events (binary mode) against the C++ broker from bench/build.
# Usage: [EVENTGW_BROKER_CLIENT=grpcio|h2] [PYSPY=out.txt] \
#        [BASE=exported-tree] profiling/events/bench_events.sh [h1|h2c|h1tls|h2tls] [duration]
# Prints events/s and the gateway's CPU us per event (utime+stime from /proc).
set -u
MODE=${1:-h1}
DUR=${2:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d)
BROKER_PORT=${BROKER_PORT:-$((20000 + RANDOM % 10000))}
CLEAR_PORT=$((BROKER_PORT + 1))
TLS_PORT=$((BROKER_PORT + 2))
"$ROOT/bench/build/grpc_backend" --port "$BROKER_PORT" >"$WORK/broker.log" 2>&1 &
BROKER=$!
cat >"$WORK/gw.yaml" <<YAML
listen:
  tls: $TLS_PORT
  cleartext: $CLEAR_PORT
  interface: 127.0.0.1
tls:
  dev_cert_dir: $WORK/cert
master_api:
  http: http://127.0.0.1:9
event_broker:
  grpc: 127.0.0.1:$BROKER_PORT
log:
  access: true
YAML
if [ -n "${EXTRA_YAML:-}" ]; then cat "$EXTRA_YAML" >>"$WORK/gw.yaml"; fi
cd "$WORK"
# BASE=dir: measure the eventgw package exported there (git archive REV | tar -x -C dir).
if [ -n "${BASE:-}" ]; then export PYTHONPATH="$BASE"; fi
taskset -c 0 "$ROOT/.venv/bin/python" "$HERE/twistd_with_client.py" -n --pidfile= eventgw --config "$WORK/gw.yaml" >"$WORK/gw.log" 2>&1 &
GW=$!
for i in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$CLEAR_PORT/" && break; sleep 0.1
done
H='-H ce-specversion:1.0 -H ce-id:bench-0001 -H ce-source:/bench/load -H ce-type:com.example.bench.measured -H content-type:application/json'
DATA='{"sensor": "bench-0001", "reading": 21.5, "unit": "celsius", "ok": true}'
printf '%s' "$DATA" >"$WORK/body"
check=$(curl -s -X POST $H --data-binary @"$WORK/body" "http://127.0.0.1:$CLEAR_PORT/events")
echo "check: $check" >&2
# warm-up
case "$MODE" in
  h1) FLAGS="--h1 -c 16 -m 1"; URL="http://127.0.0.1:$CLEAR_PORT/events" ;;
  h2c) FLAGS="-c 4 -m 16"; URL="http://127.0.0.1:$CLEAR_PORT/events" ;;
  h1tls) FLAGS="--h1 -c 16 -m 1"; URL="https://127.0.0.1:$TLS_PORT/events" ;;
  h2tls) FLAGS="-c 4 -m 16"; URL="https://127.0.0.1:$TLS_PORT/events" ;;
esac
taskset -c 1 h2load $FLAGS -D 2 -d "$WORK/body" \
  -H 'ce-specversion: 1.0' -H 'ce-id: bench-0001' -H 'ce-source: /bench/load' \
  -H 'ce-type: com.example.bench.measured' -H 'content-type: application/json' \
  "$URL" >/dev/null 2>&1
cpu() { awk '{print $14+$15}' /proc/$GW/stat; }
# context switches of every thread of the gateway (grpcio runs its own threads)
switches() { cat /proc/$GW/task/*/status | awk '/ctxt_switches/{n+=$2} END{print n}'; }
s0=$(switches)
c0=$(cpu)
if [ -n "${PYSPY:-}" ]; then
  "$ROOT/.venv/bin/py-spy" record -p $GW -d $((DUR - 1)) -r 200 --nonblocking -f raw -o "$PYSPY" >"$WORK/pyspy.log" 2>&1 &
  SPY=$!
fi
# RATE=N: a fixed N events/s in all (h2load --rps per connection, -n events) instead of
# as many as the gateway takes; CPU per event then does not depend on batching.
if [ -n "${RATE:-}" ]; then
  conns=$(echo $FLAGS | sed 's/.*-c \([0-9]*\).*/\1/')
  LOAD="--rps $((RATE / conns)) -n $((RATE * DUR))"
else
  LOAD="-D $DUR"
fi
taskset -c 1 timeout $((DUR * 3 + 10)) h2load $FLAGS $LOAD -d "$WORK/body" \
  -H 'ce-specversion: 1.0' -H 'ce-id: bench-0001' -H 'ce-source: /bench/load' \
  -H 'ce-type: com.example.bench.measured' -H 'content-type: application/json' \
  "$URL" >"$WORK/h2load.out" 2>&1
c1=$(cpu)
s1=$(switches)
threads=$(ls /proc/$GW/task | wc -l)
done_n=$(awk '/^requests:/{print $8}' "$WORK/h2load.out")
succ=$(awk '/^status codes:/{print $3}' "$WORK/h2load.out")
rps=$(awk '/^finished in/{print $4}' "$WORK/h2load.out")
ticks=$((c1 - c0))
hz=$(getconf CLK_TCK)
us=$(python3 -c "print(round($ticks/$hz*1e6/max($succ,1),1))")
echo "mode=$MODE succeeded=$succ (2xx) done=$done_n rate=$rps cpu_s=$(python3 -c "print($ticks/$hz)") cpu_us_per_event=$us threads=$threads switches_per_event=$(python3 -c "print(round(($s1-$s0)/max($succ,1),2))")"
grep -E "^status codes|errored" "$WORK/h2load.out" >&2
if [ -n "${PYSPY:-}" ]; then wait $SPY; tail -2 "$WORK/pyspy.log" >&2; fi
kill $GW $BROKER; wait $GW $BROKER 2>/dev/null
if [ -n "${KEEP:-}" ]; then echo "work dir $WORK" >&2; else rm -rf "$WORK"; fi
