"""CPU cost of the ``/api`` reverse-proxy path over HTTP/1.1, in memory: no sockets, no TLS.

A client's request bytes go into :class:`~eventgw.downstream.http1server.Http1ServerProtocol`,
which hands the exchange to :class:`~eventgw.api.target.ApiProxy`; the proxy's pooled
:class:`~eventgw.upstream.httppool.UpstreamConnection` writes the upstream request into a
``StringTransport`` and gets a canned nginx response back.  Time is a ``task.Clock``
(advanced by 0 after each request so scheduled flushes run).  The whole loop is timed
(the client and upstream sides are only byte copies), so the figure is the gateway's
CPU per request minus sockets, TLS and the reactor.

Usage::

    .venv/bin/python profiling/api/h1_proxy_harness.py               # timing
    .venv/bin/python profiling/api/h1_proxy_harness.py --size 16384  # 16 KiB body
    .venv/bin/python profiling/api/h1_proxy_harness.py --profile     # cProfile top functions
    .venv/bin/python profiling/api/h1_proxy_harness.py --log-observer  # render access lines
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher, textFileLogObserver

from eventgw.api.target import ApiProxy
from eventgw.config import ApiUpstream, Limits
from eventgw.downstream.http1server import Http1ServerProtocol
from eventgw.gateway import Gateway  # noqa: F401
from eventgw.upstream.httppool import UpstreamPool

REQUEST = (
    b"GET /api/small HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n\r\n"
)


def upstream_response(size: int) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n"
        % size
    ) + b"x" * size


class _Endpoint:
    def __init__(self) -> None:
        self.transports: list[StringTransport] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.transports.append(transport)
        return defer.succeed(proto)


def run(n: int, size: int, profile: bool) -> None:
    clock = Clock()
    upstream = ApiUpstream(scheme="http", host="127.0.0.1", port=8080, url="http://127.0.0.1:8080")
    endpoint = _Endpoint()
    pool = UpstreamPool(upstream, reactor=clock, endpoint=endpoint)  # type: ignore[arg-type]
    proxy = ApiProxy(upstream, Limits(), reactor=clock, pool=pool)
    down = Http1ServerProtocol(proxy, Limits(), scheme=b"https", reactor=clock)
    client = StringTransport()
    down.makeConnection(client)  # type: ignore[no-untyped-call]
    response = upstream_response(size)

    def one() -> None:
        down.dataReceived(REQUEST)
        up = endpoint.transports[-1]
        up.clear()
        conn = next(iter(pool._connections))
        conn.dataReceived(response)
        clock.advance(0)
        client.clear()

    for _ in range(200):
        one()
    assert len(endpoint.transports) == 1
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof:
        prof.enable()
    for _ in range(n):
        one()
    if prof:
        prof.disable()
    elapsed = time.process_time() - start
    print(f"{elapsed / n * 1e6:.1f} us CPU per request ({n} requests, body {size} bytes)")
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--log-observer", action="store_true")
    args = parser.parse_args()
    if args.log_observer:
        globalLogPublisher.addObserver(textFileLogObserver(open("/dev/null", "w")))
    run(args.n, args.size, args.profile)


if __name__ == "__main__":
    main()
