"""End-to-end tests of the gRPC relay (eventgw.grpc_relay, eventgw.grpc_upstream).

Three kinds of peers, all on 127.0.0.1 port 0:

* ``UpstreamPoolTests``: the relay with an in-memory downstream writer against a
  hand-driven ``h2`` server standing in for the Master API (resets, GOAWAY, stream
  limits, silence), and against the real demo Master API (back-pressure).
* ``GrpcEndToEndTests``: real grpcio clients (blocking calls in threads, each with a
  timeout) through the gateway's HTTP/2 server to the demo Master API (grpcio).
* ``WireTests``: a hand-driven ``h2`` client through the gateway, for the frames
  themselves (trailers-only, RST_STREAM both ways, GOAWAY upstream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes, Settings
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from demo.masterapi._proto import demo_pb2
from demo.masterapi.grpc_server import serve
from eventgw.config import GrpcUpstream
from eventgw.exchange import CANCEL, Headers
from eventgw.grpc_relay import GrpcRelay
from eventgw.grpc_upstream import INITIAL_STREAM_WINDOW, GrpcConnectionPool
from eventgw.routing import MethodPolicy
from tests.support import RecordingWriter, make_head

reactor: Any = global_reactor
POLICY = MethodPolicy.from_lists(["/"], ["/eventbroker."])
GET_ITEM = b"/demo.masterapi.v1.Items/GetItem"
WATCH_ITEMS = b"/demo.masterapi.v1.Items/WatchItems"
WAIT = 10.0  # seconds any single wait may take before the test fails


def frame(message: Any) -> bytes:
    """A protobuf message as one length-prefixed gRPC message."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_head(path: bytes = GET_ITEM, extra: Headers | None = None) -> Any:
    headers = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), *(extra or [])]
    return make_head(
        b"POST", path, headers, protocol="HTTP/2", content_length=None, body_expected=True
    )


def upstream_config(port: int, connect_timeout: float = 2.0, **kw: Any) -> GrpcUpstream:
    return GrpcUpstream(
        host="127.0.0.1",
        port=port,
        tls=False,
        address=f"127.0.0.1:{port}",
        connect_timeout=connect_timeout,
        **kw,
    )


@inlineCallbacks
def wait_for(condition: Callable[[], object], timeout: float = WAIT) -> Any:
    """Poll ``condition`` on the reactor until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        yield deferLater(reactor, 0.005, lambda: None)


def status_of(headers: Headers | None) -> int | None:
    for name, value in headers or []:
        if name == b"grpc-status":
            return int(value)
    return None


# --- a hand-driven HTTP/2 server standing in for the Master API ----------------------


class ScriptedServer(Protocol):
    """An h2 server whose answers are written by the test (``factory.script``)."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = Settings(
            client=False,
            initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: self.factory.max_streams},
        )
        self.h2.initiate_connection()
        self.flush()
        self.requests: dict[int, dict[str, Any]] = {}

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                self.requests[event.stream_id] = {"headers": event.headers, "body": b""}
                self.factory.events.append(("request", event.stream_id))
                self.factory.script(self, event.stream_id, "request")
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id]["body"] += event.data
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            elif isinstance(event, StreamEnded):
                self.factory.script(self, event.stream_id, "ended")
            elif isinstance(event, StreamReset):
                self.factory.events.append(("reset", event.stream_id, event.error_code))
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.events.append(("lost",))

    # -- helpers for scripts --
    def respond(self, stream_id: int, *, trailers_only: bool = False) -> None:
        headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if trailers_only:
            headers.append((b"grpc-status", b"0"))
        self.h2.send_headers(stream_id, headers, end_stream=trailers_only)

    def finish(self, stream_id: int, payload: bytes = b"") -> None:
        if payload:
            self.h2.send_data(stream_id, payload)
        self.h2.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)


class ScriptedFactory(Factory):
    protocol = ScriptedServer

    def __init__(self, script: Callable[[ScriptedServer, int, str], None],
                 max_streams: int = 100) -> None:
        self.script = script
        self.max_streams = max_streams
        self.connections: list[ScriptedServer] = []
        self.events: list[tuple[Any, ...]] = []


class UpstreamPoolTests(TestCase):
    """The relay and its pool against scripted and real Master APIs; the client side
    is an in-memory writer, so each case sees exactly what the client would get."""

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def relay(self, port: int, **kw: Any) -> GrpcRelay:
        pool = GrpcConnectionPool(upstream_config(port, **kw), reactor=reactor)
        relay = GrpcRelay(None, POLICY, reactor=reactor, pool=pool)
        self.addCleanup(relay.close)
        return relay

    def call(self, relay: GrpcRelay, path: bytes = GET_ITEM, body: bytes = b"\x00\x00\x00\x00\x00",
             extra: Headers | None = None, end: bool = True) -> tuple[RecordingWriter, Any]:
        writer = RecordingWriter()
        head = grpc_head(path, extra)
        handler = relay.start_exchange(head, writer)
        if body:
            handler.body_received(body)
        if end:
            handler.body_ended([])
        return writer, handler

    @inlineCallbacks
    def test_trailers_only_passes_as_trailers_only(self) -> Any:
        """An upstream trailers-only answer reaches the client as one HEADERS+END_STREAM."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                server.h2.send_headers(
                    stream_id,
                    [(b":status", b"200"), (b"content-type", b"application/grpc"),
                     (b"grpc-status", b"5"), (b"grpc-message", b"no%20such%20item")],
                    end_stream=True,
                )
        relay = self.relay(self.listen(ScriptedFactory(script)))
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended)
        self.assertTrue(writer.head_ended)
        self.assertEqual(status_of(writer.headers), 5)
        self.assertIn((b"grpc-message", b"no%20such%20item"), writer.headers)

    @inlineCallbacks
    def test_upstream_reset_before_head(self) -> Any:
        """RST_STREAM(REFUSED_STREAM) before any response is trailers-only UNAVAILABLE."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "request":
                server.h2.reset_stream(stream_id, 0x7)
        relay = self.relay(self.listen(ScriptedFactory(script)))
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.headers), 14)

    @inlineCallbacks
    def test_upstream_reset_after_head(self) -> Any:
        """RST_STREAM after the response head resets the client's stream."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                server.respond(stream_id)
                server.h2.reset_stream(stream_id, CANCEL)
        relay = self.relay(self.listen(ScriptedFactory(script)))
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.aborted is not None)
        self.assertEqual(writer.aborted, CANCEL)
        self.assertEqual(writer.status, 200)

    @inlineCallbacks
    def test_non_200_status(self) -> Any:
        """An HTTP 404 from upstream is UNIMPLEMENTED for the client."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                server.h2.send_headers(stream_id, [(b":status", b"404")], end_stream=True)
        relay = self.relay(self.listen(ScriptedFactory(script)))
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.headers), 12)

    @inlineCallbacks
    def test_goaway_lets_in_flight_finish(self) -> Any:
        """After GOAWAY the accepted stream completes; the next call uses a new connection."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended" and stream_id == 1 and len(factory.connections) == 1:
                server.respond(stream_id)
                server.h2.close_connection(last_stream_id=1)
                server.h2.state_machine.state = server.h2.state_machine.state.SERVER_OPEN
                server.flush()
                reactor.callLater(0.05, lambda: (server.finish(1, b"\x00" * 5), server.flush()))
            elif what == "ended":
                server.respond(stream_id)
                server.finish(stream_id)
        factory = ScriptedFactory(script)
        relay = self.relay(self.listen(factory))
        first, _ = self.call(relay)
        yield wait_for(lambda: first.ended)
        self.assertEqual(status_of(first.trailers), 0)
        self.assertEqual(bytes(first.body), b"\x00" * 5)
        second, _ = self.call(relay)
        yield wait_for(lambda: second.ended)
        self.assertEqual(status_of(second.trailers), 0)
        self.assertEqual(len(factory.connections), 2)

    @inlineCallbacks
    def test_goaway_refuses_unaccepted_streams(self) -> Any:
        """Streams above GOAWAY's last stream id end UNAVAILABLE (safe to retry)."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "request" and stream_id == 3:
                server.h2.close_connection(last_stream_id=1)
                server.h2.state_machine.state = server.h2.state_machine.state.SERVER_OPEN
        relay = self.relay(self.listen(ScriptedFactory(script)))
        first, _ = self.call(relay, end=False)
        second, _ = self.call(relay, end=False)
        yield wait_for(lambda: second.ended)
        self.assertEqual(status_of(second.headers), 14)
        self.assertFalse(first.ended)

    @inlineCallbacks
    def test_max_concurrent_streams_respected(self) -> Any:
        """With SETTINGS_MAX_CONCURRENT_STREAMS=1 and max_connections=1, calls queue
        and each one runs once the previous stream closed."""
        answered: list[int] = []

        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                open_now = len([s for s in server.h2.streams.values() if not s.closed])
                answered.append(open_now)
                reactor.callLater(0.01, lambda: (server.respond(stream_id),
                                                 server.finish(stream_id), server.flush()))
        factory = ScriptedFactory(script, max_streams=1)
        relay = self.relay(self.listen(factory), max_connections=1)
        # Let the connection learn the peer's limit first.
        first, _ = self.call(relay)
        yield wait_for(lambda: first.ended)
        writers = [self.call(relay)[0] for _ in range(5)]
        yield wait_for(lambda: all(w.ended for w in writers))
        self.assertEqual([status_of(w.trailers) for w in writers], [0] * 5)
        self.assertEqual(max(answered), 1)
        self.assertEqual(len(factory.connections), 1)

    @inlineCallbacks
    def test_silent_server_times_out(self) -> Any:
        """A server that accepts TCP but never speaks HTTP/2 gives UNAVAILABLE within
        the connect timeout."""
        class Silent(Protocol):
            pass
        relay = self.relay(self.listen(Factory.forProtocol(Silent)), connect_timeout=0.3)
        started = time.monotonic()
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended, timeout=3)
        self.assertEqual(status_of(writer.headers), 14)
        self.assertLess(time.monotonic() - started, 2.0)

    @inlineCallbacks
    def test_unreachable_then_backoff(self) -> Any:
        """A closed port gives UNAVAILABLE; during the back-off new calls fail at once."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        relay = self.relay(number, connect_timeout=0.5)
        first, _ = self.call(relay)
        yield wait_for(lambda: first.ended)
        self.assertEqual(status_of(first.headers), 14)
        second, _ = self.call(relay)
        self.assertTrue(second.ended)
        self.assertEqual(status_of(second.headers), 14)

    @inlineCallbacks
    def test_client_cancel_resets_upstream(self) -> Any:
        """The client going away resets the upstream stream with CANCEL."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            pass
        factory = ScriptedFactory(script)
        relay = self.relay(self.listen(factory))
        _, handler = self.call(relay, end=False)
        yield wait_for(lambda: ("request", 1) in factory.events)
        handler.connection_lost("client reset")
        yield wait_for(lambda: any(e[0] == "reset" for e in factory.events))
        self.assertIn(("reset", 1, CANCEL), factory.events)
        self.assertEqual(relay.calls, set())

    @inlineCallbacks
    def test_slow_reader_bounds_memory(self) -> Any:
        """A paused client stops the relay acknowledging upstream DATA: the Master API
        stops sending once the stream window is full, and the relay never holds more
        than that window unacknowledged; resuming delivers the whole stream."""
        server, port, _ = serve(0)
        self.addCleanup(server.stop, 0)
        relay = self.relay(port)
        request = demo_pb2.WatchItemsRequest(count=400, payload_size=16 * 1024)
        writer, _ = self.call(relay, WATCH_ITEMS, frame(request))
        yield wait_for(lambda: writer.producer is not None and writer.status == 200)
        assert writer.producer is not None
        writer.producer.pause_producing()
        (call,) = relay.calls
        yield wait_for(lambda: call.state.unacknowledged > INITIAL_STREAM_WINDOW // 2)
        # Give the Master API ample time to send more if the relay let it.
        yield deferLater(reactor, 0.3, lambda: None)
        held = call.state.unacknowledged
        received = len(writer.body)
        self.assertLessEqual(held, INITIAL_STREAM_WINDOW)
        self.assertLess(received, 400 * 16 * 1024 // 4)
        writer.producer.resume_producing()
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.trailers), 0)
        self.assertGreater(len(writer.body), 400 * 16 * 1024)
        self.assertLessEqual(relay.peak_unacknowledged, INITIAL_STREAM_WINDOW)
        self.log_figure(
            f"slow reader: held {relay.peak_unacknowledged} bytes unacknowledged "
            f"(window {INITIAL_STREAM_WINDOW})"
        )

    def log_figure(self, text: str) -> None:
        print("\n[figure] " + text)

    @inlineCallbacks
    def test_deadline_enforced(self) -> Any:
        """grpc-timeout is forwarded and enforced: DEADLINE_EXCEEDED, upstream cancelled."""
        server, port, servicer = serve(0)
        self.addCleanup(server.stop, 0)
        relay = self.relay(port)
        request = demo_pb2.GetItemRequest(behaviour=demo_pb2.Behaviour(delay_ms=3000))
        writer, _ = self.call(relay, body=frame(request), extra=[(b"grpc-timeout", b"300m")])
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.headers), 4)
        yield wait_for(lambda: servicer.cancelled)
