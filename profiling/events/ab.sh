#!/bin/bash
# Interleaved A/B runs of bench_events.sh; prints each run and the medians per variant.
# Usage: [RATE=N] profiling/events/ab.sh MODE DURATION REPEATS label=BASE_DIR_OR_-:CLIENT ...
#   e.g. ab.sh h1tls 6 3 before=/tmp/evbase_orig:grpcio now=-:h2
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=$1; DUR=$2; REP=$3; shift 3
OUT=$(mktemp)
for r in $(seq 1 "$REP"); do
  for spec in "$@"; do
    label=${spec%%=*}; rest=${spec#*=}; base=${rest%%:*}; client=${rest#*:}
    [ "$base" = "-" ] && base=""
    line=$(BASE=$base EVENTGW_BROKER_CLIENT=$client "$HERE/bench_events.sh" "$MODE" "$DUR" 2>/dev/null)
    echo "$label $line" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import collections, re, statistics, sys
rates = collections.defaultdict(list); cpus = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label = line.split()[0]
    m = re.search(r"rate=([\d.]+).*cpu_us_per_event=([\d.]+)", line)
    if m:
        rates[label].append(float(m[1])); cpus[label].append(float(m[2]))
for label in rates:
    print(f"{label:12s} median {statistics.median(rates[label]):8.1f} ev/s   "
          f"{statistics.median(cpus[label]):6.1f} us CPU/event   (n={len(rates[label])})")
PY
rm -f "$OUT"
