#!/bin/sh
# CPU per request of the in-memory harnesses with the metrics on, off and in
# multiprocess mode, alternating, 5 rounds each.  Run from the checkout's root:
#   PYTHONPATH=$PWD profiling/metrics/compare.sh [python]
PY=${1:-.venv/bin/python}
for round in 1 2 3 4 5; do
  for mode in on off mp; do
    printf 'h1   %-3s ' $mode; $PY profiling/metrics/onoff.py $mode profiling/api/h1_proxy_harness.py -n 20000 | tail -1
    printf 'grpc %-3s ' $mode; $PY profiling/metrics/onoff.py $mode profiling/grpc/relay_harness.py | tail -1
  done
done
