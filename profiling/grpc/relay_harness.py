"""CPU cost of the gRPC relay path (flow 3), in memory: no sockets, no TLS.

A real ``h2`` client drives :class:`~eventgw.downstream.h2server.H2ServerProtocol`, whose gRPC
streams go to :class:`~eventgw.grpc.target.GrpcRelay`, whose upstream connection (the
pool's :class:`~eventgw.upstream.h2client.H2ClientConnection`) talks to a real ``h2``
server standing in for the Master API.  Bytes move through ``StringTransport``s; time
is a ``task.Clock``.  Only the gateway's own calls (``dataReceived`` on both of its
connections) are timed and, with ``--profile``, profiled: the two peers' work is
excluded, so the figure is the gateway's CPU per call, as the benchmark's
``/proc`` figure would show it minus sockets and TLS.

Usage::

    .venv/bin/python profiling/grpc/relay_harness.py                 # unary, 16 per round
    .venv/bin/python profiling/grpc/relay_harness.py --batch 1       # one call at a time
    .venv/bin/python profiling/grpc/relay_harness.py --stream        # 256 x 16 KiB per call
    .venv/bin/python profiling/grpc/relay_harness.py --profile       # cProfile top functions
    .venv/bin/python profiling/grpc/relay_harness.py --log-observer  # render access lines

Each access event is rendered by a text observer, as ``twistd`` does, only with
``--log-observer``; without it, events are emitted to no observer at all.
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
from h2.events import (
    DataReceived,
    RequestReceived,
    StreamEnded,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher, textFileLogObserver

from eventgw.config import GrpcUpstream, Limits
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.grpc.target import GrpcRelay
from eventgw.routing import MethodPolicy
from eventgw.upstream.h2client import H2ClientConnection
from eventgw.upstream.h2pool import GrpcConnectionPool

UNARY_PATH = b"/bench.echo.Echo/Unary"
STREAM_PATH = b"/bench.echo.Echo/Stream"
MESSAGE = b"\x00" + (100).to_bytes(4, "big") + b"x" * 100
STREAM_CHUNK = 16 * 1024
STREAM_COUNT = 256


class Rig:
    """The gateway between a client and a Master API, all in memory."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.requests: dict[int, bytes] = {}
        self.streaming: dict[int, int] = {}
        config = GrpcUpstream(host="127.0.0.1", port=50051, tls=False, address="127.0.0.1:50051")
        self.pool = GrpcConnectionPool(config, reactor=self.clock)
        self.relay = GrpcRelay(config, MethodPolicy.from_lists(["/"], []), reactor=self.clock,
                               pool=self.pool)
        # Downstream: the client and the gateway's server protocol.
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None,
                                                   validate_inbound_headers=False,
                                                   validate_outbound_headers=False,
                                                   normalize_outbound_headers=False))
        self.down = H2ServerProtocol(self.relay, Limits(), scheme=b"http", reactor=self.clock)
        self.down_transport = StringTransport()
        self.down.makeConnection(self.down_transport)  # type: ignore[no-untyped-call]
        # Upstream: the gateway's client connection and the Master API.
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                                   validate_inbound_headers=False,
                                                   validate_outbound_headers=False,
                                                   normalize_outbound_headers=False))
        self.up = H2ClientConnection(self.pool, self.clock)
        self.up_transport = StringTransport()
        self.up.makeConnection(self.up_transport)  # type: ignore[no-untyped-call]
        self.server.initiate_connection()
        self.server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
                                     SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.server.increment_flow_control_window(16 << 20)
        self.client.initiate_connection()
        self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.client.increment_flow_control_window(16 << 20)
        self.gateway_seconds = 0.0
        self.profiler: cProfile.Profile | None = None
        self.pump()
        assert self.up.ready, "upstream connection not ready"

    # -- moving bytes -------------------------------------------------------------

    def _timed(self, function: Any, data: bytes) -> None:
        profiler = self.profiler
        if profiler is not None:
            profiler.enable()
        start = time.thread_time()
        function(data)
        self.gateway_seconds += time.thread_time() - start
        if profiler is not None:
            profiler.disable()

    def pump(self) -> None:
        """Move bytes until every side is quiet."""
        while True:
            moved = False
            data = self.client.data_to_send()
            if data:
                self._timed(self.down.dataReceived, data)
                moved = True
            data = self.up_transport.value()
            if data:
                self.up_transport.clear()
                self.serve(self.server.receive_data(data))
                moved = True
            data = self.server.data_to_send()
            if data:
                self._timed(self.up.dataReceived, data)
                moved = True
            data = self.down_transport.value()
            if data:
                self.down_transport.clear()
                self.consume(self.client.receive_data(data))
                moved = True
            if not moved:
                return

    # -- the peers ------------------------------------------------------------------

    def serve(self, events: list[Any]) -> None:
        server = self.server
        for event in events:
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = dict(event.headers)[b":path"]
            elif isinstance(event, DataReceived):
                if event.flow_controlled_length:
                    server.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
            elif isinstance(event, StreamEnded):
                sid = event.stream_id
                server.send_headers(sid, [(b":status", b"200"),
                                          (b"content-type", b"application/grpc")])
                if self.requests.pop(sid) == STREAM_PATH:
                    self.streaming[sid] = STREAM_COUNT
                    self.feed_stream(sid)
                else:
                    server.send_data(sid, MESSAGE)
                    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            elif isinstance(event, WindowUpdated):
                for sid in list(self.streaming):
                    self.feed_stream(sid)

    def feed_stream(self, sid: int) -> None:
        server = self.server
        while self.streaming.get(sid, 0) > 0:
            window = min(server.local_flow_control_window(sid), server.max_outbound_frame_size)
            if window < STREAM_CHUNK:
                return
            server.send_data(sid, self.chunk)
            self.streaming[sid] -= 1
        if sid in self.streaming:
            del self.streaming[sid]
            server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)

    def consume(self, events: list[Any]) -> None:
        client = self.client
        for event in events:
            if isinstance(event, DataReceived):
                self.received += len(event.data)
                if event.flow_controlled_length:
                    client.acknowledge_received_data(event.flow_controlled_length,
                                                     event.stream_id)
            elif isinstance(event, TrailersReceived):
                status = dict(event.headers).get(b"grpc-status")
                if status != b"0":
                    raise AssertionError(f"call failed: {event.headers}")
                self.done += 1

    chunk = b"\x00" + (STREAM_CHUNK - 5).to_bytes(4, "big") + b"y" * (STREAM_CHUNK - 5)
    received = 0
    done = 0

    def calls(self, path: bytes, count: int) -> None:
        client = self.client
        for _ in range(count):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"),
                (b"te", b"trailers"), (b"user-agent", b"h2load nghttp2/1.52.0"),
            ])
            client.send_data(sid, MESSAGE, end_stream=True)
        self.pump()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=16, help="calls sent per round")
    parser.add_argument("--stream", action="store_true", help="server-streaming calls")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--log-observer", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the minimum is shown")
    args = parser.parse_args()
    if args.log_observer:
        globalLogPublisher.addObserver(textFileLogObserver(io.StringIO()))
    path = STREAM_PATH if args.stream else UNARY_PATH
    calls = args.calls if not args.stream else max(args.calls // 1000, 8)
    batch = args.batch if not args.stream else min(args.batch, 2)
    figures: list[float] = []
    for _ in range(args.repeats):
        rig = Rig()
        # Warm up (hpack tables, code paths), then measure.
        rig.calls(path, batch)
        rig.gateway_seconds = 0.0
        rig.done = 0
        rig.received = 0
        if args.profile:
            rig.profiler = cProfile.Profile()
        for _ in range(calls // batch):
            rig.calls(path, batch)
        if args.stream:
            figures.append(rig.gateway_seconds / (rig.received / 1e9))
        else:
            figures.append(rig.gateway_seconds / rig.done * 1e6)
    figures.sort()
    spread = " ".join(f"{figure:.2f}" for figure in figures)
    if args.stream:
        print(f"{rig.done} streaming calls, {rig.received / 1e6:.1f} MB per round: "
              f"min {figures[0]:.2f} CPU s per GB (gateway only; rounds: {spread})")
    else:
        print(f"{rig.done} unary calls per round, batch {batch}: min {figures[0]:.1f} us "
              f"CPU per call (gateway only; rounds: {spread})")
    if rig.profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(rig.profiler, stream=out)
        stats.sort_stats("tottime").print_stats(args.top)
        print(out.getvalue())


if __name__ == "__main__":
    main()
