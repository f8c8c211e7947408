"""What one request HEADERS costs in h2, configured as eventgw.upstream.h2client does.

    .venv/bin/python profiling/events/h2_headers_cost.py
"""

from __future__ import annotations

import os
import timeit

from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import NeverIndexedHeaderTuple


def connection() -> H2Connection:
    conn = H2Connection(H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False,
        normalize_inbound_headers=False))
    conn.initiate_connection()
    conn.data_to_send()
    return conn


BASE = [(b":method", b"POST"), (b":scheme", b"http"),
        (b":path", b"/eventbroker.v1.EventBroker/Publish"), (b":authority", b"127.0.0.1:50052"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"grpc-timeout", b"5000m")]


def run(label: str, make_headers: object) -> None:
    conn = connection()
    state = {"sid": 1}

    def one() -> None:
        sid = state["sid"]
        state["sid"] = sid + 2
        conn.send_headers(sid, make_headers())  # type: ignore[operator]
        conn.send_data(sid, b"\x00\x00\x00\x00\x40" + b"x" * 64, end_stream=True)
        conn.data_to_send()
        conn.outbound_flow_control_window = 65535  # as if the peer acknowledged
        # close the stream locally so the connection does not fill up
        conn.streams.pop(sid, None)

    n = 5000
    t = timeit.timeit(one, number=n)
    print(f"{label:40s} {t / n * 1e6:7.1f} us per HEADERS+DATA")


def rid() -> bytes:
    return os.urandom(16).hex().encode()


run("no metadata", lambda: BASE)
run("x-request-id indexed", lambda: [*BASE, (b"x-request-id", rid())])
run("x-request-id never indexed",
    lambda: [*BASE, NeverIndexedHeaderTuple(b"x-request-id", rid())])
run("never indexed, 16 hex chars",
    lambda: [*BASE, NeverIndexedHeaderTuple(b"x-request-id", os.urandom(8).hex().encode())])
run("never indexed, 22 char base64url",
    lambda: [*BASE, NeverIndexedHeaderTuple(
        b"x-request-id", __import__("base64").urlsafe_b64encode(os.urandom(16))[:22])])
