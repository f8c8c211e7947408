"""The /events endpoint's own cost per event, in memory: no sockets, no broker.

A binary-mode event goes through EventsEndpoint (route, metadata, parse, transcode,
response JSON) to a client that answers at once, and a writer that only records.

    .venv/bin/python profiling/events/endpoint_cost.py            # us per event
    .venv/bin/python profiling/events/endpoint_cost.py --profile  # cProfile top 30
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred, succeed

from eventgw.config import BrokerUpstream, Limits
from eventgw.events.target import EventsEndpoint
from eventgw.events.transcode import HttpRoute
from eventgw.exchange import Headers, RequestHead

HEADERS: Headers = [
    (b"host", b"127.0.0.1:9080"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
    (b"ce-specversion", b"1.0"),
    (b"ce-id", b"bench-0001"),
    (b"ce-source", b"/bench/load"),
    (b"ce-type", b"com.example.bench.measured"),
    (b"content-type", b"application/json"),
    (b"content-length", b"74"),
]
BODY = b'{"sensor": "bench-0001", "reading": 21.5, "unit": "celsius", "ok": true}'


class InstantClient:
    target = "127.0.0.1:1"

    def call(self, route: HttpRoute, request: Message, metadata: Any = (), *,
             timeout: float | None = None) -> Deferred[Message]:
        response = route.response_class()
        response.id = request.event.id  # type: ignore[attr-defined]
        return succeed(response)

    def close(self) -> Deferred[None]:
        return succeed(None)


class NullWriter:
    head_sent = False

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        self.head_sent = True

    def write_body(self, data: bytes) -> None:
        pass

    def end(self, trailers: Headers | None = None) -> None:
        pass

    def abort(self, error_code: int = 2) -> None:
        pass


def one(endpoint: EventsEndpoint) -> None:
    head = RequestHead(method=b"POST", target=b"/events", authority=b"127.0.0.1:9080",
                       scheme=b"http", headers=HEADERS, protocol="HTTP/1.1",
                       peer="127.0.0.1", content_length=len(BODY))
    handler = endpoint.start_exchange(head, NullWriter())  # type: ignore[arg-type]
    handler.body_received(BODY)
    handler.body_ended([])


def main() -> None:
    endpoint = EventsEndpoint(BrokerUpstream(target="127.0.0.1:1", tls=False), Limits(),
                              client="h2")
    endpoint.client = InstantClient()  # type: ignore[assignment]
    n = 20000
    for _ in range(1000):
        one(endpoint)
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(n):
            one(endpoint)
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)
        return
    best = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            one(endpoint)
        best.append((time.perf_counter() - start) / n * 1e6)
    print(f"endpoint: {min(best):.1f} us per event (best of 5), runs {[round(b, 1) for b in best]}")


if __name__ == "__main__":
    main()
