# -*- test-case-name: tests.test_grpc_unary -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests of eventgw.events.h2broker at the wire: a scripted HTTP/2 server on 127.0.0.1:0.

The grpcio broker of tests.test_events covers the usual answers (each mode, each
status, deadline, cancellation, broker down) for both clients; this scripted server
sends what grpcio would never send -- HTTP errors without grpc-status, compressed or
truncated messages, resets with each error code -- and records the request frames.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.config import BrokerUpstream
from eventgw.errors import BrokerCallFailed, GrpcStatus
from eventgw.events.h2broker import H2BrokerClient
from eventgw.events.target import EVENT_BROKER_SERVICE
from eventgw.events.transcode import HttpRoute, RouteTable
from tests.events_support import WAIT_TIMEOUT, wait_until

Answer = Callable[[H2Connection, int], None]


def _route() -> HttpRoute:
    table = RouteTable.from_services([EVENT_BROKER_SERVICE])
    return next(r for r in table.routes if r.grpc_path.endswith("/Publish"))


def _message(response: Message, flag: int = 0) -> bytes:
    data = response.SerializeToString()
    return bytes([flag]) + len(data).to_bytes(4, "big") + data


def answer_ok(event_id: str = "x") -> Answer:
    def answer(conn: H2Connection, stream_id: int) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        conn.send_data(stream_id, _message(eventbroker_pb2.PublishResponse(id=event_id)))
        conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
    return answer


class _ScriptedServer(Protocol):
    def __init__(self, factory: _ScriptedFactory) -> None:
        self.factory = factory
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.factory.requests.append({"headers": dict(event.headers), "body": b""})
            elif isinstance(event, DataReceived):
                self.factory.requests[-1]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            elif isinstance(event, StreamEnded) and self.factory.answer is not None:
                self.factory.answer(self.conn, event.stream_id)
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]


class _ScriptedFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer | None = answer_ok()

    def buildProtocol(self, addr: object) -> _ScriptedServer:
        return _ScriptedServer(self)


class H2BrokerClientTests(TestCase):
    """One unary call per test against the scripted server."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.server = _ScriptedFactory()
        listen: Any = reactor.listenTCP
        port = listen(0, self.server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        self.client = H2BrokerClient(BrokerUpstream(
            target=f"127.0.0.1:{address.port}", tls=False, deadline=2.0))
        self.addCleanup(self.client.close)

    def call(self, **kwargs: Any) -> Deferred[Message]:
        from twisted.internet import reactor

        request = eventbroker_pb2.PublishRequest()
        request.event.id = "e-1"
        metadata = [(b"x-request-id", b"r-1")]
        return self.client.call(_route(), request, metadata, **kwargs).addTimeout(
            WAIT_TIMEOUT, reactor)

    @defer.inlineCallbacks
    def failure_of(self, **kwargs: Any) -> Any:
        try:
            yield self.call(**kwargs)
        except BrokerCallFailed as e:
            return e
        self.fail("the call succeeded")

    @defer.inlineCallbacks
    def test_request_on_the_wire(self) -> Any:
        """HEADERS as the gRPC spec has them, one length-prefixed message, the metadata;
        grpc-timeout is what was left of the 1.5 s when the HEADERS were sent."""
        response = yield self.call(timeout=1.5)
        self.assertEqual(response, eventbroker_pb2.PublishResponse(id="x"))
        request = self.server.requests[0]
        headers = request["headers"]
        self.assertEqual(
            {k: headers[k] for k in (":method", ":scheme", ":path", "content-type", "te",
                                     "x-request-id")},
            {":method": "POST", ":scheme": "http",
             ":path": "/eventbroker.v1.EventBroker/Publish",
             "content-type": "application/grpc", "te": "trailers", "x-request-id": "r-1"},
        )
        timeout = headers["grpc-timeout"]
        self.assertTrue(timeout.endswith("m"), timeout)
        self.assertTrue(0 < int(timeout[:-1]) <= 1500, timeout)
        body = request["body"]
        self.assertEqual(body[:5], b"\x00" + (len(body) - 5).to_bytes(4, "big"))
        self.assertEqual(eventbroker_pb2.PublishRequest.FromString(body[5:]).event.id, "e-1")

    @defer.inlineCallbacks
    def test_many_calls_share_a_connection(self) -> Any:
        """Sequential and concurrent calls all succeed over the pooled connection."""
        for _ in range(3):
            yield self.call()
        yield defer.gatherResults([self.call() for _ in range(50)])
        self.assertEqual(len(self.server.requests), 53)

    @defer.inlineCallbacks
    def test_trailers_only_with_details(self) -> Any:
        """A trailers-only error: code, percent-decoded message, details and metadata."""
        def answer(conn: H2Connection, stream_id: int) -> None:
            conn.send_headers(stream_id, [
                (":status", "200"), ("content-type", "application/grpc"),
                ("grpc-status", "16"), ("grpc-message", "token%20expired"),
                ("grpc-status-details-bin", base64.b64encode(b"\x08\x10").decode().rstrip("=")),
                ("www-authenticate", "Bearer"),
            ], end_stream=True)
        self.server.answer = answer
        error = yield self.failure_of()
        self.assertEqual((error.code, error.details, error.details_bin),
                         (GrpcStatus.UNAUTHENTICATED, "token expired", b"\x08\x10"))
        self.assertEqual(error.trailer("www-authenticate"), "Bearer")

    @defer.inlineCallbacks
    def test_http_error_without_grpc_status(self) -> Any:
        """An HTTP 503 without grpc-status is UNAVAILABLE (the spec's HTTP mapping)."""
        def answer(conn: H2Connection, stream_id: int) -> None:
            conn.send_headers(stream_id, [(":status", "503")])
            conn.send_data(stream_id, b"busy", end_stream=True)
        self.server.answer = answer
        error = yield self.failure_of()
        self.assertEqual(error.code, GrpcStatus.UNAVAILABLE)

    @defer.inlineCallbacks
    def test_bad_messages(self) -> Any:
        """A compressed flag never asked for, a truncated message, no message: INTERNAL."""
        whole = _message(eventbroker_pb2.PublishResponse(id="x"))
        for body in (_message(eventbroker_pb2.PublishResponse(id="x"), flag=1),
                     whole[:-1], b""):
            def answer(conn: H2Connection, stream_id: int, body: bytes = body) -> None:
                conn.send_headers(stream_id, [(":status", "200"),
                                              ("content-type", "application/grpc")])
                if body:
                    conn.send_data(stream_id, body)
                conn.send_headers(stream_id, [("grpc-status", "0")], end_stream=True)
            self.server.answer = answer
            error = yield self.failure_of()
            self.assertEqual(error.code, GrpcStatus.INTERNAL, body)

    @defer.inlineCallbacks
    def test_not_grpc(self) -> Any:
        """A 200 that is not application/grpc is UNKNOWN."""
        def answer(conn: H2Connection, stream_id: int) -> None:
            conn.send_headers(stream_id, [(":status", "200"), ("content-type", "text/html")])
            conn.send_data(stream_id, b"<html>", end_stream=True)
        self.server.answer = answer
        error = yield self.failure_of()
        self.assertEqual(error.code, GrpcStatus.UNKNOWN)

    @defer.inlineCallbacks
    def test_resets(self) -> Any:
        """RST_STREAM maps to a status: REFUSED_STREAM UNAVAILABLE, CANCEL CANCELLED,
        ENHANCE_YOUR_CALM RESOURCE_EXHAUSTED, others INTERNAL."""
        expected = {0x7: GrpcStatus.UNAVAILABLE, 0x8: GrpcStatus.CANCELLED,
                    0xB: GrpcStatus.RESOURCE_EXHAUSTED, 0x2: GrpcStatus.INTERNAL}
        for error_code, status in expected.items():
            def answer(conn: H2Connection, stream_id: int, error_code: int = error_code
                       ) -> None:
                conn.reset_stream(stream_id, error_code)
            self.server.answer = answer
            error = yield self.failure_of()
            self.assertEqual(error.code, status, hex(error_code))

    @defer.inlineCallbacks
    def test_refused_stream_sent_again_once(self) -> Any:
        """REFUSED_STREAM (not processed) is sent again once; a second refusal is
        UNAVAILABLE."""
        refusals = [1]

        def answer(conn: H2Connection, stream_id: int) -> None:
            if refusals:
                refusals.pop()
                conn.reset_stream(stream_id, 0x7)
            else:
                answer_ok("second")(conn, stream_id)
        self.server.answer = answer
        response = yield self.call()
        self.assertEqual(response, eventbroker_pb2.PublishResponse(id="second"))
        self.assertEqual(len(self.server.requests), 2)
        self.server.answer = lambda conn, stream_id: conn.reset_stream(stream_id, 0x7)
        error = yield self.failure_of()
        self.assertEqual(error.code, GrpcStatus.UNAVAILABLE)
        self.assertEqual(len(self.server.requests), 4)

    @defer.inlineCallbacks
    def test_goaway_before_processing(self) -> Any:
        """A call past the last stream of a GOAWAY goes out again on a new connection."""
        went_away: list[int] = []

        def answer(conn: H2Connection, stream_id: int) -> None:
            if stream_id == 3 and not went_away:
                went_away.append(stream_id)
                conn.close_connection(last_stream_id=1)
            else:
                answer_ok("after")(conn, stream_id)
        self.server.answer = answer
        yield self.call()
        response = yield self.call()
        self.assertEqual(response, eventbroker_pb2.PublishResponse(id="after"))
        self.assertEqual((went_away, len(self.server.requests)), ([3], 3))

    @defer.inlineCallbacks
    def test_deadline_enforced_locally(self) -> Any:
        """A server that never answers: DEADLINE_EXCEEDED after the deadline."""
        self.server.answer = None
        error = yield self.failure_of(timeout=0.2)
        self.assertEqual(error.code, GrpcStatus.DEADLINE_EXCEEDED)

    @defer.inlineCallbacks
    def test_default_deadline_for_each_call(self) -> Any:
        """Calls started at different times under the default deadline all end with
        DEADLINE_EXCEEDED (one timer serves them in turn)."""
        from twisted.internet import reactor, task

        self.server.answer = None
        self.client.deadline = 0.2
        first = self.failure_of()
        yield task.deferLater(reactor, 0.05, lambda: None)
        second = self.failure_of()
        errors = yield defer.gatherResults([first, second])
        self.assertEqual([e.code for e in errors], [GrpcStatus.DEADLINE_EXCEEDED] * 2)

    @defer.inlineCallbacks
    def test_calls_in_flight_at_close(self) -> Any:
        """close() ends the calls still waiting for an answer as UNAVAILABLE."""
        self.server.answer = None
        pending = self.failure_of()
        yield wait_until(lambda: bool(self.server.requests))
        yield self.client.close()
        error = yield pending
        self.assertEqual(error.code, GrpcStatus.UNAVAILABLE)

    @defer.inlineCallbacks
    def test_cancel(self) -> Any:
        """Cancelling the Deferred fails it with CancelledError; the next call still works."""
        self.server.answer = None
        pending = self.call()
        yield wait_until(lambda: bool(self.server.requests))
        pending.cancel()
        with self.assertRaises(CancelledError):
            yield pending
        self.server.answer = answer_ok("again")
        response = yield self.call()
        self.assertEqual(response, eventbroker_pb2.PublishResponse(id="again"))

    @defer.inlineCallbacks
    def test_closed_client(self) -> Any:
        """After close(), calls fail UNAVAILABLE at once."""
        yield self.client.close()
        error = yield self.failure_of()
        self.assertEqual(error.code, GrpcStatus.UNAVAILABLE)
