"""Run a profiling harness with the request metrics on, off, or in multiprocess mode.

Usage::

    .venv/bin/python profiling/metrics/onoff.py on|off|mp HARNESS [harness options]

``off`` replaces the access log's ``record_exchange`` and the relay's
``grpc_answered`` by no-ops (everything else is the same code); ``mp`` runs with
``PROMETHEUS_MULTIPROC_DIR`` set (the values of a ``--workers`` worker: memory-mapped
files).  ``profiling/metrics/compare.sh`` alternates the three and prints the figures.
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

mode = sys.argv.pop(1)
harness = sys.argv.pop(1)
if mode == "mp":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="eventgw-mp-")
if mode == "off":
    import eventgw.downstream.accesslog as accesslog
    import eventgw.grpc.target as grpc_target

    accesslog.record_exchange = lambda *args: None  # type: ignore[assignment]
    grpc_target.grpc_answered = lambda *args: None  # type: ignore[assignment]
sys.argv[0] = harness
runpy.run_path(harness, run_name="__main__")
