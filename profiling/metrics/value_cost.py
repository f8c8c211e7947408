"""What one counter increment and one histogram observation cost in prometheus-client.

``.venv/bin/python profiling/metrics/value_cost.py mem`` (in-memory values, one process)
or ``... mp`` (multiprocess mode, as with ``--workers``: values in mmap files).
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit

if len(sys.argv) > 1 and sys.argv[1] == "mp":
    # Must be set before prometheus_client is imported: it picks its value class then.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()

from prometheus_client import CollectorRegistry, Counter, Histogram

MODE = sys.argv[1] if len(sys.argv) > 1 else "mem"
ROUNDS = 200_000

registry = CollectorRegistry()
counter = Counter("x_total", "x", ["a", "b", "c"], registry=registry).labels(
    "api", "HTTP/1.1", "200"
)
histogram = Histogram("d_seconds", "d", ["route"], registry=registry).labels("api")
per_inc = timeit.timeit(counter.inc, number=ROUNDS) / ROUNDS
per_observe = timeit.timeit(lambda: histogram.observe(0.0123), number=ROUNDS) / ROUNDS
print(f"{MODE}: counter.inc {per_inc * 1e6:.2f} us, histogram.observe {per_observe * 1e6:.2f} us")
