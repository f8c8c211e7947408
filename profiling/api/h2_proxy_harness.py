"""CPU cost of ``/api`` GETs over HTTP/2 (h2server -> ApiProxy -> pool), in memory.

An ``h2`` client sends ``--batch`` concurrent GETs per round on one connection to
:class:`~eventgw.downstream.h2server.H2ServerProtocol`; the proxy's pooled upstream connections
write into ``StringTransport``s and get canned nginx responses.  Only the gateway's
own calls (``dataReceived`` on its connections, the clock's turns) are timed, so the
figure is the gateway's CPU per request minus sockets and TLS.

Usage::

    .venv/bin/python profiling/api/h2_proxy_harness.py [--batch 16] [--profile]
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

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, StreamEnded
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from eventgw.api.target import ApiProxy
from eventgw.config import ApiUpstream, Limits
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.upstream.httppool import UpstreamPool

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 28 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 28\r\nConnection: keep-alive\r\n\r\n"
    + b"x" * 28
)


class _Endpoint:
    def __init__(self) -> None:
        self.conns: list[tuple[Any, StringTransport]] = []

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        self.conns.append((proto, transport))
        return defer.succeed(proto)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000, help="rounds")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    clock = Clock()
    upstream = ApiUpstream(scheme="http", host="127.0.0.1", port=8080, url="http://127.0.0.1:8080")
    endpoint = _Endpoint()
    pool = UpstreamPool(upstream, reactor=clock, endpoint=endpoint)  # type: ignore[arg-type]
    proxy = ApiProxy(upstream, Limits(), reactor=clock, pool=pool)
    down = H2ServerProtocol(proxy, Limits(), scheme=b"https", reactor=clock)
    down_transport = StringTransport()
    down.makeConnection(down_transport)  # type: ignore[no-untyped-call]
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    spent = [0.0]
    prof = cProfile.Profile() if args.profile else None

    def timed(function: Any, *a: Any) -> None:
        start = time.thread_time()
        if prof is not None and measuring[0]:
            prof.enable()
        function(*a)
        if prof is not None and measuring[0]:
            prof.disable()
        spent[0] += time.thread_time() - start

    measuring = [False]
    done = [0]

    def round_() -> None:
        for _ in range(args.batch):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, [(b":method", b"GET"), (b":path", b"/api/small"),
                                      (b":scheme", b"https"), (b":authority", b"127.0.0.1"),
                                      (b"user-agent", b"h2load")], end_stream=True)
        while True:
            moved = False
            data = client.data_to_send()
            if data:
                timed(down.dataReceived, data)
                moved = True
            for proto, transport in endpoint.conns:
                if transport.value():
                    transport.clear()
                    timed(proto.dataReceived, RESPONSE)
                    moved = True
            timed(clock.advance, 0)
            data = down_transport.value()
            if data:
                down_transport.clear()
                for event in client.receive_data(data):
                    if isinstance(event, StreamEnded):
                        done[0] += 1
                    elif isinstance(event, DataReceived):
                        client.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                moved = True
            if not moved:
                break

    for _ in range(50):
        round_()
    spent[0] = 0.0
    done[0] = 0
    measuring[0] = True
    for _ in range(args.n):
        round_()
    print(f"{spent[0] / done[0] * 1e6:.1f} us CPU per request ({done[0]} requests, "
          f"{len(endpoint.conns)} upstream connections)")
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())


if __name__ == "__main__":
    main()
