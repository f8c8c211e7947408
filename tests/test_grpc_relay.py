"""End-to-end tests of the gRPC relay (eventgw.grpc.target, eventgw.upstream.h2pool).

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

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import status_pb2
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes, Settings
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from demo.masterapi import grpc_client
from demo.masterapi._proto import demo_pb2, demo_pb2_grpc
from demo.masterapi.grpc_server import MAX_MESSAGE_BYTES, ItemsServicer, serve
from eventgw import http2
from eventgw.config import GrpcUpstream, Limits
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.grpc import relay as relay_core
from eventgw.grpc.target import GrpcRelay
from eventgw.routing import MethodPolicy, is_grpc
from eventgw.tls import ensure_dev_certificate, server_context_factory
from eventgw.upstream.h2client import CLIENT_STREAM_WINDOW
from eventgw.upstream.h2pool import GrpcConnectionPool
from tests.support import RecordingWriter, make_head

reactor: Any = global_reactor
POLICY = MethodPolicy.from_lists(["/"], ["/eventbroker."])
GET_ITEM = b"/demo.masterapi.v1.Items/GetItem"
WATCH_ITEMS = b"/demo.masterapi.v1.Items/WatchItems"
WAIT = 30.0  # seconds any single wait may take before the test fails (only when broken)


def frame(message: Any) -> bytes:
    """A protobuf message as one length-prefixed gRPC message."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_head(path: bytes = GET_ITEM, extra: Headers | None = None) -> Any:
    headers = [(b"content-type", b"application/grpc"), (b"te", b"trailers"), *(extra or [])]
    return make_head(
        b"POST", path, headers, protocol="HTTP/2", content_length=None, body_expected=True
    )


def upstream_config(
    port: int, connect_timeout: float = 2.0, tls: bool = False, **kw: Any
) -> GrpcUpstream:
    return GrpcUpstream(
        host="127.0.0.1",
        port=port,
        tls=tls or kw.get("ca_file") is not None,
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
        if self.factory.deaf and self.requests:
            return  # a peer that went silent after its first request
        for event in self.h2.receive_data(data):
            if isinstance(event, PingReceived):
                self.factory.events.append(("ping",))
            elif isinstance(event, RequestReceived):
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
        self.deaf = False
        self.connections: list[ScriptedServer] = []
        self.events: list[tuple[Any, ...]] = []


class UpstreamPoolTests(TestCase):
    """The relay and its pool against scripted and real Master APIs; the client side
    is an in-memory writer, so each case sees exactly what the client would get."""

    def listen(self, factory: Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def relay(self, port: int, pool_options: dict[str, Any] | None = None,
              **kw: Any) -> GrpcRelay:
        pool = GrpcConnectionPool(upstream_config(port, **kw), reactor=reactor,
                                  **(pool_options or {}))
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
                server.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        relay = self.relay(self.listen(ScriptedFactory(script)))
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.aborted is not None)
        self.assertEqual(writer.aborted, ErrorCodes.CANCEL)
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
        self.assertEqual(status_of(first.trailers), 0, first)
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
    def test_keepalive_ping_on_idle_connection(self) -> Any:
        """An idle connection gets keepalive PINGs when the pool permits them without
        calls and, answered, stays open."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                server.respond(stream_id, trailers_only=True)
        factory = ScriptedFactory(script)
        relay = self.relay(
            self.listen(factory),
            {"keepalive_without_calls": True, "min_ping_interval_without_data": 0.05},
            keepalive_interval=0.05,
        )
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended)
        yield wait_for(lambda: factory.events.count(("ping",)) >= 2)
        assert relay.pool is not None
        self.assertEqual(relay.pool.connection_count, 1)

    @inlineCallbacks
    def test_keepalive_closes_dead_connection(self) -> Any:
        """A peer that stops answering is dropped after an unanswered PING, and the
        call on it ends UNAVAILABLE instead of hanging."""
        factory = ScriptedFactory(lambda server, stream_id, what: None)
        factory.deaf = True
        relay = self.relay(self.listen(factory), keepalive_interval=0.05)
        writer, _ = self.call(relay)
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.headers), 14)
        assert relay.pool is not None
        self.assertEqual(relay.pool.connection_count, 0)

    def test_no_upstream_configured(self) -> None:
        """Without master_api.grpc every call is answered trailers-only UNIMPLEMENTED."""
        relay = GrpcRelay(None, POLICY, reactor=reactor)
        writer = RecordingWriter()
        head = grpc_head()
        relay.start_exchange(head, writer)
        self.assertTrue(writer.head_ended)
        self.assertEqual(status_of(writer.headers), 12)
        self.assertEqual(head.log_fields["grpc_status"], 12)

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
        self.assertIn(("reset", 1, ErrorCodes.CANCEL), factory.events)
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
        yield wait_for(lambda: call.state.unacknowledged > CLIENT_STREAM_WINDOW // 2)
        # Give the Master API ample time to send more if the relay let it.
        yield deferLater(reactor, 0.3, lambda: None)
        held = call.state.unacknowledged
        received = len(writer.body)
        self.assertLessEqual(held, CLIENT_STREAM_WINDOW)
        self.assertLess(received, 400 * 16 * 1024 // 4)
        writer.producer.resume_producing()
        yield wait_for(lambda: writer.ended)
        self.assertEqual(status_of(writer.trailers), 0)
        self.assertGreater(len(writer.body), 400 * 16 * 1024)
        self.assertLessEqual(relay.peak_unacknowledged, CLIENT_STREAM_WINDOW)
        figure(
            f"slow reader (pool level): held {relay.peak_unacknowledged} bytes "
            f"unacknowledged (window {CLIENT_STREAM_WINDOW})"
        )

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


# --- the gateway's HTTP/2 server in front of the relay ---------------------------------


class GrpcRouter:
    """The gateway's routing for these tests: gRPC streams to the relay, others 404."""

    def __init__(self, relay: GrpcRelay) -> None:
        self.relay = relay

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        content_type = head.header(b"content-type") or b""
        if head.protocol == "HTTP/2" and is_grpc(content_type):
            return self.relay.start_exchange(head, writer)
        send_error(writer, 404, "no route")
        return StaticReply()


class _TrackedH2(H2ServerProtocol):
    gone: list[object]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.gone.append(self)


class GatewayFixture(TestCase):
    """Starts the demo Master API, a relay to it and an h2c listener in front."""

    def start_master_api(
        self, port: int = 0, credentials: Any = None
    ) -> tuple[Any, int, ItemsServicer]:
        server, bound, servicer = serve(port, credentials=credentials)
        self.addCleanup(server.stop, 0)
        return server, bound, servicer

    def start_gateway(
        self,
        upstream_port: int,
        policy: MethodPolicy = POLICY,
        *,
        tls: Any = None,
        **kw: Any,
    ) -> tuple[int, GrpcRelay]:
        """The gateway's HTTP/2 server in front of a relay; h2c, or TLS when ``tls`` is
        the listening port's context factory."""
        relay = GrpcRelay(
            upstream_config(upstream_port, **kw), policy, reactor=reactor
        )
        router = GrpcRouter(relay)
        made: list[_TrackedH2] = []
        gone: list[object] = []
        scheme = b"https" if tls is not None else b"http"

        class Gateway(Factory):
            def buildProtocol(self, addr: Any) -> _TrackedH2:
                protocol = _TrackedH2(router, Limits(), scheme=scheme, reactor=reactor)
                protocol.gone = gone
                made.append(protocol)
                return protocol

        if tls is None:
            port = reactor.listenTCP(0, Gateway(), interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, Gateway(), tls, interface="127.0.0.1")

        @inlineCallbacks
        def stop() -> Any:
            # Clients close first (cleanups run in reverse); wait for the gateway to
            # see their connections go, then close the relay's pool and the port.
            yield wait_for(lambda: len(gone) == len(made))
            yield relay.close()
            yield port.stopListening()

        self.addCleanup(stop)
        self.made = made
        return int(port.getHost().port), relay

    def channel(self, port: int) -> Any:
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # One TCP connection per channel, so "one channel" means one connection.
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        self.addCleanup(channel.close)
        return channel

    def stub(self, port: int) -> demo_pb2_grpc.ItemsStub:
        return demo_pb2_grpc.ItemsStub(self.channel(port))

    def setup_all(self, **kw: Any) -> tuple[demo_pb2_grpc.ItemsStub, GrpcRelay, ItemsServicer]:
        _, upstream_port, servicer = self.start_master_api()
        gateway_port, relay = self.start_gateway(upstream_port, **kw)
        return self.stub(gateway_port), relay, servicer


def in_thread(function: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
    """Run a blocking grpcio call off the reactor thread."""
    return deferToThread(function, *args, **kw)


def rpc_error(function: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
    """Run a call that must fail; the Deferred fires with its grpc.RpcError."""

    def run() -> Any:
        try:
            function(*args, **kw)
        except grpc.RpcError as e:
            return e
        raise AssertionError("the call succeeded")

    return deferToThread(run)


class GrpcEndToEndTests(GatewayFixture):
    """Real grpcio clients through the gateway to the demo Master API (grpcio)."""

    @inlineCallbacks
    def test_unary_with_metadata(self) -> Any:
        """A unary call passes; text and -bin metadata travel both ways, as initial
        metadata and as trailers."""
        stub, _relay, _ = self.setup_all()
        metadata = [("x-echo-token", "abc"), ("x-echo-blob-bin", b"\x00\xff\x10")]
        reply, call = yield in_thread(
            stub.GetItem.with_call,
            demo_pb2.GetItemRequest(id="7", payload_size=3),
            metadata=metadata,
            timeout=WAIT,
        )
        self.assertEqual((reply.id, reply.payload), ("7", b"xxx"))
        initial = dict(call.initial_metadata())
        trailing = dict(call.trailing_metadata())
        self.assertEqual(initial["x-echo-token"], "abc")
        self.assertEqual(initial["x-echo-blob-bin"], b"\x00\xff\x10")
        self.assertEqual(trailing["x-trailer-token"], "abc")
        self.assertEqual(trailing["x-trailer-blob-bin"], b"\x00\xff\x10")
        self.assertEqual(call.code(), grpc.StatusCode.OK)

    @inlineCallbacks
    def test_access_log_fields(self) -> Any:
        """The access event of a relayed call names the route, the upstream, the gRPC
        method and its final status, next to the protocol's bytes and duration."""
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "eventgw.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        stub, relay, _ = self.setup_all()
        behaviour = demo_pb2.Behaviour(fail_code=5, fail_message="gone")
        yield rpc_error(stub.GetItem, demo_pb2.GetItemRequest(behaviour=behaviour), timeout=WAIT)
        yield wait_for(lambda: events)
        (event,) = events
        self.assertEqual(event["route"], "grpc")
        self.assertEqual(event["upstream"], relay.pool.address if relay.pool else None)
        self.assertEqual(event["grpc_method"], "/demo.masterapi.v1.Items/GetItem")
        self.assertEqual(event["grpc_status"], 5)
        self.assertGreater(event["bytes_in"], 0)
        self.assertIn("duration_ms", event)

    @inlineCallbacks
    def test_slow_master_api_bounds_request_memory(self) -> Any:
        """A Master API that reads a client stream slowly makes the relay pause the
        client: the request bytes it queues stay under its high watermark plus one
        DATA frame, and every message still arrives."""
        stub, relay, _ = self.setup_all()
        count, size = 100, 64 * 1024
        items = (demo_pb2.Item(id=str(i), payload=b"u" * size) for i in range(count))
        reply = yield in_thread(
            stub.PutItems, items, metadata=[("x-delay-ms", "5")], timeout=WAIT * 2
        )
        self.assertEqual((reply.count, reply.total_bytes), (count, count * size))
        self.assertGreater(relay.peak_queued_upstream, relay_core.UPSTREAM_QUEUE_HIGH)
        self.assertLessEqual(
            relay.peak_queued_upstream, relay_core.UPSTREAM_QUEUE_HIGH + http2.MAX_FRAME_SIZE
        )
        figure(
            f"slow Master API: relay queued <= {relay.peak_queued_upstream} request bytes "
            f"of a {count * size}-byte upload"
        )

    @inlineCallbacks
    def test_client_streaming(self) -> Any:
        """A client-streaming call delivers every message in order."""
        stub, _, _ = self.setup_all()
        items = [demo_pb2.Item(id=str(i), payload=b"p" * i) for i in range(20)]
        reply = yield in_thread(stub.PutItems, iter(items), timeout=WAIT)
        self.assertEqual(reply.count, 20)
        self.assertEqual(reply.total_bytes, sum(range(20)))
        self.assertEqual(list(reply.ids), [str(i) for i in range(20)])

    @inlineCallbacks
    def test_server_streaming(self) -> Any:
        """A server-streaming call delivers every message and ends OK."""
        stub, _, _ = self.setup_all()

        def run() -> list[str]:
            request = demo_pb2.WatchItemsRequest(count=50, payload_size=100)
            return [item.id for item in stub.WatchItems(request, timeout=WAIT)]

        ids = yield in_thread(run)
        self.assertEqual(ids, [str(i) for i in range(50)])

    @inlineCallbacks
    def test_bidi_interleaved(self) -> Any:
        """A bidirectional call is interleaved: each reply arrives before the next
        request is sent."""
        stub, _, _ = self.setup_all()

        def run() -> list[str]:
            outbox: queue.Queue[demo_pb2.Item | None] = queue.Queue()

            def requests() -> Any:
                while (item := outbox.get(timeout=WAIT)) is not None:
                    yield item

            replies = stub.SyncItems(requests(), timeout=WAIT)
            names = []
            for i in range(5):
                outbox.put(demo_pb2.Item(id=str(i), name=f"item{i}"))
                names.append(next(replies).name)
            outbox.put(None)
            self.assertEqual(list(replies), [])
            return names

        names = yield in_thread(run)
        self.assertEqual(names, [f"ITEM{i}" for i in range(5)])

    @inlineCallbacks
    def test_error_with_message_and_details(self) -> Any:
        """A non-OK status arrives with its grpc-message (non-ASCII and '%' included)
        and its grpc-status-details-bin intact."""
        stub, _relay, _ = self.setup_all()
        behaviour = demo_pb2.Behaviour(
            fail_code=5, fail_message="no item ü at 100%", fail_detail="detail"
        )
        error = yield rpc_error(
            stub.GetItem, demo_pb2.GetItemRequest(behaviour=behaviour), timeout=WAIT
        )
        self.assertEqual(error.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(error.details(), "no item ü at 100%")
        details = dict(error.trailing_metadata())["grpc-status-details-bin"]
        status = status_pb2.Status.FromString(details)
        self.assertEqual((status.code, status.message), (5, "no item ü at 100%"))
        item = demo_pb2.Item()
        status.details[0].Unpack(item)
        self.assertEqual(item.name, "detail")

    @inlineCallbacks
    def test_deadline(self) -> Any:
        """A 300 ms deadline on a slow method: DEADLINE_EXCEEDED, and the Master API
        sees the call cancelled."""
        stub, _, servicer = self.setup_all()
        request = demo_pb2.GetItemRequest(behaviour=demo_pb2.Behaviour(delay_ms=5000))
        error = yield rpc_error(stub.GetItem, request, timeout=0.3)
        self.assertEqual(error.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        yield wait_for(lambda: servicer.cancelled)

    @inlineCallbacks
    def test_client_cancel_reaches_master_api(self) -> Any:
        """Cancelling a call in the client cancels it in the Master API."""
        stub, _, servicer = self.setup_all()
        request = demo_pb2.GetItemRequest(behaviour=demo_pb2.Behaviour(delay_ms=8000))
        future = stub.GetItem.future(request, timeout=WAIT)
        yield wait_for(lambda: servicer.calls)
        cancelled_at = time.monotonic()
        future.cancel()
        yield wait_for(lambda: servicer.cancelled)
        latency = servicer.cancelled[0][1] - cancelled_at
        self.assertTrue(future.cancelled())
        figure(f"client cancel -> Master API saw it: {latency * 1000:.2f} ms")

    @inlineCallbacks
    def test_large_messages(self) -> Any:
        """4 MiB messages pass both ways."""
        stub, _, _ = self.setup_all()
        size = 4 * 1024 * 1024
        reply = yield in_thread(
            stub.GetItem, demo_pb2.GetItemRequest(payload_size=size), timeout=WAIT
        )
        self.assertEqual(len(reply.payload), size)
        summary = yield in_thread(
            stub.PutItems, iter([demo_pb2.Item(id="big", payload=b"b" * size)]), timeout=WAIT
        )
        self.assertEqual(summary.total_bytes, size)

    @inlineCallbacks
    def test_gzip(self) -> Any:
        """gzip-compressed calls pass untouched, in both directions."""
        stub, _, _ = self.setup_all()
        reply = yield in_thread(
            stub.GetItem,
            demo_pb2.GetItemRequest(id="z", payload_size=100_000),
            timeout=WAIT,
            compression=grpc.Compression.Gzip,
        )
        self.assertEqual(len(reply.payload), 100_000)
        summary = yield in_thread(
            stub.PutItems,
            iter([demo_pb2.Item(payload=b"z" * 50_000)] * 3),
            timeout=WAIT,
            compression=grpc.Compression.Gzip,
        )
        self.assertEqual(summary.total_bytes, 150_000)

    @inlineCallbacks
    def test_hundred_concurrent_calls(self) -> Any:
        """100 concurrent calls on one channel all succeed."""
        stub, _relay, _ = self.setup_all()

        def run() -> list[str]:
            futures = [
                stub.GetItem.future(
                    demo_pb2.GetItemRequest(
                        id=str(i), behaviour=demo_pb2.Behaviour(delay_ms=50)
                    ),
                    timeout=WAIT,
                )
                for i in range(100)
            ]
            return [f.result(timeout=WAIT).id for f in futures]

        ids = yield in_thread(run)
        self.assertEqual(ids, [str(i) for i in range(100)])
        self.assertEqual(len(self.made), 1)

    @inlineCallbacks
    def test_denied_method(self) -> Any:
        """A denied method gets UNIMPLEMENTED naming the method; nothing goes upstream."""
        _, upstream_port, servicer = self.start_master_api()
        policy = MethodPolicy.from_lists(["/"], ["/eventbroker.", "/demo.masterapi.v1.Items/Put"])
        gateway_port, _ = self.start_gateway(upstream_port, policy)
        stub = self.stub(gateway_port)
        error = yield rpc_error(stub.PutItems, iter([demo_pb2.Item()]), timeout=WAIT)
        self.assertEqual(error.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertIn("/demo.masterapi.v1.Items/PutItems", error.details())
        publish = self.channel(gateway_port).unary_unary(
            "/eventbroker.v1.EventBroker/Publish",
            request_serializer=None,
            response_deserializer=None,
        )
        error = yield rpc_error(publish, b"", timeout=WAIT)
        self.assertEqual(error.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(servicer.calls, [])

    @inlineCallbacks
    def test_master_api_down(self) -> Any:
        """An unreachable Master API gives UNAVAILABLE, well before the call's deadline."""
        probe = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        closed_port = probe.getHost().port
        yield probe.stopListening()
        gateway_port, _ = self.start_gateway(closed_port, connect_timeout=1.0)
        stub = self.stub(gateway_port)
        error = yield rpc_error(stub.GetItem, demo_pb2.GetItemRequest(), timeout=WAIT)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("Master API unavailable", error.details())

    @inlineCallbacks
    def test_master_api_restarted(self) -> Any:
        """After the Master API restarts on the same port, new calls succeed."""
        server, upstream_port, _ = self.start_master_api()
        gateway_port, _relay = self.start_gateway(upstream_port)
        stub = self.stub(gateway_port)
        reply = yield in_thread(stub.GetItem, demo_pb2.GetItemRequest(id="1"), timeout=WAIT)
        self.assertEqual(reply.id, "1")
        yield in_thread(lambda: server.stop(None).wait(WAIT))
        error = yield rpc_error(stub.GetItem, demo_pb2.GetItemRequest(), timeout=WAIT)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.start_master_api(upstream_port)

        def call_until_ok() -> Any:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    return stub.GetItem(demo_pb2.GetItemRequest(id="2"), timeout=WAIT)
                except grpc.RpcError as e:
                    # Inside the pool's short reconnect back-off calls fail fast.
                    if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

        reply = yield in_thread(call_until_ok)
        self.assertEqual(reply.id, "2")

    @inlineCallbacks
    def test_slow_reader_memory_bounded(self) -> Any:
        """A client that stops reading a large server stream makes the gateway stop
        reading from the Master API: the relay holds at most one upstream stream
        window unacknowledged, and the Master API has sent only a small part of the
        stream while the client sleeps."""
        stub, relay, _ = self.setup_all()
        # 16 MiB in all: well beyond what the grpcio client's own receive window
        # (grown by its BDP estimate) takes in while it does not read.
        count, size = 1024, 16 * 1024
        started = threading.Event()
        go_on = threading.Event()

        def run() -> int:
            request = demo_pb2.WatchItemsRequest(count=count, payload_size=size)
            replies = stub.WatchItems(request, timeout=WAIT * 2)
            received = len(next(replies).payload)
            started.set()
            go_on.wait(WAIT)
            for item in replies:
                received += len(item.payload)
            return received

        done = in_thread(run)
        yield wait_for(started.is_set)
        (call,) = relay.calls
        peak_buffer = 0
        previous = -1
        # Sample until the Master API has stopped sending (no change for 300 ms).
        while call.state.bytes_down != previous:
            previous = call.state.bytes_down
            for _ in range(30):
                peak_buffer = max(peak_buffer, len(call.writer.out))  # type: ignore[attr-defined]
                yield deferLater(reactor, 0.01, lambda: None)
        stalled_at = call.state.bytes_down
        peak_unacknowledged = call.state.peak_unacknowledged
        go_on.set()
        received = yield done
        self.assertEqual(received, count * size)
        self.assertLessEqual(peak_unacknowledged, CLIENT_STREAM_WINDOW)
        self.assertLess(stalled_at, count * size * 3 // 4)
        # The downstream buffer: its own high watermark, the DATA frame that crossed
        # it, and at most one upstream stream window that arrived after the pause.
        self.assertLessEqual(
            peak_buffer,
            http2.STREAM_BUFFER_HIGH + http2.MAX_FRAME_SIZE + CLIENT_STREAM_WINDOW,
        )
        figure(
            f"slow reader: Master API stalled after {stalled_at} of {count * size} bytes; "
            f"relay held <= {peak_unacknowledged} unacknowledged, h2 server buffered "
            f"<= {peak_buffer}"
        )


def figure(text: str) -> None:
    """Measurements the tests report (visible with ``pytest -s`` or in trial's output)."""
    print("\n[figure] " + text)


# --- a hand-driven HTTP/2 client ----------------------------------------------------------


class WireClient(Protocol):
    """An ``h2`` client speaking h2c prior knowledge; records every event per stream."""

    def __init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.events: dict[int, list[Any]] = {}
        self.lost = False

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            stream_id = getattr(event, "stream_id", None)
            if stream_id:
                self.events.setdefault(stream_id, []).append(event)
            if isinstance(event, DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        self.flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True

    def call(self, path: bytes, body: bytes = b"", *, end: bool = True,
             extra: Headers | None = None) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
            (b":authority", b"gateway.test"), (b"content-type", b"application/grpc"),
            (b"te", b"trailers"), *(extra or []),
        ]
        self.h2.send_headers(stream_id, headers, end_stream=not body and end)
        if body:
            self.h2.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id

    def finished(self, stream_id: int) -> bool:
        return any(isinstance(e, StreamEnded | StreamReset) for e in self.events.get(stream_id, []))

    def kinds(self, stream_id: int) -> list[str]:
        return [type(e).__name__ for e in self.events.get(stream_id, [])]


class WireTests(GatewayFixture):
    """Frames on the client's side of the gateway, seen by a hand-driven h2 client."""

    @inlineCallbacks
    def client(self, gateway_port: int) -> Any:
        client = WireClient()
        factory = ClientFactory.forProtocol(lambda: client)
        connector = reactor.connectTCP("127.0.0.1", gateway_port, factory)
        self.addCleanup(lambda: wait_for(lambda: client.lost))
        self.addCleanup(connector.disconnect)
        yield wait_for(lambda: client.transport is not None)
        return client

    @inlineCallbacks
    def test_trailers_only(self) -> Any:
        """An upstream error before any message, a refused method and an expired
        deadline each reach the client as a single HEADERS frame with END_STREAM."""
        _, upstream_port, _ = self.start_master_api()
        gateway_port, _ = self.start_gateway(upstream_port)
        client = yield self.client(gateway_port)
        failing = demo_pb2.GetItemRequest(
            behaviour=demo_pb2.Behaviour(fail_code=7, fail_message="no")
        )
        slow = demo_pb2.GetItemRequest(behaviour=demo_pb2.Behaviour(delay_ms=5000))
        streams = {
            7: client.call(GET_ITEM, frame(failing)),
            12: client.call(b"/eventbroker.v1.EventBroker/Publish", frame(failing)),
            4: client.call(GET_ITEM, frame(slow), extra=[(b"grpc-timeout", b"300m")]),
        }
        yield wait_for(lambda: all(client.finished(s) for s in streams.values()))
        for code, stream_id in streams.items():
            self.assertEqual(client.kinds(stream_id), ["ResponseReceived", "StreamEnded"])
            response = client.events[stream_id][0]
            self.assertIsNotNone(response.stream_ended)
            headers = dict(response.headers)
            self.assertEqual(headers[b":status"], b"200")
            self.assertEqual(int(headers[b"grpc-status"]), code)

    @inlineCallbacks
    def test_client_reset_cancels_upstream(self) -> Any:
        """RST_STREAM from the client cancels the call in the Master API."""
        _, upstream_port, servicer = self.start_master_api()
        gateway_port, relay = self.start_gateway(upstream_port)
        client = yield self.client(gateway_port)
        slow = demo_pb2.GetItemRequest(behaviour=demo_pb2.Behaviour(delay_ms=8000))
        stream_id = client.call(GET_ITEM, frame(slow))
        yield wait_for(lambda: servicer.calls)
        reset_at = time.monotonic()
        client.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        client.flush()
        yield wait_for(lambda: servicer.cancelled)
        figure(
            "client RST_STREAM -> Master API saw the cancel: "
            f"{(servicer.cancelled[0][1] - reset_at) * 1000:.2f} ms"
        )
        yield wait_for(lambda: not relay.calls)

    @inlineCallbacks
    def test_upstream_reset_after_head_resets_client(self) -> Any:
        """An upstream RST_STREAM after the response head resets the client's stream
        with the same code."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what == "ended":
                server.respond(stream_id)
                server.h2.send_data(stream_id, b"\x00\x00\x00\x00\x01")
                server.h2.reset_stream(stream_id, 0x2)
        upstream = reactor.listenTCP(0, ScriptedFactory(script), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        gateway_port, _ = self.start_gateway(upstream.getHost().port)
        client = yield self.client(gateway_port)
        stream_id = client.call(GET_ITEM, b"\x00\x00\x00\x00\x00")
        yield wait_for(lambda: client.finished(stream_id))
        self.assertEqual(client.kinds(stream_id)[0], "ResponseReceived")
        reset = client.events[stream_id][-1]
        self.assertIsInstance(reset, StreamReset)
        self.assertEqual(reset.error_code, 0x2)

    @inlineCallbacks
    def test_upstream_goaway(self) -> Any:
        """An upstream GOAWAY lets the in-flight call finish with its trailers; the next
        call opens a new upstream connection."""
        def script(server: ScriptedServer, stream_id: int, what: str) -> None:
            if what != "ended":
                return
            server.respond(stream_id)
            if len(factory.connections) == 1:
                server.h2.close_connection(last_stream_id=stream_id)
                server.h2.state_machine.state = server.h2.state_machine.state.SERVER_OPEN
            server.finish(stream_id, b"\x00\x00\x00\x00\x02hi"[:7])
        factory = ScriptedFactory(script)
        upstream = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        gateway_port, _ = self.start_gateway(upstream.getHost().port)
        client = yield self.client(gateway_port)
        first = client.call(GET_ITEM, b"\x00\x00\x00\x00\x00")
        yield wait_for(lambda: client.finished(first))
        self.assertEqual(
            client.kinds(first),
            ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"],
        )
        second = client.call(GET_ITEM, b"\x00\x00\x00\x00\x00")
        yield wait_for(lambda: client.finished(second))
        trailers = dict(client.events[second][-2].headers)
        self.assertEqual(trailers[b"grpc-status"], b"0")
        self.assertEqual(len(factory.connections), 2)


class TlsTests(GatewayFixture):
    """gRPC over TLS: ALPN h2 from the client to the gateway, and ``grpcs://`` from the
    gateway to the Master API, verified against the CA file."""

    @inlineCallbacks
    def test_tls_both_sides(self) -> Any:
        """A grpcio client over TLS reaches a TLS Master API through the gateway; both
        hops negotiated h2 by ALPN and the upstream certificate was verified."""
        dev = ensure_dev_certificate(self.mktemp())
        with open(dev.cert_path, "rb") as f:
            cert_pem = f.read()
        with open(dev.key_path, "rb") as f:
            key_pem = f.read()
        _, upstream_port, _servicer = self.start_master_api(
            credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)])
        )
        gateway_port, relay = self.start_gateway(
            upstream_port,
            tls=server_context_factory(dev.cert_path, dev.key_path),
            ca_file=dev.cert_path,
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{gateway_port}",
            grpc.ssl_channel_credentials(root_certificates=cert_pem),
        )
        self.addCleanup(channel.close)
        stub = demo_pb2_grpc.ItemsStub(channel)
        reply, call = yield in_thread(
            stub.GetItem.with_call,
            demo_pb2.GetItemRequest(id="tls", payload_size=10),
            metadata=[("x-echo-k-bin", b"\x01\x02")],
            timeout=WAIT,
        )
        self.assertEqual(reply.id, "tls")
        self.assertEqual(dict(call.initial_metadata())["x-echo-k-bin"], b"\x01\x02")

        def stream() -> int:
            request = demo_pb2.WatchItemsRequest(count=20, payload_size=1000)
            return sum(len(item.payload) for item in stub.WatchItems(request, timeout=WAIT))

        total = yield in_thread(stream)
        self.assertEqual(total, 20_000)
        self.assertEqual(self.made[0].transport.negotiatedProtocol, b"h2")
        assert relay.pool is not None
        (upstream,) = relay.pool._connections
        self.assertEqual(upstream.transport.negotiatedProtocol, b"h2")

    @inlineCallbacks
    def test_upstream_certificate_not_trusted(self) -> Any:
        """A ``grpcs://`` Master API whose certificate the CA file does not vouch for
        gives UNAVAILABLE, and nothing reaches its methods."""
        dev = ensure_dev_certificate(self.mktemp())
        other = ensure_dev_certificate(self.mktemp())
        with open(dev.cert_path, "rb") as f:
            cert_pem = f.read()
        with open(dev.key_path, "rb") as f:
            key_pem = f.read()
        _, upstream_port, servicer = self.start_master_api(
            credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)])
        )
        gateway_port, _ = self.start_gateway(upstream_port, tls=None, ca_file=other.cert_path)
        stub = self.stub(gateway_port)
        error = yield rpc_error(stub.GetItem, demo_pb2.GetItemRequest(), timeout=WAIT)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(servicer.calls, [])

    @inlineCallbacks
    def test_demo_client_over_h2c_and_tls(self) -> Any:
        """The demo client (the README's example) works through the gateway over h2c
        and over TLS with ALPN h2."""
        dev = ensure_dev_certificate(self.mktemp())
        _, upstream_port, _ = self.start_master_api()
        h2c_port, _ = self.start_gateway(upstream_port)
        tls_port, _ = self.start_gateway(
            upstream_port, tls=server_context_factory(dev.cert_path, dev.key_path)
        )
        for target, ca_file in ((f"127.0.0.1:{h2c_port}", None),
                                (f"localhost:{tls_port}", dev.cert_path)):
            lines = yield in_thread(grpc_client.run, target, ca_file, WAIT)
            self.assertEqual(len(lines), 5, lines)
            self.assertIn("'demo-1'", lines[0])
            self.assertIn("NOT_FOUND 'no item 7'", lines[4])

