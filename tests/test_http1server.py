# -*- test-case-name: tests.test_http1server -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.downstream.http1server: the HTTP/1.1 protocol over StringTransport."""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventgw.config import Limits
from eventgw.downstream.http1server import (
    DISCARD_BODY_LIMIT,
    MAX_BUFFERED_BYTES,
    Http1ServerProtocol,
)
from eventgw.exchange import Headers, RequestHead, ResponseWriter, StaticReply, send_error
from tests.support import EchoTarget
from tests.test_http1parse import MAX_HEADER, REJECTED

_STAMP = re.compile(rb"(?:date: [^\r]*|server: eventgw|x-request-id: [0-9a-f]{32})\r\n")


def unstamped(data: bytes) -> bytes:
    """The bytes with the fields every response gets (date, server, a generated
    x-request-id) taken out, for comparing framing byte for byte."""
    return _STAMP.sub(b"", data)

CHUNKED_PREFIX = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
GET = b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n"
ECHO_GET = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nGET /x 0\n"


class RecordingTransport(StringTransport):
    """A StringTransport that counts write calls and records read pauses/resumes."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        self.write_calls = 0
        self.read_events: list[str] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.write_calls += 1
        super().write(data)

    def pauseProducing(self) -> None:
        self.read_events.append("pause")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.read_events.append("resume")
        super().resumeProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class ManualHandler:
    """Records everything; responds only when the test tells its writer to."""

    def __init__(self, head: RequestHead, writer: ResponseWriter) -> None:
        self.head = head
        self.writer = writer
        self.chunks: list[bytes] = []
        self.trailers: Headers | None = None
        self.lost: str | None = None

    def body_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def body_ended(self, trailers: Headers) -> None:
        self.trailers = trailers

    def connection_lost(self, reason: str) -> None:
        self.lost = reason


class ManualTarget:
    """A RequestTarget whose handlers wait for the test; ``on_start`` runs first."""

    def __init__(self) -> None:
        self.handlers: list[ManualHandler] = []
        self.on_start: Any = None

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> ManualHandler:
        handler = ManualHandler(head, writer)
        self.handlers.append(handler)
        if self.on_start is not None:
            self.on_start(handler)
        return handler


class RecordingProducer:
    """A Producer that records pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_producing(self) -> None:
        self.calls.append("pause")

    def resume_producing(self) -> None:
        self.calls.append("resume")


def split_responses(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split content-length framed responses into (head, body) pairs."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b": ")
            if name.lower() == b"content-length":
                length = int(value)
        out.append((head, rest[:length]))
        data = rest[length:]
    return out


class ProtocolTestCase(SynchronousTestCase):
    """Builds a protocol on a RecordingTransport with a MemoryReactorClock."""

    def connect(
        self,
        target: Any = None,
        limits: Limits | None = None,
        *,
        access_log: bool = True,
    ) -> tuple[Http1ServerProtocol, RecordingTransport, MemoryReactorClock]:
        self.clock = MemoryReactorClock()
        self.target = target if target is not None else EchoTarget()
        self.limits = limits if limits is not None else Limits()
        self.proto = Http1ServerProtocol(
            self.target, self.limits, scheme=b"https", reactor=self.clock, access_log=access_log
        )
        self.transport = RecordingTransport()
        self.proto.makeConnection(self.transport)
        return self.proto, self.transport, self.clock

    def lose(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone("closed by peer")))

    def access_events(self) -> list[dict[str, Any]]:
        return [e for e in self.observer if e.get("log_namespace") == "eventgw.access"]

    def setUp(self) -> None:
        self.observer = EventLoggingObserver.createWithCleanup(
            self,  # type: ignore[arg-type]
            globalLogPublisher,
        )


class RequestFlowTests(ProtocolTestCase):
    """Requests reach the target and responses come back correctly framed."""

    def test_simple_get(self) -> None:
        """A GET reaches the target with a complete RequestHead; the response goes out
        in a single transport write and the connection stays open."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"GET /x?a=1 HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n\r\n")
        [handler] = self.target.handlers
        head = handler.head
        self.assertEqual(
            (head.method, head.target, head.authority, head.scheme, head.protocol, head.peer),
            (b"GET", b"/x?a=1", b"gw.test", b"https", "HTTP/1.1", "10.1.2.3"),
        )
        # The client sent no x-request-id: the gateway's is appended, for the target.
        self.assertEqual(head.headers[:2], [(b"host", b"gw.test"), (b"x-a", b"1")])
        self.assertEqual(head.headers[2:], [(b"x-request-id", head.log_fields["request_id"]
                                             .encode())])
        self.assertEqual(head.content_length, 0)
        self.assertFalse(head.body_expected)
        self.assertEqual(
            unstamped(transport.value()),
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\n"
            b"GET /x?a=1 0\n",
        )
        self.assertEqual(transport.write_calls, 1)
        self.assertFalse(transport.disconnecting)

    def test_registers_as_streaming_producer(self) -> None:
        """The protocol registers itself as the transport's streaming producer."""
        proto, transport, _ = self.connect()
        self.assertIs(transport.producer, proto)
        self.assertTrue(transport.streaming)

    def test_keep_alive_two_requests(self) -> None:
        """Two requests on one connection get two responses."""
        proto, transport, _ = self.connect()
        proto.dataReceived(GET)
        proto.dataReceived(b"GET /y HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses = split_responses(transport.value())
        self.assertEqual([body for _, body in responses], [b"GET /x 0\n", b"GET /y 0\n"])
        self.assertFalse(transport.disconnecting)

    def test_pipelining_in_order(self) -> None:
        """Pipelined requests are started one at a time, strictly after the previous
        response ended, and answered in order."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        self.assertEqual(len(target.handlers), 1)
        first = target.handlers[0]
        first.writer.write_head(200, [(b"content-length", b"1")])
        first.writer.write_body(b"1")
        first.writer.end()
        self.assertEqual(len(target.handlers), 1)  # the next one starts on the next turn
        clock.advance(0)
        self.assertEqual(len(target.handlers), 2)
        second = target.handlers[1]
        self.assertEqual(second.head.target, b"/2")
        self.assertEqual(second.chunks, [b"abc"])
        second.writer.write_head(200, [(b"content-length", b"1")])
        second.writer.write_body(b"2")
        second.writer.end()
        clock.advance(0)
        third = target.handlers[2]
        third.writer.write_head(200, [], end=True)
        bodies = [body for _, body in split_responses(transport.value())]
        self.assertEqual(bodies, [b"1", b"2", b""])

    def test_pipelining_with_echo(self) -> None:
        """Pipelined requests answered synchronously all come back from one read."""
        proto, transport, _ = self.connect()
        proto.dataReceived(GET * 3)
        self.assertEqual(len(split_responses(transport.value())), 3)
        self.assertEqual(transport.write_calls, 1)

    def test_post_content_length(self) -> None:
        """A Content-Length body is delivered, even when it arrives in pieces."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        [handler] = self.target.handlers
        self.assertTrue(handler.head.body_expected)
        self.assertEqual(handler.head.content_length, 10)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"world")
        self.assertEqual(handler.body, b"helloworld")
        self.assertTrue(transport.value().endswith(b"POST /e 10\n"))

    def test_post_chunked(self) -> None:
        """A chunked body is de-chunked; trailers reach body_ended."""
        target = ManualTarget()
        proto, _, _ = self.connect(target)
        proto.dataReceived(CHUNKED_PREFIX + b"\r\n5\r\nhello\r\n")
        [handler] = target.handlers
        self.assertIsNone(handler.head.content_length)
        self.assertTrue(handler.head.body_expected)
        proto.dataReceived(b"6\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n")
        self.assertEqual(b"".join(handler.chunks), b"hello world")
        self.assertEqual(handler.trailers, [(b"x-sum", b"1")])

    def test_byte_at_a_time(self) -> None:
        """A request fed one byte at a time is served exactly like a whole one."""
        proto, transport, _ = self.connect()
        data = CHUNKED_PREFIX + b"\r\n3\r\nabc\r\n0\r\n\r\n"
        for index in range(len(data)):
            proto.dataReceived(data[index : index + 1])
        self.assertTrue(transport.value().endswith(b"POST / 3\n"))

    def test_head_has_no_body(self) -> None:
        """A HEAD response keeps content-length but sends no body."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n" + GET)
        self.assertEqual(
            unstamped(transport.value()),
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\n"
            + ECHO_GET,
        )

    def test_204_and_304_have_no_body(self) -> None:
        """204 and 304 responses carry no body and no chunked framing."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(GET + GET)
        target.handlers[0].writer.write_head(204, [])
        target.handlers[0].writer.write_body(b"ignored")
        target.handlers[0].writer.end()
        clock.advance(0)
        target.handlers[1].writer.write_head(304, [(b"etag", b'"1"')])
        target.handlers[1].writer.end()
        self.assertEqual(
            unstamped(transport.value()),
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\netag: \"1\"\r\n\r\n",
        )

    def test_chunked_response_with_trailers(self) -> None:
        """Without content-length the response is chunked; trailers are sent only to
        clients that sent TE: trailers."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n" + GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [(b"x-a", b"1")])
        writer.write_body(b"hello")
        writer.end([(b"grpc-status", b"0")])
        clock.advance(0)
        writer = target.handlers[1].writer
        writer.write_head(200, [])
        writer.write_body(b"hi")
        writer.end([(b"grpc-status", b"0")])
        self.assertEqual(
            unstamped(transport.value()),
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        )

    def test_writes_outside_receive_are_coalesced(self) -> None:
        """Head and body written outside dataReceived go out together on the next
        reactor turn, or at once when the response ends."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.write_body(b"a")
        writer.write_body(b"b")
        self.assertEqual(transport.write_calls, 0)
        clock.advance(0)
        self.assertEqual(transport.write_calls, 1)
        writer.write_body(b"c")
        writer.end()
        self.assertEqual(transport.write_calls, 2)
        self.assertTrue(transport.value().endswith(b"1\r\nc\r\n0\r\n\r\n"))

    def test_end_with_head(self) -> None:
        """write_head(end=True) without a length sends content-length: 0."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        target.handlers[0].writer.write_head(202, [], end=True)
        self.assertEqual(
            unstamped(transport.value()), b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
        )

    def test_handler_error_response(self) -> None:
        """A target answering with send_error (404 JSON) keeps the connection usable."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"GET /missing HTTP/1.1\r\nHost: h\r\n\r\n" + GET)
        responses = split_responses(transport.value())
        self.assertTrue(responses[0][0].startswith(b"HTTP/1.1 404 Not Found\r\n"))
        self.assertEqual(json.loads(responses[0][1])["message"], "no route")
        self.assertEqual(responses[1][1], b"GET /x 0\n")

    def test_http10_close_delimited(self) -> None:
        """An HTTP/1.0 response without length is close-delimited."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        [handler] = target.handlers
        self.assertEqual(handler.head.protocol, "HTTP/1.0")
        self.assertEqual(handler.head.authority, b"")
        handler.writer.write_head(200, [])
        handler.writer.write_body(b"raw")
        handler.writer.end()
        self.assertEqual(
            unstamped(transport.value()), b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nraw"
        )
        self.assertTrue(transport.disconnecting)

    def test_http10_keep_alive(self) -> None:
        """HTTP/1.0 with Connection: keep-alive and a length stays open."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertIn(b"connection: keep-alive\r\n", transport.value())
        self.assertFalse(transport.disconnecting)

    def test_connection_close_request(self) -> None:
        """Connection: close from the client closes after the response."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" + GET)
        self.assertIn(b"connection: close\r\n", transport.value())
        self.assertEqual(len(split_responses(transport.value())), 1)
        self.assertTrue(transport.disconnecting)
        # A TLS transport would not shut down with a producer still registered.
        self.assertIsNone(transport.producer)

    def test_interim_response(self) -> None:
        """A 103 from the handler is sent before the final response."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(103, [(b"link", b"</s.css>")])
        writer.write_head(200, [], end=True)
        self.assertEqual(
            unstamped(transport.value()),
            b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )

    def test_length_overrun_closes(self) -> None:
        """A body longer than its content-length is cut and the connection closes."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [(b"content-length", b"2")])
        writer.write_body(b"abcdef")
        writer.end()
        self.assertTrue(transport.value().endswith(b"\r\n\r\nab"))
        self.assertTrue(transport.disconnecting)

    def test_response_splitting_header_gets_502(self) -> None:
        """A response header carrying CR/LF is never sent; the client gets a 502."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [(b"x-a", b"1\r\nset-cookie: evil=1")])
        writer.write_body(b"ignored")
        writer.end()
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertNotIn(b"evil", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_handler_exception(self) -> None:
        """A target that raises gets the client a 500 and the connection closed."""
        target = ManualTarget()

        def explode(handler: ManualHandler) -> None:
            raise ValueError("boom")

        target.on_start = explode
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 Internal Server Error\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_drain_idle_and_busy(self) -> None:
        """drain() closes an idle connection at once, a busy one after its response."""
        proto, transport, _ = self.connect()
        proto.drain()
        self.assertTrue(transport.disconnecting)
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        proto.drain()
        self.assertFalse(transport.disconnecting)
        target.handlers[0].writer.write_head(200, [], end=True)
        self.assertIn(b"connection: close", transport.value())
        self.assertTrue(transport.disconnecting)


class ExpectContinueTests(ProtocolTestCase):
    """Expect: 100-continue."""

    REQUEST = b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"

    def test_continue_sent(self) -> None:
        """100 Continue is sent once the target accepted the exchange, then the body
        flows and the final response follows."""
        proto, transport, _ = self.connect()
        proto.dataReceived(self.REQUEST)
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        proto.dataReceived(b"hello")
        self.assertTrue(transport.value().endswith(b"POST /e 5\n"))

    def test_no_continue_when_answered(self) -> None:
        """A target that answers at once (e.g. 413) gets no 100 Continue sent, and the
        connection closes after its response since the body will not come."""
        target = ManualTarget()
        target.on_start = lambda handler: send_error(handler.writer, 413, "too large")
        proto, transport, _ = self.connect(target)
        proto.dataReceived(self.REQUEST)
        data = transport.value()
        self.assertTrue(data.startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", data)
        self.assertIn(b"connection: close", data)
        self.assertTrue(transport.disconnecting)


class EarlyResponseTests(ProtocolTestCase):
    """Responses that end before the request body was read."""

    def test_small_rest_is_discarded(self) -> None:
        """A small unread body is read and dropped; the next request is served."""

        class Early:
            def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> StaticReply:
                send_error(writer, 403, "no")
                return StaticReply()

        proto, transport, clock = self.connect(Early())
        proto.dataReceived(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello")
        self.assertNotIn(b"connection: close", transport.value())
        proto.dataReceived(b"world" + GET)
        clock.advance(0)
        self.assertEqual(len(split_responses(transport.value())), 2)
        self.assertFalse(transport.disconnecting)

    def test_large_rest_closes(self) -> None:
        """A large (or chunked) unread body makes the connection close after the
        response instead of reading it."""
        for request in (
            b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
            % (DISCARD_BODY_LIMIT + 1),
            CHUNKED_PREFIX + b"\r\n",
        ):
            target = ManualTarget()
            target.on_start = lambda handler: send_error(handler.writer, 403, "no")
            proto, transport, _ = self.connect(target)
            proto.dataReceived(request)
            self.assertIn(b"connection: close", transport.value())
            self.assertTrue(transport.disconnecting)


class BadRequestTests(ProtocolTestCase):
    """Malformed input is answered with the right status, logged, and closed, and
    nothing reaches the target."""

    def _assert_refused(self, data: bytes, status: int) -> None:
        proto, transport, _ = self.connect(limits=Limits(max_header_bytes=MAX_HEADER))
        proto.dataReceived(data + GET)
        response = transport.value()
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), (data[:80], head))
        self.assertIn(b"connection: close", head)
        self.assertIn(b"content-type: application/json", head)
        self.assertIn("code", json.loads(body))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.target.handlers, [], data)

    def test_smuggling_cases_never_reach_target(self) -> None:
        """Every head-level smuggling and syntax case of the codec table gets its
        status, and no exchange starts -- neither for it nor for a request after it."""
        for _name, data, status in REJECTED:
            if data.startswith(CHUNKED_PREFIX):
                continue
            self._assert_refused(data, status)
        protocol_errors = [
            e for e in self.observer if e.get("log_namespace") == "eventgw.protocol"
        ]
        self.assertTrue(protocol_errors)
        self.assertEqual(protocol_errors[0]["peer"], "10.1.2.3")

    def test_bad_chunked_body(self) -> None:
        """Broken chunk framing after the head stops the handler (connection_lost,
        no body_ended) and gets the client a 400 when no response started."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(CHUNKED_PREFIX + b"\r\n3\r\nabcX\r\n0\r\n\r\n")
        [handler] = target.handlers
        self.assertIsNone(handler.trailers)
        self.assertIsNotNone(handler.lost)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(transport.disconnecting)
        handler.writer.write_head(200, [], end=True)  # ignored
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_bad_body_after_response_head(self) -> None:
        """Broken framing after the response head went out closes the connection and
        logs the exchange as aborted."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(CHUNKED_PREFIX + b"\r\n3\r\nabc\r\n")
        [handler] = target.handlers
        handler.writer.write_head(200, [])
        handler.writer.write_body(b"streaming")
        proto.dataReceived(b"zz\r\n")
        self.assertIsNotNone(handler.lost)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)
        self.assertEqual(self.access_events()[0]["status"], "aborted")

    def test_handler_exception_in_body(self) -> None:
        """A handler raising in body_received gets the client a 500 and a close."""
        target = ManualTarget()

        def explode(data: bytes) -> None:
            raise RuntimeError("bad body")

        target.on_start = lambda handler: setattr(handler, "body_received", explode)
        proto, transport, _ = self.connect(target)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_headers_too_large(self) -> None:
        """A head over max_header_bytes is a 431, even before it is complete."""
        limits = Limits(max_header_bytes=1024)
        proto, transport, _ = self.connect(limits=limits)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000)
        self.assertTrue(
            transport.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        )
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.target.handlers, [])

    def test_body_too_large(self) -> None:
        """A declared body over max_request_body is a 413 before the target sees it."""
        proto, transport, _ = self.connect(limits=Limits(max_request_body=10))
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(self.target.handlers, [])

    def test_input_after_error_ignored(self) -> None:
        """Bytes arriving after the error response are ignored."""
        proto, transport, _ = self.connect()
        proto.dataReceived(b"BAD\r\n\r\n")
        before = transport.value()
        proto.dataReceived(GET)
        self.assertEqual(transport.value(), before)
        self.assertEqual(self.target.handlers, [])


class FuzzTests(ProtocolTestCase):
    """Arbitrary input never escapes dataReceived as an exception."""

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=40),
                st.sampled_from([GET, CHUNKED_PREFIX, b"\r\n", b"0\r\n\r\n", b"5\r\nhello\r\n",
                                 b"Content-Length: 3\r\n", b"Expect: 100-continue\r\n"]),
            ),
            max_size=12,
        )
    )
    def test_random_input(self, pieces: list[bytes]) -> None:
        """Whatever arrives, the protocol answers, waits, or closes; every response
        it writes starts with a status line."""
        proto, transport, clock = self.connect()
        for piece in pieces:
            proto.dataReceived(piece)
            clock.advance(0)
        output = transport.value()
        self.assertTrue(output == b"" or output.startswith(b"HTTP/1.1 "))
        self.lose()


class TimeoutTests(ProtocolTestCase):
    """Header and idle timeouts, driven by the injected clock."""

    def test_trickled_head_times_out(self) -> None:
        """A head not complete within header_timeout gets 408 and a close."""
        proto, transport, clock = self.connect()
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(self.limits.header_timeout - 1)
        proto.dataReceived(b"Host: h\r\n")
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.target.handlers, [])

    def test_silent_connection_closed(self) -> None:
        """A connection that sends nothing is closed after header_timeout, silently."""
        _, transport, clock = self.connect()
        clock.advance(self.limits.header_timeout)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_idle_keep_alive_closed(self) -> None:
        """A keep-alive connection idle for idle_timeout closes without a response."""
        proto, transport, clock = self.connect()
        proto.dataReceived(GET)
        sent = transport.value()
        clock.advance(self.limits.idle_timeout - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), sent)

    def test_busy_connection_not_timed_out(self) -> None:
        """Requests spread over longer than header_timeout keep the connection open;
        the next request after idling gets its own header deadline."""
        proto, transport, clock = self.connect()
        for _ in range(5):
            clock.advance(self.limits.header_timeout - 1)
            proto.dataReceived(GET)
        self.assertFalse(transport.disconnecting)
        clock.advance(self.limits.idle_timeout - 1)
        proto.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(self.limits.header_timeout - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertIn(b"408", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_no_timeout_while_exchange_in_flight(self) -> None:
        """A slow response is the target's business: no header or idle timeout."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(GET)
        clock.advance(self.limits.idle_timeout * 2)
        self.assertFalse(transport.disconnecting)
        target.handlers[0].writer.write_head(200, [], end=True)
        self.assertFalse(transport.disconnecting)

    def test_timers_cancelled_on_disconnect(self) -> None:
        """No delayed call is left behind when the connection goes."""
        proto, _, clock = self.connect()
        proto.dataReceived(GET)
        self.lose()
        self.assertEqual([c for c in clock.getDelayedCalls() if c.active()], [])


class BackPressureTests(ProtocolTestCase):
    """Back-pressure in both directions."""

    def test_pause_request_body(self) -> None:
        """pause_request_body pauses the transport and delivery; resume delivers what
        was buffered (on the next turn) and resumes the transport."""
        target = ManualTarget()
        target.on_start = lambda handler: handler.writer.pause_request_body()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
        [handler] = target.handlers
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(handler.chunks, [])
        proto.dataReceived(b"def")
        self.assertEqual(handler.chunks, [])
        handler.writer.resume_request_body()
        self.assertEqual(transport.producerState, "producing")
        clock.advance(0)
        self.assertEqual(b"".join(handler.chunks), b"abcdef")
        self.assertEqual(handler.trailers, [])

    def test_pause_during_body(self) -> None:
        """Pausing from body_received stops further delivery at once."""
        target = ManualTarget()
        proto, _, clock = self.connect(target)
        proto.dataReceived(CHUNKED_PREFIX + b"\r\n1\r\na\r\n")
        [handler] = target.handlers
        handler.writer.pause_request_body()
        proto.dataReceived(b"1\r\nb\r\n0\r\n\r\n")
        self.assertEqual(handler.chunks, [b"a"])
        self.assertIsNone(handler.trailers)
        handler.writer.resume_request_body()
        clock.advance(0)
        self.assertEqual(handler.chunks, [b"a", b"b"])
        self.assertEqual(handler.trailers, [])

    def test_response_producer_paused_and_resumed(self) -> None:
        """The transport pausing the protocol pauses the exchange's producer, and
        resuming resumes it; a producer registered while paused is paused at once."""
        target = ManualTarget()
        proto, _, _ = self.connect(target)
        proto.dataReceived(GET)
        producer = RecordingProducer()
        target.handlers[0].writer.register_producer(producer)
        proto.pauseProducing()
        proto.resumeProducing()
        self.assertEqual(producer.calls, ["pause", "resume"])
        proto.pauseProducing()
        late = RecordingProducer()
        target.handlers[0].writer.unregister_producer()
        target.handlers[0].writer.register_producer(late)
        self.assertEqual(late.calls, ["pause"])
        proto.resumeProducing()
        self.assertEqual(late.calls, ["pause", "resume"])
        self.assertEqual(producer.calls, ["pause", "resume", "pause"])

    def test_pipelined_flood_stops_reading(self) -> None:
        """While a response is pending, more than MAX_BUFFERED_BYTES of pipelined input
        pauses the transport; finishing the exchange resumes it."""
        target = ManualTarget()
        proto, transport, clock = self.connect(target)
        proto.dataReceived(GET)
        proto.dataReceived(GET * (MAX_BUFFERED_BYTES // len(GET) + 1))
        self.assertEqual(transport.producerState, "paused")
        target.handlers[0].writer.write_head(200, [], end=True)
        clock.advance(0)
        self.assertEqual(len(target.handlers), 2)
        target.handlers[1].writer.write_head(200, [], end=True)
        clock.advance(0)
        self.assertEqual(transport.producerState, "producing")

    def test_no_new_exchange_while_client_not_reading(self) -> None:
        """While the transport has paused the protocol, pipelined requests are not
        started (so responses cannot pile up); resuming serves them."""
        proto, transport, clock = self.connect()
        proto.pauseProducing()
        proto.dataReceived(GET * 3)
        self.assertEqual(self.target.handlers, [])
        self.assertEqual(transport.value(), b"")
        proto.resumeProducing()
        clock.advance(0)
        self.assertEqual(len(split_responses(transport.value())), 3)

    def test_client_not_reading_is_reset(self) -> None:
        """A client that leaves its responses unread for a whole timeout is reset
        (a graceful close would wait on it forever)."""
        proto, transport, clock = self.connect()
        proto.dataReceived(GET)
        proto.pauseProducing()
        proto.dataReceived(GET)
        clock.advance(self.limits.header_timeout)
        self.assertTrue(transport.aborted)
        self.assertEqual(len(self.target.handlers), 1)

    def test_large_body_flushed_at_threshold(self) -> None:
        """A streaming response is handed to the transport in bounded pieces."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        for _ in range(20):
            writer.write_body(b"x" * 8192)
        self.assertGreaterEqual(transport.write_calls, 2)

    def test_large_body_inside_receive_flushed(self) -> None:
        """Even a handler writing synchronously from dataReceived hands big output to
        the transport as it goes, so the transport can push back."""
        target = ManualTarget()

        def stream(handler: ManualHandler) -> None:
            handler.writer.write_head(200, [])
            for _ in range(20):
                handler.writer.write_body(b"x" * 8192)
            self.assertGreaterEqual(self.transport.write_calls, 2)

        target.on_start = stream
        proto, _, _ = self.connect(target)
        proto.dataReceived(GET)
        self.assertGreaterEqual(self.transport.write_calls, 2)


class DisconnectTests(ProtocolTestCase):
    """The client going away."""

    def test_disconnect_mid_response(self) -> None:
        """connection_lost reaches the handler; later writer calls are ignored."""
        target = ManualTarget()
        proto, _, _ = self.connect(target)
        proto.dataReceived(GET)
        [handler] = target.handlers
        handler.writer.write_head(200, [])
        handler.writer.write_body(b"partial")
        self.lose()
        self.assertIn("closed by peer", handler.lost or "")
        handler.writer.write_body(b"more")
        handler.writer.end()
        handler.writer.pause_request_body()
        handler.writer.register_producer(RecordingProducer())
        [event] = self.access_events()
        self.assertEqual(event["status"], "aborted")

    def test_disconnect_mid_body(self) -> None:
        """A client leaving mid-upload tells the handler."""
        target = ManualTarget()
        proto, _, _ = self.connect(target)
        proto.dataReceived(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc")
        self.lose()
        self.assertIsNotNone(target.handlers[0].lost)

    def test_disconnect_after_response(self) -> None:
        """A finished exchange is not told about a later disconnect."""
        proto, _, _ = self.connect()
        proto.dataReceived(GET)
        self.lose()
        self.assertIsNone(self.target.handlers[0].lost)

    def test_abort(self) -> None:
        """abort() after the head closes the connection and logs the exchange."""
        target = ManualTarget()
        proto, transport, _ = self.connect(target)
        proto.dataReceived(GET)
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.abort()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.access_events()[0]["status"], "aborted")


class AccessLogTests(ProtocolTestCase):
    """One access-log event per exchange."""

    def test_event_fields(self) -> None:
        """The event carries peer, method, path, protocol, status, the body byte counts
        and the duration measured with the injected clock, plus the target's log fields."""
        target = ManualTarget()
        target.on_start = lambda handler: handler.head.log_fields.update(route="api")
        proto, _transport, clock = self.connect(target)
        request = b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        proto.dataReceived(request)
        clock.advance(0.25)
        writer = target.handlers[0].writer
        writer.write_head(201, [(b"content-length", b"2")])
        writer.write_body(b"ok")
        writer.end()
        [event] = self.access_events()
        self.assertEqual(
            {k: event[k] for k in ("peer", "method", "path", "protocol", "status", "route")},
            {"peer": "10.1.2.3", "method": "POST", "path": "/api/x", "protocol": "HTTP/1.1",
             "status": 201, "route": "api"},
        )
        # Body bytes, as on HTTP/2: the heads are not counted.
        self.assertEqual(event["bytes_in"], 3)
        self.assertEqual(event["bytes_out"], 2)
        self.assertAlmostEqual(event["duration_ms"], 250.0)

    def test_one_event_per_exchange(self) -> None:
        """Pipelined exchanges each log once."""
        proto, _, _ = self.connect()
        proto.dataReceived(GET * 3)
        self.assertEqual(len(self.access_events()), 3)

    def test_access_log_off(self) -> None:
        """access_log=False emits no access events."""
        proto, _, _ = self.connect(access_log=False)
        proto.dataReceived(GET)
        self.assertEqual(self.access_events(), [])


class StreamingHandler:
    """Writes ``total`` bytes as fast as the connection lets it, honouring pauses."""

    def __init__(self, writer: ResponseWriter, total: int) -> None:
        self.writer = writer
        self.left = total
        self.paused = False
        self.pauses = 0
        writer.write_head(200, [(b"content-length", b"%d" % total)])
        writer.register_producer(self)
        self._produce()

    def _produce(self) -> None:
        while not self.paused and self.left:
            size = min(65536, self.left)
            self.left -= size
            self.writer.write_body(b"x" * size)
        if not self.left:
            self.writer.unregister_producer()
            self.writer.end()

    def pause_producing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_producing(self) -> None:
        self.paused = False
        self._produce()

    def body_received(self, data: bytes) -> None:
        pass

    def body_ended(self, trailers: Headers) -> None:
        pass

    def connection_lost(self, reason: str) -> None:
        pass


class RealTarget(EchoTarget):
    """EchoTarget, plus ``/stream`` answered by a StreamingHandler (16 MiB)."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: list[StreamingHandler] = []

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> Any:
        if head.path == b"/stream":
            handler = StreamingHandler(writer, 16 * 1024 * 1024)
            self.streams.append(handler)
            return handler
        return super().start_exchange(head, writer)


class RealSocketTests(TestCase):
    """The protocol on a real TCP port on 127.0.0.1, against stdlib clients in a thread."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.target = RealTarget()
        factory = Factory.forProtocol(
            lambda: Http1ServerProtocol(
                self.target, Limits(), scheme=b"http", reactor=reactor, access_log=False
            )
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        self.port = address.port

    def _raw(self, data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks: list[bytes] = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)

    @inlineCallbacks
    def test_keep_alive_and_chunked_upload(self) -> Any:
        """http.client reuses one connection for GET and a chunked POST."""

        def client() -> list[tuple[int, bytes]]:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                out = []
                conn.request("GET", "/a")
                response = conn.getresponse()
                out.append((response.status, response.read()))
                conn.request("POST", "/b", body=iter([b"hello ", b"world"]),
                             encode_chunked=True)
                response = conn.getresponse()
                out.append((response.status, response.read()))
                return out
            finally:
                conn.close()

        results = yield deferToThread(client)
        self.assertEqual(results, [(200, b"GET /a 0\n"), (200, b"POST /b 11\n")])
        peers = {handler.head.peer for handler in self.target.handlers}
        self.assertEqual(peers, {"127.0.0.1"})

    @inlineCallbacks
    def test_pipelined_then_close(self) -> Any:
        """Three pipelined requests, the last with Connection: close, are answered in
        order and the server closes."""
        data = (
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
            b"GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        response = yield deferToThread(self._raw, data)
        bodies = [body for _, body in split_responses(response)]
        self.assertEqual(bodies, [b"GET /1 0\n", b"POST /2 2\n", b"GET /3 0\n"])

    @inlineCallbacks
    def test_smuggling_attempt_closed(self) -> Any:
        """A CL+TE request gets a 400 and the connection closes; the request smuggled
        behind it never reaches the target."""
        data = (
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        response = yield deferToThread(self._raw, data)
        self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertEqual(response.count(b"HTTP/1.1"), 1)
        self.assertEqual(self.target.handlers, [])

    @inlineCallbacks
    def test_slow_reader_back_pressure(self) -> Any:
        """A response far larger than the transport's buffer pauses the response
        producer (Twisted pauses at its 64 KiB buffer before the kernel takes it), and
        every byte still arrives."""

        def client() -> int:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
                received = len(head.partition(b"\r\n\r\n")[2])
                while received < 16 * 1024 * 1024:
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    received += len(chunk)
                return received

        received = yield deferToThread(client)
        self.assertEqual(received, 16 * 1024 * 1024)
        [stream] = self.target.streams
        self.assertGreater(stream.pauses, 0)


class RealTlsTests(TestCase):
    """The protocol behind Twisted's TLS transport: closing works with the protocol
    registered as producer (TLS shuts down only once it is unregistered)."""

    timeout = 30

    def setUp(self) -> None:
        from twisted.internet import reactor

        from eventgw.tls import ensure_dev_certificate, server_context_factory

        cert = ensure_dev_certificate(self.mktemp())
        self.target = RealTarget()
        factory = Factory.forProtocol(
            lambda: Http1ServerProtocol(
                self.target, Limits(), scheme=b"https", reactor=reactor, access_log=False
            )
        )
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, factory, server_context_factory(cert.cert_path, cert.key_path),
            interface="127.0.0.1",
        )
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def _exchange(self, request: bytes) -> bytes:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with context.wrap_socket(raw) as sock:
                sock.sendall(request)
                chunks: list[bytes] = []
                while True:
                    try:
                        chunk = sock.recv(1 << 20)
                    except ssl.SSLZeroReturnError:
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
                return b"".join(chunks)

    @inlineCallbacks
    def test_connection_close_over_tls(self) -> Any:
        """Connection: close ends the TLS connection after the response."""
        response = yield deferToThread(
            self._exchange, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(split_responses(response)[0][1], b"GET /x 0\n")

    @inlineCallbacks
    def test_large_response_then_close(self) -> Any:
        """A large response with Connection: close arrives whole and the connection
        then closes, although the producer was paused along the way."""
        response = yield deferToThread(
            self._exchange, b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        self.assertEqual(len(response.partition(b"\r\n\r\n")[2]), 16 * 1024 * 1024)
        self.assertGreater(self.target.streams[0].pauses, 0)
