"""Races on the upstream HTTP/2 client connection (eventgw.upstream.h2client).

Frames that cross on the wire -- the Master API's answer and the gateway's own
RST_STREAM, a GOAWAY and a new stream -- must cost at most the one call involved,
never the connection.  The peers here:

* :class:`FramePeer`, a server written frame by frame with hyperframe and hpack on
  127.0.0.1, which sends exactly the crossing frames and records every frame the
  gateway sends;
* an ``h2`` server connection fed through a ``StringTransport`` with a ``Clock``
  (deadline and keepalive pacing, where time has to be exact);
* the demo Master API (grpcio), for the same races at full speed and for its ping
  policy.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import grpc
import hpack
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from demo.masterapi._proto import demo_pb2
from demo.masterapi.grpc_server import ItemsServicer
from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.config import BrokerUpstream, GrpcUpstream
from eventgw.errors import BrokerCallFailed, GrpcStatus
from eventgw.events.h2broker import H2BrokerClient
from eventgw.events.target import EVENT_BROKER_SERVICE
from eventgw.events.transcode import HttpRoute, RouteTable
from eventgw.exchange import Headers
from eventgw.grpc.target import GrpcRelay
from eventgw.routing import MethodPolicy
from eventgw.upstream.h2client import H2ClientConnection, UpstreamStream
from eventgw.upstream.h2pool import GrpcConnectionPool
from tests.support import RecordingWriter, make_head

reactor: Any = global_reactor
WAIT = 30.0  # seconds any single wait may take before the test fails (only when broken)
GET_ITEM = b"/demo.masterapi.v1.Items/GetItem"
WATCH_ITEMS = b"/demo.masterapi.v1.Items/WatchItems"
POLICY = MethodPolicy.from_lists(["/"], [])
REQUEST: Headers = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", GET_ITEM),
    (b":authority", b"127.0.0.1"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
RESPONSE_HEAD: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]
EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"


@inlineCallbacks
def wait_for(condition: Callable[[], object], timeout: float = WAIT) -> Any:
    """Poll ``condition`` on the reactor until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        yield deferLater(reactor, 0.005, lambda: None)


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


def config(port: int, **kw: Any) -> GrpcUpstream:
    return GrpcUpstream(host="127.0.0.1", port=port, tls=False,
                        address=f"127.0.0.1:{port}", connect_timeout=5.0, **kw)


def grpc_status(headers: Headers | None) -> int | None:
    for name, value in headers or []:
        if name == b"grpc-status":
            return int(value)
    return None


def publish_route() -> HttpRoute:
    table = RouteTable.from_services([EVENT_BROKER_SERVICE])
    return next(r for r in table.routes if r.grpc_path.endswith("/Publish"))


class Recorder:
    """A StreamListener that records what its stream reports and acknowledges DATA."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.ended = False
        self.stream: UpstreamStream | None = None

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        self.events.append(("headers", list(headers), end_stream))
        self.ended = self.ended or end_stream

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.events.append(("data", data))
        if self.stream is not None:
            self.stream.acknowledge(flow_length)
        self.ended = self.ended or end_stream

    def upstream_trailers(self, trailers: Headers) -> None:
        self.events.append(("trailers", list(trailers)))
        self.ended = True

    def upstream_reset(self, error_code: int) -> None:
        self.events.append(("reset", error_code))
        self.ended = True

    def upstream_failed(self, reason: str) -> None:
        self.events.append(("failed", reason))
        self.ended = True

    def upstream_buffered(self, queued: int) -> None:
        pass

    def upstream_deadline_exceeded(self) -> None:
        self.events.append(("deadline",))
        self.ended = True


# --- a server written frame by frame -----------------------------------------------------


class FramePeer(Protocol):
    """An HTTP/2 server that sends what the test says, frame by frame, and records
    every frame the gateway sends (``frames``) and every request head (``requests``)."""

    factory: FramePeerFactory

    def connectionMade(self) -> None:
        self.buffer = FrameBuffer(server=True)
        self.buffer.max_frame_size = 16384
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.frames: list[Frame] = []
        self.requests: dict[int, Headers] = {}
        self.factory.peers.append(self)
        if self.factory.settings_delay:
            reactor.callLater(self.factory.settings_delay, self.send_settings)
        else:
            self.send_settings()

    def send_settings(self) -> None:
        if self.transport is not None:
            self.send(SettingsFrame(0, settings={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.factory.max_streams,
            }))

    def dataReceived(self, data: bytes) -> None:
        self.buffer.add_data(data)
        for frame in self.buffer:
            self.frames.append(frame)
            if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.send(SettingsFrame(0, flags=["ACK"]))
            elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
                self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
            elif isinstance(frame, HeadersFrame):
                headers = [(bytes(n), bytes(v)) for n, v in
                           self.decoder.decode(frame.data, raw=True)]
                self.requests[frame.stream_id] = headers
            self.factory.on_frame(self, frame)

    def send(self, *frames: Frame) -> None:
        if self.transport is not None:
            self.transport.write(b"".join(f.serialize() for f in frames))

    # -- what scripts send --
    def headers(self, stream_id: int, headers: Headers, end: bool = False) -> HeadersFrame:
        flags = ["END_HEADERS", "END_STREAM"] if end else ["END_HEADERS"]
        return HeadersFrame(stream_id, self.encoder.encode(headers), flags=flags)

    def data(self, stream_id: int, payload: bytes, end: bool = False) -> DataFrame:
        return DataFrame(stream_id, payload, flags=["END_STREAM"] if end else [])

    def answer(self, stream_id: int, payload: bytes = EMPTY_MESSAGE) -> list[Frame]:
        """A whole OK response."""
        return [self.headers(stream_id, RESPONSE_HEAD), self.data(stream_id, payload),
                self.headers(stream_id, OK_TRAILERS, end=True)]

    def received(self, kind: type[Frame], stream_id: int | None = None) -> list[Any]:
        return [f for f in self.frames if isinstance(f, kind)
                and (stream_id is None or f.stream_id == stream_id)]


class FramePeerFactory(Factory):
    protocol = FramePeer
    noisy = False

    def __init__(self, on_frame: Callable[[FramePeer, Frame], None] | None = None,
                 max_streams: int = 100, settings_delay: float = 0.0) -> None:
        self.on_frame = on_frame or (lambda peer, frame: None)
        self.max_streams = max_streams
        self.settings_delay = settings_delay
        self.peers: list[FramePeer] = []


class _PeerTestCase(TestCase):
    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def pool(self, port: int, **kw: Any) -> GrpcConnectionPool:
        pool = GrpcConnectionPool(config(port, **kw), reactor=reactor)
        self.addCleanup(pool.close)
        return pool

    def open(self, pool: GrpcConnectionPool, end: bool = True) -> Recorder:
        recorder = Recorder()
        recorder.stream = pool.open_stream(list(REQUEST), recorder)
        recorder.stream.send(EMPTY_MESSAGE, end=end)
        return recorder

    def logged(self) -> list[str]:
        """Every log line from here on (formatted), for checking warnings."""
        from twisted.logger import formatEvent

        lines: list[str] = []

        def observer(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines


class LateFrameTests(_PeerTestCase):
    """Frames the Master API sent before it heard of the gateway's RST_STREAM."""

    @inlineCallbacks
    def _reset_then_new_stream(self, peer_factory: FramePeerFactory) -> Any:
        """Stream 1 is opened and reset (CANCEL); stream 3 is opened after it, so
        h2 has forgotten stream 1 by the time the peer's late frames arrive."""
        pool = self.pool(self.listen(peer_factory))
        first = self.open(pool)
        yield wait_for(lambda: peer_factory.peers and 1 in peer_factory.peers[0].requests)
        peer = peer_factory.peers[0]
        assert first.stream is not None
        first.stream.reset(ErrorCodes.CANCEL)
        second = self.open(pool)
        yield wait_for(lambda: 3 in peer.requests and peer.received(RstStreamFrame, 1))
        connection = pool._connections[0]
        return pool, peer, connection, first, second

    @inlineCallbacks
    def test_late_response_on_reset_stream_is_ignored(self) -> Any:
        """The whole response of a stream the gateway reset (HEADERS, DATA, trailers)
        arriving after another stream was opened is dropped: the connection stays up,
        no GOAWAY and no second RST_STREAM go out, the other stream completes, and
        the header blocks were decoded (the next response's HPACK still matches)."""
        factory = FramePeerFactory()
        pool, peer, connection, first, second = yield self._reset_then_new_stream(factory)
        # A header the encoder indexes: the next block refers to it.
        head = [*RESPONSE_HEAD, (b"x-late", b"indexed")]
        peer.send(peer.headers(1, head), peer.data(1, EMPTY_MESSAGE),
                  peer.headers(1, OK_TRAILERS, end=True))
        peer.send(peer.headers(3, head), peer.data(3, EMPTY_MESSAGE),
                  peer.headers(3, OK_TRAILERS, end=True))
        yield wait_for(lambda: second.ended)
        self.assertEqual(second.events[0], ("headers", head, False))
        self.assertEqual(second.events[-1], ("trailers", OK_TRAILERS))
        self.assertEqual(first.events, [])
        self.assertEqual(peer.received(GoAwayFrame), [])
        self.assertEqual(len(peer.received(RstStreamFrame, 1)), 1)
        self.assertFalse(connection.lost)
        self.assertEqual(pool._connections, [connection])

    @inlineCallbacks
    def test_late_data_is_credited_to_the_connection_window(self) -> Any:
        """Late DATA on a reset stream still counts against the connection window and
        is credited back: after more than half the window (9 MiB) of it, the gateway
        has sent a connection WINDOW_UPDATE covering it, and no RST_STREAM answers
        any of those frames."""
        factory = FramePeerFactory()
        _, peer, connection, _, second = yield self._reset_then_new_stream(factory)
        chunk = b"\x00" * 16384
        frames = 9 * 64  # 9 MiB
        peer.send(peer.headers(1, RESPONSE_HEAD), *[peer.data(1, chunk) for _ in range(frames)])
        yield wait_for(lambda: sum(
            f.window_increment for f in peer.received(WindowUpdateFrame, 0)
        ) >= frames * len(chunk))
        peer.send(*peer.answer(3))
        yield wait_for(lambda: second.ended)
        self.assertEqual(second.events[-1], ("trailers", OK_TRAILERS))
        self.assertEqual(len(peer.received(RstStreamFrame, 1)), 1)
        self.assertEqual(peer.received(GoAwayFrame), [])
        self.assertFalse(connection.lost)

    @inlineCallbacks
    def test_late_rst_stream_after_our_reset_is_not_answered(self) -> Any:
        """A RST_STREAM crossing the gateway's own is dropped: RFC 9113 section 5.4.2
        forbids answering a RST_STREAM with one."""
        factory = FramePeerFactory()
        _, peer, _, first, second = yield self._reset_then_new_stream(factory)
        late = RstStreamFrame(1)
        late.error_code = ErrorCodes.CANCEL
        update = WindowUpdateFrame(1)
        update.window_increment = 1000
        peer.send(update, late)
        peer.send(*peer.answer(3))
        yield wait_for(lambda: second.ended)
        self.assertEqual(second.events[-1], ("trailers", OK_TRAILERS))
        self.assertEqual(len(peer.received(RstStreamFrame, 1)), 1)
        self.assertEqual(peer.received(GoAwayFrame), [])
        self.assertEqual(first.events, [])

    @inlineCallbacks
    def test_rst_stream_after_a_complete_response(self) -> Any:
        """A server may end a response while the request is still open and then reset
        the stream (NO_ERROR, RFC 9113 section 8.1); when that RST_STREAM arrives
        after the gateway opened another stream, it is dropped, not a connection
        error."""
        factory = FramePeerFactory()
        pool = self.pool(self.listen(factory))
        first = self.open(pool, end=False)
        yield wait_for(lambda: factory.peers and 1 in factory.peers[0].requests)
        peer = factory.peers[0]
        peer.send(*peer.answer(1))
        yield wait_for(lambda: first.ended)
        second = self.open(pool)
        yield wait_for(lambda: 3 in peer.requests)
        late = RstStreamFrame(1)
        late.error_code = ErrorCodes.NO_ERROR
        peer.send(late)
        peer.send(*peer.answer(3))
        yield wait_for(lambda: second.ended)
        self.assertEqual(second.events[-1], ("trailers", OK_TRAILERS))
        self.assertEqual(peer.received(GoAwayFrame), [])
        self.assertEqual(peer.received(RstStreamFrame, 1), [])
        self.assertEqual(len(pool._connections), 1)

    @inlineCallbacks
    def test_stream_closed_reset_is_logged_and_unknown(self) -> Any:
        """RST_STREAM(STREAM_CLOSED) on an open call: logged at warn with the stream
        and the upstream, and the call ends UNKNOWN (the spec maps no status to it:
        the call ended without one), not INTERNAL."""
        lines = self.logged()

        def on_frame(peer: FramePeer, frame: Frame) -> None:
            if isinstance(frame, HeadersFrame):
                reset = RstStreamFrame(frame.stream_id)
                reset.error_code = ErrorCodes.STREAM_CLOSED
                peer.send(reset)

        factory = FramePeerFactory(on_frame)
        port = self.listen(factory)
        pool = self.pool(port)
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        writer = RecordingWriter()
        head = make_head(b"POST", GET_ITEM, [(b"content-type", b"application/grpc"),
                                             (b"te", b"trailers")],
                         protocol="HTTP/2", content_length=None, body_expected=True)
        handler = relay.start_exchange(head, writer)
        handler.body_received(EMPTY_MESSAGE)
        handler.body_ended([])
        yield wait_for(lambda: writer.ended)
        self.assertEqual(grpc_status(writer.headers), GrpcStatus.UNKNOWN)
        warned = [line for line in lines if "STREAM_CLOSED" in line]
        self.assertEqual(len(warned), 1, lines)
        self.assertIn("stream 1", warned[0])
        self.assertIn(f"127.0.0.1:{port}", warned[0])


class GoawayCrossingTests(_PeerTestCase):
    """A GOAWAY that crosses a stream the gateway has just opened."""

    @inlineCallbacks
    def test_stream_above_last_stream_id_fails_unavailable(self) -> Any:
        """A stream above the GOAWAY's last-stream-id was never processed: it ends at
        once with REFUSED_STREAM (the relay's UNAVAILABLE) instead of waiting, and the
        accepted stream below it still completes."""
        factory = FramePeerFactory()
        pool = self.pool(self.listen(factory))
        first = self.open(pool)
        second = self.open(pool)
        yield wait_for(lambda: factory.peers and 3 in factory.peers[0].requests)
        peer = factory.peers[0]
        peer.send(GoAwayFrame(0, last_stream_id=1, error_code=ErrorCodes.NO_ERROR))
        yield wait_for(lambda: second.ended)
        self.assertEqual(second.events, [("reset", ErrorCodes.REFUSED_STREAM)])
        peer.send(*peer.answer(1))
        yield wait_for(lambda: first.ended)
        self.assertEqual(first.events[-1], ("trailers", OK_TRAILERS))

    @inlineCallbacks
    def test_broker_call_retried_on_another_connection(self) -> Any:
        """The HTTP/2 broker client sends a refused call again, once, on a new
        connection, and it succeeds there."""
        def on_frame(peer: FramePeer, frame: Frame) -> None:
            if isinstance(frame, DataFrame) and "END_STREAM" in frame.flags:
                if len(factory.peers) == 1:
                    peer.send(GoAwayFrame(0, last_stream_id=0,
                                          error_code=ErrorCodes.NO_ERROR))
                else:
                    message = eventbroker_pb2.PublishResponse(id="x").SerializeToString()
                    framed = b"\x00" + len(message).to_bytes(4, "big") + message
                    peer.send(*peer.answer(frame.stream_id, framed))

        factory = FramePeerFactory(on_frame)
        port = self.listen(factory)
        client = H2BrokerClient(BrokerUpstream(target=f"127.0.0.1:{port}", tls=False,
                                               deadline=5.0), reactor=reactor)
        self.addCleanup(client.close)
        route = publish_route()
        request = eventbroker_pb2.PublishRequest()
        response = yield client.call(route, request).addTimeout(WAIT, reactor)
        self.assertEqual(response.id, "x")
        self.assertEqual(len(factory.peers), 2)


# --- the deadline forwarded -----------------------------------------------------------


class _ClockedConnection:
    """A pool on a Clock with one connection over a StringTransport, and an h2 server
    on the other end that the test drives."""

    def __init__(self, max_streams: int = 1, **kw: Any) -> None:
        self.clock = Clock()
        options = _pool_options(kw)
        self.pool = GrpcConnectionPool(config(1, max_connections=1, **kw), reactor=self.clock,
                                       **options)
        self.connection = H2ClientConnection(self.pool, self.clock)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.server.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.server.initiate_connection()
        self.requests: dict[int, dict[bytes, bytes]] = {}
        self.order: dict[int, list[bytes]] = {}
        self.pings = 0
        self.exchange()

    def exchange(self) -> None:
        """Carry bytes both ways until both sides are quiet."""
        from h2.events import PingReceived

        while True:
            moved = False
            sent = self.transport.value()
            if sent:
                self.transport.clear()
                moved = True
                for event in self.server.receive_data(sent):
                    if isinstance(event, RequestReceived):
                        self.requests[event.stream_id] = dict(event.headers)
                        self.order[event.stream_id] = [n for n, _ in event.headers]
                    elif isinstance(event, PingReceived):
                        self.pings += 1
            answer = self.server.data_to_send()
            if answer:
                moved = True
                self.connection.dataReceived(answer)
            if not moved:
                return

    def answer(self, stream_id: int) -> None:
        self.server.send_headers(stream_id, RESPONSE_HEAD)
        self.server.send_data(stream_id, EMPTY_MESSAGE)
        self.server.send_headers(stream_id, OK_TRAILERS, end_stream=True)
        self.exchange()

    def open(self, headers: Headers, deadline: float | None) -> Recorder:
        recorder = Recorder()
        recorder.stream = self.pool.open_stream(headers, recorder, deadline)
        recorder.stream.send(EMPTY_MESSAGE, end=True)
        self.connection.flush()
        self.exchange()
        return recorder


def _pool_options(kw: dict[str, Any]) -> dict[str, Any]:
    return {key: kw.pop(key) for key in ("keepalive_without_calls",
                                         "min_ping_interval_without_data") if key in kw}


class DeadlineForwardingTests(_PeerTestCase):
    """grpc-timeout goes upstream as what is left when the HEADERS are sent."""

    def test_wait_for_a_slot_is_deducted(self) -> None:
        """A call that waited 400 ms for a stream slot (the server allows one) goes
        upstream with 600m of its 1 s, replacing the client's grpc-timeout in place."""
        rig = _ClockedConnection(max_streams=1)
        busy = rig.open(list(REQUEST), None)
        headers = [*REQUEST[:4], (b"grpc-timeout", b"1S"), *REQUEST[4:]]
        waiting = rig.open(headers, rig.clock.seconds() + 1.0)
        self.assertEqual(sorted(rig.requests), [1])
        rig.clock.advance(0.4)
        rig.answer(1)
        self.assertTrue(busy.ended)
        self.assertEqual(sorted(rig.requests), [1, 3])
        self.assertEqual(rig.requests[3][b"grpc-timeout"], b"600m")
        self.assertEqual(rig.order[3][4], b"grpc-timeout")
        self.assertEqual(rig.order[3].count(b"grpc-timeout"), 1)
        self.assertFalse(waiting.ended)

    def test_timeout_added_when_absent(self) -> None:
        """A stream with a deadline but no grpc-timeout header gets one."""
        rig = _ClockedConnection(max_streams=10)
        rig.clock.advance(5)
        rig.open(list(REQUEST), rig.clock.seconds() + 2.5)
        self.assertEqual(rig.requests[1][b"grpc-timeout"], b"2500m")

    def test_nothing_left_is_not_sent(self) -> None:
        """A waiting call whose deadline passed before a slot freed is never sent: its
        listener hears deadline-exceeded and the server sees no HEADERS for it."""
        rig = _ClockedConnection(max_streams=1)
        rig.open(list(REQUEST), None)
        waiting = rig.open([*REQUEST, (b"grpc-timeout", b"300m")], rig.clock.seconds() + 0.3)
        rig.clock.advance(0.5)
        rig.answer(1)
        self.assertEqual(waiting.events, [("deadline",)])
        self.assertEqual(sorted(rig.requests), [1])
        # The slot it would have taken is free for the next call.
        rig.open(list(REQUEST), None)
        self.assertEqual(sorted(rig.requests), [1, 3])

    @inlineCallbacks
    def test_relay_deducts_the_connect(self) -> Any:
        """Through the relay: a Master API that takes 300 ms to send its SETTINGS gets
        at most 700m of a client's 1S grpc-timeout."""
        def on_frame(peer: FramePeer, frame: Frame) -> None:
            if isinstance(frame, DataFrame) and "END_STREAM" in frame.flags:
                peer.send(*peer.answer(frame.stream_id))

        factory = FramePeerFactory(on_frame, settings_delay=0.3)
        pool = self.pool(self.listen(factory))
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        writer = RecordingWriter()
        head = make_head(b"POST", GET_ITEM, [(b"content-type", b"application/grpc"),
                                             (b"te", b"trailers"), (b"grpc-timeout", b"1S")],
                         protocol="HTTP/2", content_length=None, body_expected=True)
        handler = relay.start_exchange(head, writer)
        handler.body_received(EMPTY_MESSAGE)
        handler.body_ended([])
        yield wait_for(lambda: writer.ended)
        self.assertEqual(grpc_status(writer.trailers), 0)
        sent = dict(factory.peers[0].requests[1])[b"grpc-timeout"]
        self.assertTrue(sent.endswith(b"m"), sent)
        self.assertTrue(0 < int(sent[:-1]) <= 700, sent)

    @inlineCallbacks
    def test_relay_zero_timeout_is_not_sent(self) -> Any:
        """Through the relay: a grpc-timeout of 0m has nothing left to forward; the
        client gets DEADLINE_EXCEEDED and the Master API never sees the call."""
        factory = FramePeerFactory()
        pool = self.pool(self.listen(factory))
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        warm = self.open(pool)
        yield wait_for(lambda: factory.peers and 1 in factory.peers[0].requests)
        factory.peers[0].send(*factory.peers[0].answer(1))
        yield wait_for(lambda: warm.ended)
        writer = RecordingWriter()
        head = make_head(b"POST", GET_ITEM, [(b"content-type", b"application/grpc"),
                                             (b"te", b"trailers"), (b"grpc-timeout", b"0m")],
                         protocol="HTTP/2", content_length=None, body_expected=True)
        handler = relay.start_exchange(head, writer)
        handler.body_received(EMPTY_MESSAGE)
        handler.body_ended([])
        self.assertTrue(writer.ended)
        self.assertEqual(grpc_status(writer.headers), GrpcStatus.DEADLINE_EXCEEDED)
        yield sleep(0.1)
        self.assertEqual(sorted(factory.peers[0].requests), [1])

    @inlineCallbacks
    def test_broker_deducts_the_connect(self) -> Any:
        """The HTTP/2 broker client: with a 1 s deadline and a broker that takes 300 ms
        to send its SETTINGS, at most 700m goes upstream."""
        def on_frame(peer: FramePeer, frame: Frame) -> None:
            if isinstance(frame, DataFrame) and "END_STREAM" in frame.flags:
                message = eventbroker_pb2.PublishResponse(id="x").SerializeToString()
                framed = b"\x00" + len(message).to_bytes(4, "big") + message
                peer.send(*peer.answer(frame.stream_id, framed))

        factory = FramePeerFactory(on_frame, settings_delay=0.3)
        port = self.listen(factory)
        client = H2BrokerClient(BrokerUpstream(target=f"127.0.0.1:{port}", tls=False,
                                               deadline=1.0), reactor=reactor)
        self.addCleanup(client.close)
        route = publish_route()
        response = yield client.call(route, eventbroker_pb2.PublishRequest()).addTimeout(
            WAIT, reactor)
        self.assertEqual(response.id, "x")
        sent = dict(factory.peers[0].requests[1])[b"grpc-timeout"]
        self.assertTrue(0 < int(sent[:-1]) <= 700, sent)

    @inlineCallbacks
    def test_broker_deadline_passes_while_connecting(self) -> Any:
        """A broker call whose whole deadline passes before the connection is ready
        fails DEADLINE_EXCEEDED and nothing is sent for it."""
        factory = FramePeerFactory(settings_delay=0.5)
        port = self.listen(factory)
        client = H2BrokerClient(BrokerUpstream(target=f"127.0.0.1:{port}", tls=False,
                                               deadline=1.0), reactor=reactor)
        self.addCleanup(client.close)
        route = publish_route()
        try:
            yield client.call(route, eventbroker_pb2.PublishRequest(), timeout=0.2)
        except BrokerCallFailed as e:
            self.assertEqual(e.code, GrpcStatus.DEADLINE_EXCEEDED)
        else:
            self.fail("the call succeeded")
        yield sleep(0.5)
        self.assertEqual(factory.peers[0].requests, {})


# --- keepalive ---------------------------------------------------------------------------


class KeepalivePacingTests(TestCase):
    """When keepalive PINGs go out (a Clock, an h2 server over a StringTransport)."""

    def test_no_ping_without_calls(self) -> None:
        """With no stream open, no PING goes out however long the connection idles."""
        rig = _ClockedConnection(keepalive_interval=1.0)
        for _ in range(20):
            rig.clock.advance(1.0)
            rig.exchange()
        self.assertEqual(rig.pings, 0)

    def test_ping_without_calls_when_permitted(self) -> None:
        """keepalive_without_calls: an idle connection is pinged (at the pace the
        server allows without data)."""
        rig = _ClockedConnection(keepalive_interval=1.0, keepalive_without_calls=True,
                                 min_ping_interval_without_data=1.0)
        for _ in range(5):
            rig.clock.advance(1.0)
            rig.exchange()
        self.assertGreaterEqual(rig.pings, 4)

    def test_silent_stream_pinged_no_more_than_allowed(self) -> None:
        """A stream open and silent for 30 keepalive intervals: one PING right away,
        then none sooner than min_ping_interval_without_data after the last."""
        rig = _ClockedConnection(keepalive_interval=1.0, min_ping_interval_without_data=10.0)
        rig.open(list(REQUEST), None)
        times: list[float] = []
        for _ in range(300):
            before = rig.pings
            rig.clock.advance(0.1)
            rig.exchange()
            if rig.pings > before:
                times.append(rig.clock.seconds())
        self.assertGreaterEqual(len(times), 2)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        self.assertTrue(all(gap >= 10.0 - 1e-6 for gap in gaps), times)

    def test_response_data_allows_the_next_ping(self) -> None:
        """Response DATA between PINGs lifts the without-data limit: the next PING
        may go out after one keepalive interval of silence again."""
        rig = _ClockedConnection(max_streams=10, keepalive_interval=1.0,
                                 min_ping_interval_without_data=100.0)
        rig.open(list(REQUEST), None)
        rig.clock.advance(1.0)
        rig.exchange()
        self.assertEqual(rig.pings, 1)
        rig.server.send_headers(1, RESPONSE_HEAD)
        rig.server.send_data(1, EMPTY_MESSAGE)
        rig.exchange()
        for _ in range(3):
            rig.clock.advance(1.0)
            rig.exchange()
        self.assertEqual(rig.pings, 2)

    def test_too_many_pings_doubles_the_interval(self) -> None:
        """GOAWAY ENHANCE_YOUR_CALM "too_many_pings" doubles the pool's keepalive
        interval (for the connections it opens next, as grpc-core does)."""
        rig = _ClockedConnection(keepalive_interval=1.0)
        rig.server.close_connection(ErrorCodes.ENHANCE_YOUR_CALM,
                                    additional_data=b"too_many_pings")
        rig.exchange()
        self.assertEqual(rig.pool.keepalive_interval, 2.0)


class RealMasterApiTests(_PeerTestCase):
    """The demo Master API's gRPC server (grpcio) behind the relay."""

    def serve(self, options: list[tuple[str, Any]]) -> tuple[int, ItemsServicer]:
        from concurrent import futures

        from demo.masterapi._proto import demo_pb2_grpc

        servicer = ItemsServicer()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
        demo_pb2_grpc.add_ItemsServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, 0)
        return port, servicer

    def call(self, relay: GrpcRelay, path: bytes, message: Any,
             timeout: bytes | None = None) -> RecordingWriter:
        payload = message.SerializeToString()
        writer = RecordingWriter()
        extra = [] if timeout is None else [(b"grpc-timeout", timeout)]
        head = make_head(b"POST", path, [(b"content-type", b"application/grpc"),
                                         (b"te", b"trailers"), *extra],
                         protocol="HTTP/2", content_length=None, body_expected=True)
        handler = relay.start_exchange(head, writer)
        handler.body_received(b"\x00" + len(payload).to_bytes(4, "big") + payload)
        handler.body_ended([])
        return writer

    @inlineCallbacks
    def test_tiny_deadlines_do_not_cost_the_connection(self) -> Any:
        """Hundreds of calls whose deadline expires as the Master API answers, on one
        warm connection, while ordinary calls run alongside: every ordinary call
        succeeds, the tiny ones end OK or DEADLINE_EXCEEDED (never UNAVAILABLE), and
        the connection is the one it was (no GOAWAY from either side)."""
        lines = self.logged()
        port, _ = self.serve([])
        pool = self.pool(port, max_connections=1)
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        warm = self.call(relay, GET_ITEM, demo_pb2.GetItemRequest(id="warm"))
        yield wait_for(lambda: warm.ended)
        self.assertEqual(grpc_status(warm.trailers), 0)
        connection = pool._connections[0]
        tiny: list[RecordingWriter] = []
        ordinary: list[RecordingWriter] = []
        for round_ in range(40):
            for index in range(8):
                delay = demo_pb2.Behaviour(delay_ms=(index % 4) * 2)
                tiny.append(self.call(relay, GET_ITEM,
                                      demo_pb2.GetItemRequest(id="t", behaviour=delay),
                                      timeout=b"%dm" % (1 + index % 6)))
            ordinary.append(self.call(relay, GET_ITEM, demo_pb2.GetItemRequest(id="o")))
            yield sleep(0.004 * (round_ % 3))
        yield wait_for(lambda: all(w.ended for w in tiny + ordinary), timeout=30)
        statuses = {grpc_status(w.trailers if w.trailers is not None else w.headers)
                    for w in tiny}
        self.assertLessEqual(statuses, {0, 4}, statuses)
        self.assertEqual([grpc_status(w.trailers) for w in ordinary], [0] * len(ordinary))
        self.assertEqual(pool._connections, [connection])
        self.assertFalse(connection.draining or connection.lost)
        self.assertEqual([line for line in lines if "protocol error" in line], [])

    @inlineCallbacks
    def test_silent_stream_survives_the_ping_policy(self) -> Any:
        """A server-streaming call silent for 30 keepalive intervals, against a
        grpcio server with a strict ping policy (1 s between PINGs without data, two
        strikes): the call completes and the connection is not GOAWAY'd."""
        lines = self.logged()
        port, _ = self.serve([
            ("grpc.http2.min_ping_interval_without_data_ms", 1000),
            ("grpc.http2.max_ping_strikes", 2),
        ])
        pool = GrpcConnectionPool(config(port, keepalive_interval=0.1), reactor=reactor,
                                  min_ping_interval_without_data=1.0)
        self.addCleanup(pool.close)
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        writer = self.call(relay, WATCH_ITEMS, demo_pb2.WatchItemsRequest(
            count=1, behaviour=demo_pb2.Behaviour(delay_ms=3000)))
        yield wait_for(lambda: pool._connections)
        connection = pool._connections[0]
        yield wait_for(lambda: writer.ended)
        self.assertEqual(grpc_status(writer.trailers), 0, (writer, lines))
        self.assertGreater(len(writer.body), 5)
        self.assertEqual(pool._connections, [connection])
        self.assertFalse(connection.draining or connection.lost)
        self.assertEqual([line for line in lines if "too_many_pings" in line], [])
