"""CPU per access-log line: twistd's own text observer against the gateway's writer.

Usage::

    .venv/bin/python profiling/accesslog/observer_cost.py [LINES]

Emits LINES access events (``log_exchange``, as a proxied request does) into a file,
once through ``twisted.logger.textFileLogObserver`` (what twistd installs by default:
a clock formatted and a flush per line) and once through
``eventgw.logwriter.GatewayLogObserver`` in each ``log.format`` (stamp cached per
second, lines batched and written by the writer thread), and prints the process CPU
time per line (the writer thread included) and the wall time of the emitting loop.
The reactor is a Clock that says it runs, advanced every 50 lines (a reactor turn).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher, textFileLogObserver

from eventgw.downstream.accesslog import log_exchange
from eventgw.exchange import RequestHead
from eventgw.logformat import LineFormat
from eventgw.logwriter import GatewayLogObserver, LogWriter


class _Running(Clock):
    running = True


def _head() -> RequestHead:
    head = RequestHead(
        method=b"GET", target=b"/api/small", authority=b"gw", scheme=b"https",
        headers=[], protocol="HTTP/1.1", peer="127.0.0.1", content_length=0,
        body_expected=False,
    )
    head.log_fields.update(route="api", upstream="http://127.0.0.1:8080", request_id="r" * 32)
    return head


def measure(name: str, lines: int) -> None:
    fd, path = tempfile.mkstemp(prefix="eventgw-log-")
    out = os.fdopen(fd, "w")
    clock = _Running()
    writer: LogWriter | None = None
    observer: Any
    if name == "twistd text":
        observer = textFileLogObserver(out)
    else:
        writer = LogWriter(out, clock)
        observer = GatewayLogObserver(writer, LineFormat(name.split()[-1]))
    globalLogPublisher.addObserver(observer)
    head = _head()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for index in range(lines):
        log_exchange(head, 200, 0, 28, 0.0004)
        if index % 50 == 49:
            clock.advance(1.0)
    wall = time.perf_counter() - wall0
    if writer is not None:
        writer.close()
    cpu = time.process_time() - cpu0
    globalLogPublisher.removeObserver(observer)
    out.close()
    os.unlink(path)
    print(f"{name:14s} {cpu / lines * 1e6:6.1f} µs CPU/line  "
          f"{wall / lines * 1e6:6.1f} µs in the emitting loop/line")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for _ in range(2):
        for name in ("twistd text", "gateway text", "gateway json"):
            measure(name, count)
