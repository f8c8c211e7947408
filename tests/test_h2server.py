"""Tests for eventgw.downstream.h2server: a real h2 client drives H2ServerProtocol in memory."""

from __future__ import annotations

import random
import socket
import ssl as stdlib_ssl
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    InformationalResponseReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes, Settings
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventgw.config import Limits
from eventgw.downstream.h2policy import (
    CONTROL_FRAME_BURST,
    MAX_PAUSED_OUTBOUND_BYTES,
    RESET_BURST,
)
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.downstream.h2stream import DISCARD_BYTES, DISCARD_SECONDS
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.http2 import SERVER_CONNECTION_WINDOW, SERVER_STREAM_WINDOW, STREAM_BUFFER_HIGH, WRITES
from tests.support import EchoTarget

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def parse_frames(data: bytes) -> list[Frame]:
    """Split raw HTTP/2 bytes (after any preface) into hyperframe frames."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def request_headers(
    method: bytes = b"GET", path: bytes = b"/api/x", extra: Headers | None = None
) -> Headers:
    return [
        (b":method", method),
        (b":path", path),
        (b":scheme", b"https"),
        (b":authority", b"gw.test"),
        *(extra or []),
    ]


class PausingTransport(StringTransport):
    """A StringTransport whose producer can be paused and resumed by the test."""

    def pause(self) -> None:
        assert self.producer is not None
        self.producer.pauseProducing()

    def resume(self) -> None:
        assert self.producer is not None
        self.producer.resumeProducing()


class Peer:
    """A real h2 client connection wired to an H2ServerProtocol over a StringTransport."""

    def __init__(
        self,
        target: object,
        limits: Limits | None = None,
        *,
        transport: StringTransport | None = None,
        client_settings: dict[int, int] | None = None,
        handshake: bool = True,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.limits = limits or Limits()
        self.server = H2ServerProtocol(
            target,  # type: ignore[arg-type]
            self.limits,
            scheme=b"https",
            reactor=self.clock,
        )
        self.transport = transport or PausingTransport(
            peerAddress=IPv4Address("TCP", "10.1.2.3", 40000)
        )
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        if client_settings:
            self.client.local_settings = Settings(
                client=True, initial_values=client_settings  # type: ignore[arg-type]
            )
        self.client.initiate_connection()
        self.raw = b""  # everything the server wrote, for frame-level assertions
        self.events: list[Event] = []
        self.server.makeConnection(self.transport)
        if handshake:
            self.pump()

    # --- moving bytes ---------------------------------------------------------------

    def send(self) -> None:
        """Client -> server."""
        data = self.client.data_to_send()
        if data:
            self.server.dataReceived(data)

    def send_raw(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def take(self) -> bytes:
        data: bytes = self.transport.value()
        self.transport.clear()
        self.raw += data
        return data

    def receive(self) -> list[Event]:
        """Server -> client."""
        data = self.take()
        events = self.client.receive_data(data) if data else []
        self.events += events
        return events

    def pump(self) -> None:
        for _ in range(100):
            self.send()
            if not self.receive() and not self.client.data_to_send():
                return

    def server_frames(self) -> list[Frame]:
        """Every frame the server wrote so far, read by the client or not."""
        return parse_frames(self.raw + self.transport.value())

    # --- requests -------------------------------------------------------------------

    def request(
        self,
        method: bytes = b"GET",
        path: bytes = b"/api/x",
        body: bytes = b"",
        extra: Headers | None = None,
        *,
        end: bool = True,
    ) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(
            stream_id, request_headers(method, path, extra), end_stream=not body and end
        )
        for offset in range(0, len(body), 16384):
            last = offset + 16384 >= len(body)
            self.client.send_data(
                stream_id, body[offset : offset + 16384], end_stream=end and last
            )
        self.send()
        return stream_id

    def response(self, stream_id: int) -> tuple[Headers, bytes, Headers | None, bool]:
        """(headers, body, trailers, ended) seen by the client on a stream."""
        headers: Headers = []
        body = b""
        trailers: Headers | None = None
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, ResponseReceived):
                headers = list(event.headers)
            elif isinstance(event, DataReceived):
                body += event.data
            elif isinstance(event, TrailersReceived):
                trailers = list(event.headers)
            elif isinstance(event, StreamEnded):
                ended = True
        return headers, body, trailers, ended

    def resets(self) -> dict[int, int]:
        return {
            e.stream_id: e.error_code
            for e in self.events
            if isinstance(e, StreamReset) and e.error_code is not None
        }

    def goaway(self) -> GoAwayFrame | None:
        goaways = [f for f in self.server_frames() if isinstance(f, GoAwayFrame)]
        return goaways[-1] if goaways else None


def status_of(headers: Headers) -> bytes | None:
    return dict(headers).get(b":status")


# --- test targets -----------------------------------------------------------------------


@dataclass
class Recorded:
    """A handler that remembers everything and answers only when told to."""

    head: RequestHead
    writer: ResponseWriter
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    lost: str | None = None

    def body_received(self, data: bytes) -> None:
        self.body += data

    def body_ended(self, trailers: Headers) -> None:
        self.trailers = list(trailers)

    def connection_lost(self, reason: str) -> None:
        self.lost = reason


class RecordingTarget:
    """Hands out Recorded handlers; pauses request bodies when asked to."""

    def __init__(self, *, pause_body: bool = False) -> None:
        self.handlers: list[Recorded] = []
        self.pause_body = pause_body

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        handler = Recorded(head, writer)
        self.handlers.append(handler)
        if self.pause_body:
            writer.pause_request_body()
        return handler


class TrailersOnlyTarget:
    """Answers every call like a gRPC server refusing the method: trailers only."""

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        writer.write_head(
            200,
            [
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"12"),
                (b"grpc-message", b"nope"),
            ],
            end=True,
        )
        return StaticReply()


class TrailersTarget:
    """Answers with a body and trailers once the request has ended."""

    def __init__(self) -> None:
        self.request_trailers: list[Headers] = []

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        target = self

        class Handler:
            def body_received(self, data: bytes) -> None:
                pass

            def body_ended(self, trailers: Headers) -> None:
                target.request_trailers.append(list(trailers))
                writer.write_head(
                    200,
                    [
                        (b"content-type", b"application/grpc"),
                        (b"connection", b"close"),
                        (b"keep-alive", b"1"),
                        (b"transfer-encoding", b"chunked"),
                        (b"te", b"gzip"),
                        (b"upgrade", b"h2c"),
                        (b"proxy-connection", b"x"),
                        (b"x-kept", b"yes"),
                    ],
                )
                writer.write_body(b"\x00\x00\x00\x00\x02hi")
                writer.end([(b"grpc-status", b"0"), (b"grpc-message", b"")])

            def connection_lost(self, reason: str) -> None:
                pass

        return Handler()


class Streamer:
    """A producer that writes ``size`` bytes in 16 KiB pieces while not paused."""

    def __init__(self, writer: ResponseWriter, size: int) -> None:
        self.writer = writer
        self.remaining = size
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.lost: str | None = None
        self.done = False

    def start(self) -> None:
        self.writer.write_head(200, [(b"content-length", b"%d" % self.remaining)])
        self.writer.register_producer(self)
        self._produce()

    def _produce(self) -> None:
        while not self.paused and self.remaining and self.lost is None:
            chunk = min(16384, self.remaining)
            self.remaining -= chunk
            self.writer.write_body(b"x" * chunk)
        if not self.remaining and not self.done and self.lost is None:
            self.done = True
            self.writer.unregister_producer()
            self.writer.end()

    def pause_producing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_producing(self) -> None:
        self.paused = False
        self.resumes += 1
        self._produce()

    def body_received(self, data: bytes) -> None:
        pass

    def body_ended(self, trailers: Headers) -> None:
        self.start()

    def connection_lost(self, reason: str) -> None:
        self.lost = reason


class StreamingTarget:
    """Answers each request with ``size`` bytes, produced with back-pressure."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.streamers: list[Streamer] = []

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        streamer = Streamer(writer, self.size)
        self.streamers.append(streamer)
        return streamer


class FailingTarget:
    """Raises from start_exchange."""

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        raise RuntimeError("boom")


def protocol_errors(observer: EventLoggingObserver) -> list[str]:
    return [
        str(e["reason"])
        for e in observer
        if e.get("log_namespace") == "eventgw.protocol" and "reason" in e
    ]


def access_events(observer: EventLoggingObserver) -> list[dict[str, object]]:
    return [dict(e) for e in observer if e.get("log_namespace") == "eventgw.access"]


# --- tests ------------------------------------------------------------------------------


class ExchangeTests(TestCase):
    """Requests become exchanges; responses become frames."""

    def test_get_echo(self) -> None:
        """A GET reaches the target as a RequestHead and the echo comes back."""
        target = EchoTarget()
        peer = Peer(target)
        stream_id = peer.request(extra=[(b"x-trace", b"1"), (b"x-trace", b"2")])
        peer.receive()
        headers, body, trailers, ended = peer.response(stream_id)
        self.assertEqual(status_of(headers), b"200")
        self.assertEqual(body, b"GET /api/x 0\n")
        self.assertTrue(ended)
        self.assertIsNone(trailers)
        head = target.handlers[0].head
        self.assertEqual(head.protocol, "HTTP/2")
        self.assertEqual(head.authority, b"gw.test")
        self.assertEqual(head.scheme, b"https")
        self.assertEqual(head.peer, "10.1.2.3")
        self.assertFalse(head.body_expected)
        self.assertEqual(head.content_length, 0)
        request_id = head.log_fields["request_id"].encode()
        self.assertEqual(head.headers, [(b"x-trace", b"1"), (b"x-trace", b"2"),
                                        (b"x-request-id", request_id)])
        self.assertEqual(peer.server.open_streams, 0)

    def test_post_echo(self) -> None:
        """A POST body is delivered and acknowledged; content-length is parsed."""
        target = EchoTarget()
        peer = Peer(target)
        body = b"a" * 40000
        stream_id = peer.request(
            b"POST", b"/api/up?q=1", body, [(b"content-length", b"40000")]
        )
        peer.receive()
        _, answer, _, ended = peer.response(stream_id)
        self.assertEqual(answer, b"POST /api/up?q=1 40000\n")
        self.assertTrue(ended)
        head = target.handlers[0].head
        self.assertTrue(head.body_expected)
        self.assertEqual(head.content_length, 40000)
        self.assertEqual(head.path, b"/api/up")

    def test_authority_falls_back_to_host(self) -> None:
        """Without :authority the Host header names the authority."""
        target = EchoTarget()
        peer = Peer(target)
        stream_id = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            stream_id,
            [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
             (b"host", b"h.test")],
            end_stream=True,
        )
        peer.send()
        self.assertEqual(target.handlers[0].head.authority, b"h.test")

    def test_concurrent_streams(self) -> None:
        """Several interleaved streams on one connection each get their own answer."""
        target = RecordingTarget()
        peer = Peer(target)
        ids = [peer.request(b"POST", b"/api/%d" % n, b"p%d" % n, end=False) for n in range(5)]
        for stream_id in ids:
            peer.client.send_data(stream_id, b"!", end_stream=True)
        peer.send()
        self.assertEqual(len(target.handlers), 5)
        for n, handler in enumerate(reversed(target.handlers)):
            handler.writer.write_head(200, [])
            handler.writer.write_body(b"r%d" % (4 - n))
            handler.writer.end()
        peer.receive()
        for n, stream_id in enumerate(ids):
            self.assertEqual(bytes(target.handlers[n].body), b"p%d!" % n)
            _, body, _, ended = peer.response(stream_id)
            self.assertEqual(body, b"r%d" % n)
            self.assertTrue(ended)
        self.assertEqual(peer.server.open_streams, 0)

    def test_trailers_only_response(self) -> None:
        """write_head(end=True) is exactly one HEADERS frame with END_STREAM."""
        peer = Peer(TrailersOnlyTarget())
        peer.take()
        stream_id = peer.request(
            b"POST", b"/pkg.Svc/M", b"\x00\x00\x00\x00\x00",
            [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
        )
        frames = [f for f in parse_frames(peer.take()) if f.stream_id == stream_id]
        self.assertEqual(len(frames), 1, frames)
        self.assertIsInstance(frames[0], HeadersFrame)
        self.assertEqual(frames[0].flags, {"END_STREAM", "END_HEADERS"})
        self.assertFalse(
            [f for f in peer.server_frames() if isinstance(f, RstStreamFrame)],
            "the client's END_STREAM arrived in the same read: no reset is needed",
        )
        peer.client.receive_data(peer.raw)
        self.assertEqual(peer.server.open_streams, 0)

    def test_response_trailers(self) -> None:
        """end(trailers) sends a final HEADERS frame; request trailers reach the target."""
        target = TrailersTarget()
        peer = Peer(target)
        stream_id = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            stream_id, request_headers(b"POST", b"/pkg.Svc/M",
                                       [(b"content-type", b"application/grpc")])
        )
        peer.client.send_data(stream_id, b"\x00\x00\x00\x00\x00")
        peer.client.send_headers(stream_id, [(b"x-req-trailer", b"t")], end_stream=True)
        peer.send()
        self.assertEqual(target.request_trailers, [[(b"x-req-trailer", b"t")]])
        peer.receive()
        headers, body, trailers, ended = peer.response(stream_id)
        self.assertEqual(body, b"\x00\x00\x00\x00\x02hi")
        self.assertEqual(trailers, [(b"grpc-status", b"0"), (b"grpc-message", b"")])
        self.assertTrue(ended)
        names = [name for name, _ in headers]
        self.assertEqual(names, [b":status", b"content-type", b"x-kept", b"date", b"server",
                                 b"x-request-id"])
        last = [f for f in peer.server_frames() if f.stream_id == stream_id][-1]
        self.assertIsInstance(last, HeadersFrame)
        self.assertIn("END_STREAM", last.flags)

    def test_head_has_no_data(self) -> None:
        """A HEAD response carries its headers and END_STREAM but no DATA payload."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"HEAD", b"/api/x")
        writer = target.handlers[0].writer
        writer.write_head(200, [(b"content-length", b"5")])
        writer.write_body(b"hello")
        writer.end()
        peer.receive()
        headers, body, _, ended = peer.response(stream_id)
        self.assertEqual(dict(headers)[b"content-length"], b"5")
        self.assertEqual(body, b"")
        self.assertTrue(ended)
        data = [f for f in peer.server_frames() if isinstance(f, DataFrame) and f.data]
        self.assertEqual(data, [])

    def test_writer_calls_after_end_are_ignored(self) -> None:
        """Once a response ended, more writer calls change nothing and raise nothing."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request()
        writer = target.handlers[0].writer
        writer.write_head(204, [])
        writer.end()
        before = peer.take()
        writer.write_head(200, [])
        writer.write_body(b"late")
        writer.end([(b"x", b"y")])
        writer.abort()
        self.assertEqual(peer.take(), b"")
        self.assertTrue(writer.head_sent)
        peer.client.receive_data(before)
        self.assertEqual(peer.server.open_streams, 0)
        del stream_id

    def test_early_response_resets_request_with_no_error(self) -> None:
        """A response completed while the request body still flows ends with RST NO_ERROR."""
        peer = Peer(EchoTarget())
        stream_id = peer.request(b"POST", b"/missing", b"part", end=False)
        peer.clock.advance(DISCARD_SECONDS)  # the body is read away for so long first
        peer.receive()
        headers, _, _, ended = peer.response(stream_id)
        self.assertEqual(status_of(headers), b"404")
        self.assertTrue(ended)
        self.assertEqual(peer.resets().get(stream_id), ErrorCodes.NO_ERROR)
        self.assertEqual(peer.server.open_streams, 0)

    def test_expect_continue(self) -> None:
        """A request with expect: 100-continue gets a 100 before the final response."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(
            b"POST", b"/api/x", extra=[(b"expect", b"100-continue")], end=False
        )
        peer.receive()
        informational = [e for e in peer.events if isinstance(e, InformationalResponseReceived)]
        self.assertEqual([status_of(list(e.headers)) for e in informational], [b"100"])
        del stream_id

    def test_no_continue_when_target_answers_at_once(self) -> None:
        """A request refused in start_exchange gets its answer, not a 100 first."""
        peer = Peer(EchoTarget())
        stream_id = peer.request(
            b"POST", b"/missing", extra=[(b"expect", b"100-continue")], end=False
        )
        peer.receive()
        informational = [e for e in peer.events if isinstance(e, InformationalResponseReceived)]
        self.assertEqual(informational, [])
        self.assertEqual(status_of(peer.response(stream_id)[0]), b"404")

    def test_target_exception_is_500(self) -> None:
        """A target that raises gets the client a 500, and the connection lives on."""
        peer = Peer(FailingTarget())
        stream_id = peer.request()
        peer.receive()
        headers, body, _, ended = peer.response(stream_id)
        self.assertEqual(status_of(headers), b"500")
        self.assertTrue(ended)
        self.assertIn(b'"code"', body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connect_is_not_implemented(self) -> None:
        """CONNECT is answered 501 Not Implemented (RFC 9110 section 15.6.2), as over
        HTTP/1.1, without reaching the target; the connection lives on."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.client.get_next_available_stream_id()
        peer.client.send_headers(
            stream_id, [(b":method", b"CONNECT"), (b":authority", b"gw.test:443")],
            end_stream=True,
        )
        peer.send()
        peer.receive()
        headers, body, _, ended = peer.response(stream_id)
        self.assertEqual(status_of(headers), b"501")
        self.assertTrue(ended)
        self.assertIn(b"CONNECT is not supported", body)
        self.assertEqual(target.handlers, [])
        again = peer.request()
        self.assertEqual(len(target.handlers), 1)
        del again

    def test_pseudo_headers_from_target_are_dropped(self) -> None:
        """A target cannot inject pseudo-headers or connection fields into a response."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request()
        target.handlers[0].writer.write_head(
            200, [(b":path", b"/x"), (b"connection", b"close"), (b"x-ok", b"1")], end=True
        )
        peer.receive()
        headers, _, _, ended = peer.response(stream_id)
        self.assertEqual([h for h in headers if h[0] not in (b"date", b"x-request-id")],
                         [(b":status", b"200"), (b"x-ok", b"1"), (b"server", b"eventgw")])
        self.assertTrue(ended)

    def test_answer_to_stream_reset_in_same_read(self) -> None:
        """A target answering a stream the client reset in the same read is told it is lost."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        handlers: list[Recorded] = []

        class Answering:
            def start_exchange(
                self, head: RequestHead, writer: ResponseWriter
            ) -> RequestHandler:
                handler = Recorded(head, writer)
                handlers.append(handler)
                writer.write_head(200, [], end=True)
                return handler

        peer = Peer(Answering())
        stream_id = peer.client.get_next_available_stream_id()
        peer.client.send_headers(stream_id, request_headers(), end_stream=True)
        peer.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        peer.send()
        self.assertEqual([h.lost for h in handlers], ["client reset the stream"])
        self.assertEqual(protocol_errors(observer), [])
        self.assertEqual(peer.server.open_streams, 0)
        self.assertIsNone(peer.goaway())

    def test_one_access_event_per_stream(self) -> None:
        """Every stream produces exactly one access-log event with its status."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        target = RecordingTarget()
        peer = Peer(target)
        peer.request()
        peer.request()
        target.handlers[0].writer.write_head(200, [], end=True)
        peer.client.reset_stream(3, ErrorCodes.CANCEL)
        peer.send()
        statuses = [e["status"] for e in access_events(observer)]
        self.assertEqual(sorted(map(str, statuses)), ["200", "reset"])


class WriteCoalescingTests(TestCase):
    """Writer calls made while another connection's read is processed (the relay
    answering from an upstream read) are flushed once, at the end of that read."""

    def test_one_write_per_read(self) -> None:
        """A whole response written inside WRITES.hold() goes out in one write, at
        the release; outside a hold every writer call writes at once."""
        writes: list[bytes] = []

        class CountingTransport(PausingTransport):
            def write(self, data: bytes) -> None:
                writes.append(data)
                super().write(data)

        target = RecordingTarget()
        peer = Peer(target, transport=CountingTransport(
            peerAddress=IPv4Address("TCP", "10.1.2.3", 40000)))
        first = peer.request(b"POST", b"/pkg.S/M", b"x")
        second = peer.request(b"POST", b"/pkg.S/M", b"y")
        writes.clear()
        one, two = (handler.writer for handler in target.handlers)
        WRITES.hold()
        try:
            for writer in (one, two):
                writer.write_head(200, [(b"content-type", b"application/grpc")])
                writer.write_body(b"\x00\x00\x00\x00\x01z")
                writer.end([(b"grpc-status", b"0")])
            self.assertEqual(writes, [])
        finally:
            WRITES.release()
        self.assertEqual(len(writes), 1)
        peer.receive()
        for stream_id in (first, second):
            _headers, body, trailers, ended = peer.response(stream_id)
            self.assertEqual((body, trailers, ended),
                             (b"\x00\x00\x00\x00\x01z", [(b"grpc-status", b"0")], True))
        third = peer.request(b"POST", b"/pkg.S/M", b"z")
        writes.clear()
        target.handlers[-1].writer.write_head(200, [(b"content-type", b"application/grpc")])
        target.handlers[-1].writer.end([(b"grpc-status", b"0")])
        self.assertEqual(len(writes), 2)
        peer.receive()
        self.assertTrue(peer.response(third)[3])


class SmallAnswerTarget:
    """Answers at once with a JSON error (HEADERS, body, end), as send_error does."""

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        send_error(writer, 404, "no route")
        return StaticReply()


def stream_frames(peer: Peer, stream_id: int) -> list[tuple[str, frozenset[str], int]]:
    """(type, flags, DATA length) of every frame the server wrote on one stream."""
    return [
        (type(f).__name__, frozenset(f.flags), len(f.data) if isinstance(f, DataFrame) else 0)
        for f in peer.server_frames()
        if f.stream_id == stream_id
    ]


class TwoFrameResponseTests(TestCase):
    """A small answer whose end follows its body in the same turn goes out as HEADERS
    plus one DATA frame carrying END_STREAM (a raw h2 client counts the frames)."""

    def test_answer_while_reading(self) -> None:
        """Answered while the request's read is processed: two frames."""
        peer = Peer(SmallAnswerTarget())
        stream_id = peer.request()
        peer.receive()
        frames = stream_frames(peer, stream_id)
        self.assertEqual([(kind, "END_STREAM" in flags) for kind, flags, _ in frames],
                         [("HeadersFrame", False), ("DataFrame", True)])
        self.assertGreater(frames[1][2], 0)
        headers, body, _trailers, ended = peer.response(stream_id)
        self.assertEqual((status_of(headers), ended), (b"404", True))
        self.assertIn(b"no route", body)

    def test_answer_in_another_connections_read(self) -> None:
        """Answered while an upstream read is processed (WRITES held): two frames;
        with trailers (gRPC) three: HEADERS, DATA, trailers."""
        target = RecordingTarget()
        peer = Peer(target)
        plain = peer.request(b"POST", b"/api/x", b"x")
        grpc = peer.request(b"POST", b"/pkg.S/M", b"y")
        one, two = (handler.writer for handler in target.handlers)
        WRITES.hold()
        try:
            one.write_head(200, [(b"content-type", b"text/plain")])
            one.write_body(b"hello")
            two.write_head(200, [(b"content-type", b"application/grpc")])
            two.write_body(b"\x00\x00\x00\x00\x01z")
            self.assertEqual(getattr(one, "tail", None), b"hello")  # kept for its end
            self.assertIsNone(getattr(two, "tail", None))  # gRPC: sent at once
            one.end()
            two.end([(b"grpc-status", b"0")])
        finally:
            WRITES.release()
        peer.receive()
        self.assertEqual(stream_frames(peer, plain), [
            ("HeadersFrame", frozenset({"END_HEADERS"}), 0),
            ("DataFrame", frozenset({"END_STREAM"}), 5),
        ])
        self.assertEqual([kind for kind, _, _ in stream_frames(peer, grpc)],
                         ["HeadersFrame", "DataFrame", "HeadersFrame"])
        self.assertEqual(peer.response(plain)[1:], (b"hello", None, True))
        self.assertEqual(peer.response(grpc)[1:],
                         (b"\x00\x00\x00\x00\x01z", [(b"grpc-status", b"0")], True))

    def test_body_in_pieces_keeps_its_order(self) -> None:
        """Several body writes in one turn: the earlier ones go out as they were, the
        last one carries END_STREAM."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", b"x")
        writer = target.handlers[0].writer
        WRITES.hold()
        try:
            writer.write_head(200, [])
            for piece in (b"ab", b"cd", b"ef"):
                writer.write_body(piece)
            writer.end()
        finally:
            WRITES.release()
        peer.receive()
        self.assertEqual([(kind, length, "END_STREAM" in flags)
                          for kind, flags, length in stream_frames(peer, stream_id)],
                         [("HeadersFrame", 0, False), ("DataFrame", 2, False),
                          ("DataFrame", 2, False), ("DataFrame", 2, True)])
        self.assertEqual(peer.response(stream_id)[1], b"abcdef")

    def test_body_without_end_is_flushed(self) -> None:
        """A body chunk kept back goes out at the flush when no end follows; outside
        any read, each writer call writes at once (the end is an empty DATA frame)."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", b"x")
        writer = target.handlers[0].writer
        WRITES.hold()
        try:
            writer.write_head(200, [])
            writer.write_body(b"first")
        finally:
            WRITES.release()
        peer.receive()
        self.assertEqual(peer.response(stream_id)[1:], (b"first", None, False))
        writer.write_body(b"second")
        writer.end()
        peer.receive()
        self.assertEqual([(kind, length, "END_STREAM" in flags)
                          for kind, flags, length in stream_frames(peer, stream_id)],
                         [("HeadersFrame", 0, False), ("DataFrame", 5, False),
                          ("DataFrame", 6, False), ("DataFrame", 0, True)])

    def test_client_reset_before_the_flush(self) -> None:
        """The client resets the stream in the read that answered it: the chunk kept
        back is dropped, nothing is sent on the stream after its reset."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", b"x", end=False)
        writer = target.handlers[0].writer
        WRITES.hold()
        try:
            writer.write_head(200, [])
            writer.write_body(b"late")
            peer.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            peer.send()
            writer.end()
        finally:
            WRITES.release()
        peer.receive()
        self.assertEqual([kind for kind, _, _ in stream_frames(peer, stream_id)],
                         ["HeadersFrame"])
        self.assertEqual(target.handlers[0].lost, "client reset the stream (CANCEL)")
        peer.request()
        self.assertIsNone(peer.goaway())

    def test_window_too_small_for_the_body(self) -> None:
        """A body the windows do not allow is not kept back: it waits in the stream's
        buffer and END_STREAM follows it once the client opens its window."""
        target = RecordingTarget()
        peer = Peer(target, client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 4})
        stream_id = peer.request(b"POST", b"/api/x", b"x")
        writer = target.handlers[0].writer
        WRITES.hold()
        try:
            writer.write_head(200, [])
            writer.write_body(b"0123456789")
            writer.end()
        finally:
            WRITES.release()
        peer.receive()
        self.assertEqual(peer.response(stream_id)[1:], (b"0123", None, False))
        peer.client.increment_flow_control_window(100, stream_id)
        peer.pump()
        self.assertEqual(peer.response(stream_id)[1:], (b"0123456789", None, True))


class FlowControlTests(TestCase):
    """Both directions honour HTTP/2 flow control with bounded buffers."""

    def test_slow_reader_pauses_and_resumes_producer(self) -> None:
        """A client that does not open its window pauses the target; WINDOW_UPDATE resumes."""
        size = 1024 * 1024
        target = StreamingTarget(size)
        peer = Peer(target)
        stream_id = peer.request()
        streamer = target.streamers[0]
        self.assertTrue(streamer.paused)
        self.assertEqual(streamer.pauses, 1)
        exchange = peer.server.streams[stream_id]
        # Sent: the client's initial 64 KiB window; buffered: at most one write past HIGH.
        self.assertLessEqual(len(exchange.out), STREAM_BUFFER_HIGH + 16384)
        self.assertGreater(streamer.remaining, size // 2)
        received = 0
        for _ in range(1000):
            events = peer.receive()
            for event in events:
                if isinstance(event, DataReceived):
                    received += len(event.data)
                    peer.client.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                    self.assertLessEqual(len(exchange.out), STREAM_BUFFER_HIGH + 16384)
            peer.send()
            if peer.response(stream_id)[3]:
                break
        self.assertEqual(received, size)
        self.assertTrue(streamer.done)
        self.assertGreaterEqual(streamer.resumes, 1)
        self.assertEqual(peer.server.open_streams, 0)

    def test_small_stream_window(self) -> None:
        """A tiny SETTINGS_INITIAL_WINDOW_SIZE is respected, frame by frame."""
        target = StreamingTarget(50000)
        peer = Peer(target, client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        stream_id = peer.request()
        data = [f for f in peer.server_frames() if isinstance(f, DataFrame)]
        self.assertEqual(sum(len(f.data) for f in data), 1000)
        peer.receive()
        peer.client.increment_flow_control_window(100000, stream_id=stream_id)
        peer.client.increment_flow_control_window(100000)
        peer.send()
        peer.receive()
        self.assertEqual(len(peer.response(stream_id)[1]), 50000)
        self.assertTrue(target.streamers[0].done)

    def test_large_write_is_split_into_frames(self) -> None:
        """One big write_body goes out in frames no larger than the client's maximum."""
        target = RecordingTarget()
        peer = Peer(target)
        peer.client.increment_flow_control_window(1 << 20)
        peer.send()
        stream_id = peer.request()
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.write_body(b"b" * 50000)
        writer.end()
        frames = [f for f in peer.server_frames() if isinstance(f, DataFrame)]
        self.assertTrue(all(len(f.data) <= 16384 for f in frames))
        self.assertEqual(sum(len(f.data) for f in frames), 50000)
        peer.receive()
        self.assertTrue(peer.response(stream_id)[3])

    def test_trailers_wait_for_buffered_body(self) -> None:
        """end(trailers) with body still buffered sends the trailers after the last byte."""
        target = RecordingTarget()
        peer = Peer(target, client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 100})
        stream_id = peer.request()
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.write_body(b"c" * 1000)
        writer.end([(b"grpc-status", b"0")])
        peer.receive()
        self.assertEqual(len(peer.response(stream_id)[1]), 100)
        self.assertIsNone(peer.response(stream_id)[2])
        peer.client.increment_flow_control_window(5000, stream_id=stream_id)
        peer.send()
        peer.receive()
        _, body, trailers, ended = peer.response(stream_id)
        self.assertEqual(len(body), 1000)
        self.assertEqual(trailers, [(b"grpc-status", b"0")])
        self.assertTrue(ended)

    def test_connection_window_is_shared(self) -> None:
        """Streams blocked on the connection window share it, frame by frame, when it opens."""
        target = RecordingTarget()
        peer = Peer(target)
        first = peer.request()
        second = peer.request()
        for handler in target.handlers:
            handler.writer.write_head(200, [])
            handler.writer.write_body(b"d" * 100000)
            handler.writer.end()
        peer.receive()  # the client's 64 KiB connection window is now used up
        self.assertEqual(len(peer.response(first)[1]) + len(peer.response(second)[1]), 65535)
        before = len(peer.response(second)[1])
        for sid in (first, second):
            peer.client.increment_flow_control_window(100000, stream_id=sid)
        peer.client.increment_flow_control_window(40000)
        peer.send()
        peer.receive()
        self.assertEqual(len(peer.response(first)[1]) + len(peer.response(second)[1]),
                         65535 + 40000)
        self.assertGreaterEqual(len(peer.response(second)[1]) - before, 16384)

    def test_transport_pause_pauses_producers(self) -> None:
        """When the transport pauses the protocol, producers pause and no DATA is written."""
        target = StreamingTarget(200000)
        transport = PausingTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 1))
        peer = Peer(target, transport=transport)
        peer.client.increment_flow_control_window(1 << 20)
        peer.send()
        transport.pause()
        stream_id = peer.request()
        streamer = target.streamers[0]
        self.assertTrue(streamer.paused)
        peer.receive()
        self.assertEqual(peer.response(stream_id)[1], b"")
        transport.resume()
        self.assertTrue(streamer.resumes)
        peer.receive()
        self.assertGreater(len(peer.response(stream_id)[1]), 0)

    def test_response_completed_on_resume_finishes_stream(self) -> None:
        """A response whose end went out when the transport resumed still closes its stream."""
        target = RecordingTarget()
        transport = PausingTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 1))
        peer = Peer(target, transport=transport)
        stream_id = peer.request(b"POST", end=False)
        transport.pause()
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.write_body(b"late")
        writer.end()
        self.assertEqual(peer.server.open_streams, 1)
        transport.resume()
        self.assertEqual(peer.server.open_streams, 0)
        peer.receive()
        self.assertEqual(peer.response(stream_id)[1:], (b"late", None, True))
        self.assertEqual(peer.resets().get(stream_id), ErrorCodes.NO_ERROR)

    def test_paused_request_body_is_not_acknowledged(self) -> None:
        """A paused stream's DATA is queued without WINDOW_UPDATE until resumed."""
        target = RecordingTarget(pause_body=True)
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", end=False)
        peer.take()
        body = b"z" * 60000
        peer.client.send_data(stream_id, body[:16000])
        peer.client.send_data(stream_id, body[16000:32000])
        peer.client.send_data(stream_id, body[32000:48000])
        peer.client.send_data(stream_id, body[48000:], end_stream=True)
        peer.send()
        handler = target.handlers[0]
        self.assertEqual(bytes(handler.body), b"")
        self.assertIsNone(handler.trailers)
        updates = [f for f in parse_frames(peer.take()) if isinstance(f, WindowUpdateFrame)]
        self.assertEqual(updates, [])
        handler.writer.resume_request_body()
        self.assertEqual(bytes(handler.body), body)
        self.assertEqual(handler.trailers, [])

    def test_request_trailers_wait_for_resume(self) -> None:
        """Request trailers on a paused stream are delivered with body_ended on resume."""
        target = RecordingTarget(pause_body=True)
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", b"abc", end=False)
        peer.client.send_headers(stream_id, [(b"x-sum", b"1")], end_stream=True)
        peer.send()
        handler = target.handlers[0]
        self.assertIsNone(handler.trailers)
        handler.writer.resume_request_body()
        self.assertEqual(bytes(handler.body), b"abc")
        self.assertEqual(handler.trailers, [(b"x-sum", b"1")])

    def test_resumed_request_body_is_acknowledged(self) -> None:
        """Data delivered after resume is credited back to the client's windows."""
        target = RecordingTarget(pause_body=True)
        peer = Peer(target)
        stream_id = peer.request(b"POST", b"/api/x", end=False)
        peer.take()
        # Enough for h2 to send a WINDOW_UPDATE (it batches them until half a window).
        for _ in range(40):
            peer.client.send_data(stream_id, b"q" * 16384)
            peer.send()
            peer.client.receive_data(peer.take())
        self.assertEqual(len(target.handlers[0].body), 0)
        target.handlers[0].writer.resume_request_body()
        updates = [f for f in parse_frames(peer.take()) if isinstance(f, WindowUpdateFrame)]
        self.assertTrue(updates)
        self.assertEqual(len(target.handlers[0].body), 40 * 16384)

    def test_settings_advertise_limits(self) -> None:
        """The server's SETTINGS name the configured limits and a bounded window."""
        peer = Peer(EchoTarget(), Limits(max_concurrent_streams=7, max_header_bytes=9000),
                    handshake=False)
        frames = parse_frames(peer.take())
        settings = frames[0]
        assert isinstance(settings, SettingsFrame)
        self.assertEqual(settings.settings[SettingCodes.MAX_CONCURRENT_STREAMS], 7)
        self.assertEqual(settings.settings[SettingCodes.MAX_HEADER_LIST_SIZE], 9000)
        self.assertEqual(settings.settings[SettingCodes.INITIAL_WINDOW_SIZE], SERVER_STREAM_WINDOW)
        update = frames[1]
        assert isinstance(update, WindowUpdateFrame)
        self.assertEqual(update.stream_id, 0)
        self.assertEqual(update.window_increment, SERVER_CONNECTION_WINDOW - 65535)


class EarlyResponseTests(TestCase):
    """RFC 9113 section 8.1: a response complete before the request asks the client to
    stop sending with RST_STREAM(NO_ERROR); what the client had already sent is
    discarded (section 5.1, "closed"), not answered with more resets."""

    def early(self) -> tuple[Peer, int]:
        peer = Peer(EchoTarget())
        stream_id = peer.request(b"POST", b"/missing", b"part", end=False)
        peer.clock.advance(DISCARD_SECONDS)  # the client kept quiet: reset now
        return peer, stream_id

    def server_frames_after(self, peer: Peer, count: int) -> list[Frame]:
        return peer.server_frames()[count:]

    def test_end_stream_then_rst_no_error(self) -> None:
        """The response's END_STREAM goes out first, then RST_STREAM(NO_ERROR)."""
        peer, stream_id = self.early()
        frames = [f for f in peer.server_frames() if f.stream_id == stream_id]
        self.assertIsInstance(frames[0], HeadersFrame)
        self.assertIn("END_STREAM", frames[-2].flags)
        self.assertIsInstance(frames[-1], RstStreamFrame)
        self.assertEqual(frames[-1].error_code, ErrorCodes.NO_ERROR)

    def test_in_flight_frames_are_discarded(self) -> None:
        """DATA and trailers the client sent before it saw our RST_STREAM(NO_ERROR) get
        no RST_STREAM back, and the connection goes on serving."""
        peer, stream_id = self.early()
        before = len(peer.server_frames())
        for _ in range(3):
            frame = DataFrame(stream_id)
            frame.data = b"x" * 1000
            peer.send_raw(frame.serialize())
        trailers = HeadersFrame(stream_id)
        trailers.data = peer.client.encoder.encode([(b"x-t", b"1")])  # HPACK in step
        trailers.flags.add("END_HEADERS")
        trailers.flags.add("END_STREAM")
        peer.send_raw(trailers.serialize())
        later = self.server_frames_after(peer, before)
        self.assertEqual([f for f in later if isinstance(f, RstStreamFrame)], [])
        self.assertIsNone(peer.goaway())
        peer.receive()
        after = peer.request(b"POST", b"/x", b"abc")
        peer.receive()
        self.assertEqual(status_of(peer.response(after)[0]), b"200")

    def test_in_flight_data_still_credits_the_connection(self) -> None:
        """DATA discarded on early-closed streams still counts toward the connection
        window: the server sends the WINDOW_UPDATE(0) that keeps the client going."""
        peer = Peer(EchoTarget())
        before = len(peer.server_frames())
        sent = 0
        for _ in range(3):  # three streams, ~1 MiB in flight each: past half the window
            stream_id = peer.request(b"POST", b"/missing", b"p", end=False)
            peer.clock.advance(DISCARD_SECONDS)
            for _ in range(SERVER_STREAM_WINDOW // 16384 - 1):
                frame = DataFrame(stream_id)
                frame.data = b"x" * 16384
                peer.send_raw(frame.serialize())
                sent += 16384
        later = self.server_frames_after(peer, before)
        credit = sum(
            f.window_increment
            for f in later
            if isinstance(f, WindowUpdateFrame) and f.stream_id == 0
        )
        self.assertGreater(credit, 0)
        self.assertLessEqual(credit, sent + 3)
        self.assertEqual(
            [f.error_code for f in later if isinstance(f, RstStreamFrame)],
            [ErrorCodes.NO_ERROR] * 3,
        )


class DiscardTests(TestCase):
    """An error answered before the request body is in: the rest of the body is read
    and dropped (bounded in bytes and time) before any RST_STREAM, so clients that
    stop at an RST_STREAM while sending show the answer."""

    def rst(self, peer: Peer, stream_id: int) -> list[int]:
        return [f.error_code for f in peer.server_frames()
                if isinstance(f, RstStreamFrame) and f.stream_id == stream_id]

    def test_body_after_early_error_is_read_away_without_reset(self) -> None:
        """After an early 404 the client's further DATA is credited and dropped, and its
        END_STREAM ends the stream cleanly: no RST_STREAM at all."""
        peer = Peer(EchoTarget())
        stream_id = peer.request(b"POST", b"/missing", b"part", end=False)
        frames = min(SERVER_STREAM_WINDOW // 2, DISCARD_BYTES - 65536) // 16384 + 2
        for _ in range(frames):  # past half the stream window: credit must come back
            frame = DataFrame(stream_id)
            frame.data = b"x" * 16384
            peer.send_raw(frame.serialize())
        peer.clock.advance(DISCARD_SECONDS / 2)
        end = DataFrame(stream_id)
        end.data = b"x"
        end.flags.add("END_STREAM")
        peer.send_raw(end.serialize())
        peer.receive()
        headers, _, _, ended = peer.response(stream_id)
        self.assertEqual(status_of(headers), b"404")
        self.assertTrue(ended)
        self.assertEqual(self.rst(peer, stream_id), [])
        credit = sum(
            f.window_increment for f in peer.server_frames()
            if isinstance(f, WindowUpdateFrame) and f.stream_id == stream_id
        )
        self.assertGreater(credit, 0)
        self.assertEqual(peer.server.open_streams, 0)
        peer.clock.advance(DISCARD_SECONDS)
        self.assertEqual(self.rst(peer, stream_id), [])

    def test_discarding_is_bounded_in_bytes(self) -> None:
        """More than DISCARD_BYTES of body beyond the stream window after the answer:
        RST_STREAM(NO_ERROR)."""
        peer = Peer(EchoTarget())
        stream_id = peer.request(b"POST", b"/missing", b"part", end=False)
        for _ in range((DISCARD_BYTES + SERVER_STREAM_WINDOW) // 16384 + 1):
            frame = DataFrame(stream_id)
            frame.data = b"x" * 16384
            peer.send_raw(frame.serialize())
            if self.rst(peer, stream_id):
                break
        self.assertEqual(self.rst(peer, stream_id), [ErrorCodes.NO_ERROR])
        self.assertEqual(peer.server.open_streams, 0)

    def test_discarding_is_bounded_in_time(self) -> None:
        """A client that stops sending after the answer is reset after DISCARD_SECONDS."""
        peer = Peer(EchoTarget())
        stream_id = peer.request(b"POST", b"/missing", b"part", end=False)
        self.assertEqual(self.rst(peer, stream_id), [])
        self.assertEqual(peer.server.open_streams, 1)
        peer.clock.advance(DISCARD_SECONDS)
        self.assertEqual(self.rst(peer, stream_id), [ErrorCodes.NO_ERROR])
        self.assertEqual(peer.server.open_streams, 0)


class ResetTests(TestCase):
    """Client resets reach the target; a reset flood closes the connection."""

    def test_client_reset_is_connection_lost(self) -> None:
        """RST_STREAM from the client calls connection_lost on that stream only."""
        target = RecordingTarget()
        peer = Peer(target)
        first = peer.request()
        peer.request()
        peer.client.reset_stream(first, ErrorCodes.CANCEL)
        peer.send()
        lost, other = target.handlers
        self.assertIsNotNone(lost.lost)
        self.assertIn("CANCEL", lost.lost or "")
        self.assertIsNone(other.lost)
        lost.writer.write_head(200, [], end=True)  # ignored, no exception
        self.assertEqual(peer.server.open_streams, 1)

    def test_rapid_reset_flood(self) -> None:
        """Opening and resetting streams faster than the budget gets GOAWAY ENHANCE_YOUR_CALM."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        target = RecordingTarget()
        peer = Peer(target)
        for _ in range(RESET_BURST + 10):
            stream_id = peer.client.get_next_available_stream_id()
            peer.client.send_headers(stream_id, request_headers(), end_stream=True)
            peer.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        peer.send()
        goaway = peer.goaway()
        assert goaway is not None
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(peer.transport.disconnecting)
        errors = protocol_errors(observer)
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("rapid reset", errors[0])

    def test_resets_within_budget_are_fine(self) -> None:
        """Cancelling streams at a modest rate never closes the connection."""
        peer = Peer(RecordingTarget())
        for _ in range(5):
            for _ in range(RESET_BURST // 2):
                stream_id = peer.client.get_next_available_stream_id()
                peer.client.send_headers(stream_id, request_headers(), end_stream=True)
                peer.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            peer.send()
            peer.clock.advance(10)
        self.assertIsNone(peer.goaway())
        self.assertFalse(peer.transport.disconnecting)

    def test_too_many_streams_are_refused(self) -> None:
        """Streams beyond MAX_CONCURRENT_STREAMS get REFUSED_STREAM; the rest carry on."""
        target = RecordingTarget()
        peer = Peer(target, Limits(max_concurrent_streams=2), handshake=False)
        # The client has not seen our SETTINGS yet, so it may legally open more.
        ids = [peer.request() for _ in range(3)]
        peer.receive()
        self.assertEqual(peer.resets(), {ids[2]: ErrorCodes.REFUSED_STREAM})
        self.assertEqual(len(target.handlers), 2)
        target.handlers[0].writer.write_head(200, [], end=True)
        peer.receive()
        fourth = peer.request()
        peer.receive()
        self.assertEqual(len(target.handlers), 3)
        self.assertNotIn(fourth, peer.resets())
        self.assertIsNone(peer.goaway())


class ContentLengthTests(TestCase):
    """RFC 9113 section 8.1.1: DATA that does not add up to the content-length makes the
    request malformed, a stream error PROTOCOL_ERROR; the target never sees a complete
    request of that shape, and the connection goes on serving other streams."""

    def open(self, length: bytes) -> tuple[Peer, RecordingTarget, int]:
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"POST", extra=[(b"content-length", length)], end=False)
        return peer, target, stream_id

    def assertMalformed(self, peer: Peer, target: RecordingTarget, stream_id: int) -> None:
        peer.receive()
        self.assertEqual(peer.resets().get(stream_id), ErrorCodes.PROTOCOL_ERROR)
        self.assertIsNone(peer.goaway())
        handler = target.handlers[0]
        self.assertIsNone(handler.trailers, "the target was told the body ended")
        self.assertIsNotNone(handler.lost)
        self.assertEqual(peer.server.open_streams, 0)
        # The connection still serves: a well-formed request completes.
        after = peer.request(b"POST", body=b"abc", extra=[(b"content-length", b"3")])
        self.assertEqual(bytes(target.handlers[-1].body), b"abc")
        self.assertEqual(target.handlers[-1].trailers, [])
        target.handlers[-1].writer.write_head(200, [], end=True)
        peer.receive()
        self.assertEqual(status_of(peer.response(after)[0]), b"200")

    def test_declared_zero_is_unknown_length_until_end_stream(self) -> None:
        """A declared 0 on an open stream reaches the target as an unknown length whose
        end comes only with END_STREAM."""
        peer, target, stream_id = self.open(b"0")
        handler = target.handlers[0]
        self.assertIsNone(handler.head.content_length)
        self.assertIsNone(handler.trailers)
        peer.client.end_stream(stream_id)
        peer.send()
        self.assertEqual(handler.trailers, [])
        self.assertIsNone(peer.resets().get(stream_id))

    def test_data_after_declared_zero(self) -> None:
        """DATA on a stream that declared content-length 0 is a stream error."""
        peer, target, stream_id = self.open(b"0")
        peer.client.send_data(stream_id, b"abc")
        peer.send()
        self.assertMalformed(peer, target, stream_id)
        self.assertEqual(bytes(target.handlers[0].body), b"")

    def test_more_data_than_declared(self) -> None:
        """DATA beyond the declared length is a stream error; the frame that completed
        the declared length without END_STREAM never reached the target."""
        peer, target, stream_id = self.open(b"3")
        peer.client.send_data(stream_id, b"abc")
        peer.send()
        self.assertEqual(bytes(target.handlers[0].body), b"")  # held: END_STREAM may not come
        peer.client.send_data(stream_id, b"d", end_stream=True)
        peer.send()
        self.assertMalformed(peer, target, stream_id)
        self.assertEqual(bytes(target.handlers[0].body), b"")

    def test_end_stream_before_declared_length(self) -> None:
        """END_STREAM before the declared length is a stream error, not a GOAWAY."""
        peer, target, stream_id = self.open(b"10")
        peer.client.send_data(stream_id, b"abc", end_stream=True)
        peer.send()
        self.assertMalformed(peer, target, stream_id)

    def test_trailers_before_declared_length(self) -> None:
        """Trailers ending the stream before the declared length: a stream error."""
        peer, target, stream_id = self.open(b"10")
        peer.client.send_data(stream_id, b"abc")
        peer.client.send_headers(stream_id, [(b"x-t", b"1")], end_stream=True)
        peer.send()
        self.assertMalformed(peer, target, stream_id)

    def test_declared_length_without_data(self) -> None:
        """A content-length above 0 on HEADERS with END_STREAM: reset, no target."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request(b"POST", extra=[(b"content-length", b"3")])
        peer.receive()
        self.assertEqual(peer.resets().get(stream_id), ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(target.handlers, [])
        self.assertIsNone(peer.goaway())

    def test_exact_length_completes(self) -> None:
        """The declared length in several frames, END_STREAM on an empty last one."""
        peer, target, stream_id = self.open(b"6")
        peer.client.send_data(stream_id, b"abc")
        peer.client.send_data(stream_id, b"def")
        peer.send()
        handler = target.handlers[0]
        self.assertEqual(bytes(handler.body), b"abc")  # the completing frame waits
        peer.client.end_stream(stream_id)
        peer.send()
        self.assertEqual((bytes(handler.body), handler.trailers), (b"abcdef", []))
        self.assertIsNone(peer.resets().get(stream_id))

    def test_exact_length_with_trailers(self) -> None:
        """The declared length then trailers: complete, trailers passed on."""
        peer, target, stream_id = self.open(b"3")
        peer.client.send_data(stream_id, b"abc")
        peer.client.send_headers(stream_id, [(b"x-t", b"1")], end_stream=True)
        peer.send()
        handler = target.handlers[0]
        self.assertEqual((bytes(handler.body), handler.trailers), (b"abc", [(b"x-t", b"1")]))

    def test_held_frame_waits_for_a_paused_target(self) -> None:
        """END_STREAM releases the held frame only when the target is not paused."""
        peer, target, stream_id = self.open(b"3")
        handler = target.handlers[0]
        handler.writer.pause_request_body()
        peer.client.send_data(stream_id, b"abc")
        peer.client.end_stream(stream_id)
        peer.send()
        self.assertEqual((bytes(handler.body), handler.trailers), (b"", None))
        handler.writer.resume_request_body()
        self.assertEqual((bytes(handler.body), handler.trailers), (b"abc", []))


class AbuseTests(TestCase):
    """Protocol violations and floods end in GOAWAY with the right code and one log line."""

    def assertGoaway(self, peer: Peer, code: ErrorCodes) -> None:
        goaway = peer.goaway()
        self.assertIsNotNone(goaway, "no GOAWAY sent")
        assert goaway is not None
        self.assertEqual(ErrorCodes(goaway.error_code), code)
        self.assertTrue(peer.transport.disconnecting)

    def test_garbage_preface(self) -> None:
        """Bytes that are not the HTTP/2 preface get GOAWAY PROTOCOL_ERROR and a close."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        peer = Peer(EchoTarget(), handshake=False)
        peer.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertGoaway(peer, ErrorCodes.PROTOCOL_ERROR)
        self.assertEqual(len(protocol_errors(observer)), 1)
        peer.send_raw(b"more garbage")  # ignored after the close
        self.assertEqual(len(protocol_errors(observer)), 1)

    def test_preface_split_across_reads(self) -> None:
        """A preface delivered one byte at a time is accepted."""
        target = EchoTarget()
        peer = Peer(target, handshake=False)
        data = peer.client.data_to_send()
        for index in range(len(data)):
            peer.send_raw(data[index : index + 1])
        stream_id = peer.request()
        peer.receive()
        self.assertEqual(peer.response(stream_id)[1], b"GET /api/x 0\n")

    def test_continuation_flood_count(self) -> None:
        """An endless run of empty CONTINUATION frames is cut off by h2 (GOAWAY)."""
        peer = Peer(EchoTarget())
        headers = HeadersFrame(1)
        headers.data = Encoder().encode(request_headers())
        headers.flags.add("END_STREAM")
        frames = headers.serialize() + ContinuationFrame(1).serialize() * 200
        peer.send_raw(frames)
        self.assertGoaway(peer, ErrorCodes.PROTOCOL_ERROR)

    def test_continuation_flood_bytes(self) -> None:
        """A few large CONTINUATION frames past the header limit get ENHANCE_YOUR_CALM."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        peer = Peer(EchoTarget(), Limits(max_header_bytes=16384))
        headers = HeadersFrame(1)
        headers.data = b"\x20" * 16000  # dynamic table size updates: decode to nothing
        data = headers.serialize()
        for _ in range(3):
            continuation = ContinuationFrame(1)
            continuation.data = b"\x20" * 16000
            data += continuation.serialize()
        peer.send_raw(data)
        self.assertGoaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("CONTINUATION", protocol_errors(observer)[0])

    def test_unfinished_header_block_times_out(self) -> None:
        """HEADERS without END_HEADERS and then silence hits the header timeout."""
        peer = Peer(EchoTarget())
        headers = HeadersFrame(1)
        headers.data = Encoder().encode(request_headers())
        peer.send_raw(headers.serialize())
        peer.clock.advance(peer.limits.header_timeout - 0.5)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(1)
        self.assertGoaway(peer, ErrorCodes.PROTOCOL_ERROR)

    def test_trickled_headers_frame_times_out(self) -> None:
        """A HEADERS frame sent a few bytes at a time hits the header timeout."""
        peer = Peer(EchoTarget())
        headers = HeadersFrame(1)
        headers.data = Encoder().encode(request_headers())
        headers.flags.add("END_HEADERS")
        data = headers.serialize()
        peer.send_raw(data[:5])
        peer.clock.advance(peer.limits.header_timeout - 1)
        peer.send_raw(data[5:12])  # still unfinished: more bytes do not reset the clock
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(2)
        self.assertTrue(peer.transport.disconnecting)

    def test_ping_flood(self) -> None:
        """More PINGs than the control-frame budget get GOAWAY ENHANCE_YOUR_CALM."""
        peer = Peer(EchoTarget())
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        peer.send_raw(ping.serialize() * (CONTROL_FRAME_BURST + 5))
        self.assertGoaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_pings_at_a_sane_rate(self) -> None:
        """Keepalive-style PINGs are answered and never close the connection."""
        peer = Peer(EchoTarget())
        for _ in range(50):
            peer.client.ping(b"keepaliv")
            peer.send()
            peer.clock.advance(1)
        self.assertIsNone(peer.goaway())

    def test_ping_flood_while_not_reading(self) -> None:
        """A client that floods PINGs but never reads the ACKs is cut off."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        transport = PausingTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 1))
        peer = Peer(EchoTarget(), Limits(idle_timeout=1000.0), transport=transport)
        transport.pause()
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        batch = ping.serialize() * (CONTROL_FRAME_BURST // 2)
        for _ in range(MAX_PAUSED_OUTBOUND_BYTES // (17 * CONTROL_FRAME_BURST // 2) + 2):
            if transport.disconnected:
                break
            peer.send_raw(batch)
            peer.clock.advance(10)  # stay inside the rate limit: only the buffer matters
        self.assertTrue(transport.disconnected)  # aborted: a GOAWAY could not be read
        self.assertLessEqual(len(transport.value()), MAX_PAUSED_OUTBOUND_BYTES + 1024)
        self.assertIn("not reading", protocol_errors(observer)[0])

    def test_settings_flood(self) -> None:
        """More SETTINGS frames than the budget get GOAWAY ENHANCE_YOUR_CALM."""
        peer = Peer(EchoTarget())
        settings = SettingsFrame(0)
        settings.settings = {SettingCodes.HEADER_TABLE_SIZE: 4096}
        peer.send_raw(settings.serialize() * (CONTROL_FRAME_BURST + 5))
        self.assertGoaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_empty_data_flood(self) -> None:
        """Endless empty DATA frames on an open stream get GOAWAY ENHANCE_YOUR_CALM."""
        peer = Peer(RecordingTarget())
        stream_id = peer.request(b"POST", end=False)
        peer.send_raw(DataFrame(stream_id).serialize() * (CONTROL_FRAME_BURST + 5))
        self.assertGoaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_window_overflow(self) -> None:
        """A WINDOW_UPDATE that overflows the connection window is FLOW_CONTROL_ERROR."""
        target = RecordingTarget()
        peer = Peer(target)
        peer.request()
        update = WindowUpdateFrame(0)
        update.window_increment = 2**31 - 1
        peer.send_raw(update.serialize())
        self.assertGoaway(peer, ErrorCodes.FLOW_CONTROL_ERROR)
        self.assertIsNotNone(target.handlers[0].lost)

    def test_stream_window_overflow_resets_stream(self) -> None:
        """A stream WINDOW_UPDATE past 2^31-1 resets that stream only (FLOW_CONTROL_ERROR)."""
        target = RecordingTarget()
        peer = Peer(target)
        first = peer.request()
        second = peer.request()
        update = WindowUpdateFrame(first)
        update.window_increment = 2**31 - 1
        peer.send_raw(update.serialize())
        peer.receive()
        self.assertEqual(peer.resets().get(first), ErrorCodes.FLOW_CONTROL_ERROR)
        self.assertIsNotNone(target.handlers[0].lost)
        self.assertIsNone(peer.goaway())
        target.handlers[1].writer.write_head(200, [], end=True)
        peer.receive()
        self.assertTrue(peer.response(second)[3])

    def test_random_frames_never_crash(self) -> None:
        """Random frames after a valid preface end in a GOAWAY or nothing, never a crash."""
        rng = random.Random(20231010)
        for _ in range(300):
            target = RecordingTarget()
            peer = Peer(target)
            peer.request(b"POST", end=False)
            blob = b""
            for _ in range(rng.randint(1, 6)):
                payload = rng.randbytes(rng.choice((0, 1, 4, 5, 8, 13, 40)))
                header = (
                    len(payload).to_bytes(3, "big")
                    + bytes([rng.randint(0, 10), rng.randint(0, 255)])
                    + rng.choice((0, 1, 2, 3, 0x80000001)).to_bytes(4, "big")
                )
                blob += header + payload
            peer.send_raw(blob)  # must not raise
            if peer.transport.disconnecting:
                self.assertIsNotNone(peer.goaway())
                self.assertEqual(peer.server.open_streams, 0)
                self.assertIsNotNone(target.handlers[0].lost)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_data_beyond_window(self) -> None:
        """DATA beyond the advertised stream window is FLOW_CONTROL_ERROR."""
        peer = Peer(RecordingTarget(pause_body=True))
        stream_id = peer.request(b"POST", end=False)
        chunk = DataFrame(stream_id)
        chunk.data = b"x" * 16384
        peer.send_raw(chunk.serialize() * (SERVER_STREAM_WINDOW // 16384 + 1))
        self.assertGoaway(peer, ErrorCodes.FLOW_CONTROL_ERROR)

    def test_oversized_headers_get_431(self) -> None:
        """A header list over the advertised limit gets 431; the connection lives on."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        target = EchoTarget()
        peer = Peer(target, Limits(max_header_bytes=4096))
        stream_id = peer.request(extra=[(b"x-big", b"v" * 5000)])
        peer.receive()
        self.assertEqual(status_of(peer.response(stream_id)[0]), b"431")
        self.assertEqual(target.handlers, [])
        self.assertEqual(len(protocol_errors(observer)), 1)
        again = peer.request()
        peer.receive()
        self.assertEqual(status_of(peer.response(again)[0]), b"200")

    def test_oversized_grpc_headers_get_resource_exhausted(self) -> None:
        """An oversized gRPC request gets a trailers-only RESOURCE_EXHAUSTED."""
        peer = Peer(EchoTarget(), Limits(max_header_bytes=4096))
        stream_id = peer.request(
            b"POST", b"/pkg.S/M",
            extra=[(b"content-type", b"application/grpc"), (b"x-big-bin", b"v" * 5000)],
        )
        peer.receive()
        headers = dict(peer.response(stream_id)[0])
        self.assertEqual(headers[b"grpc-status"], b"8")

    def test_huge_headers_get_goaway(self) -> None:
        """A header list past the hard ceiling is an HPACK bomb: GOAWAY ENHANCE_YOUR_CALM."""
        peer = Peer(EchoTarget(), Limits(max_header_bytes=4096))
        peer.request(extra=[(b"x-big", b"v" * 10000)])
        self.assertGoaway(peer, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_malformed_request_is_protocol_error(self) -> None:
        """A request with a connection-specific header is rejected by h2 validation."""
        peer = Peer(EchoTarget())
        encoder = Encoder()
        headers = HeadersFrame(1)
        headers.data = encoder.encode(request_headers(extra=[(b"connection", b"close")]))
        headers.flags.add("END_HEADERS")
        headers.flags.add("END_STREAM")
        peer.send_raw(headers.serialize())
        peer.receive()
        self.assertTrue(
            peer.resets().get(1) == ErrorCodes.PROTOCOL_ERROR
            or (peer.goaway() is not None and peer.goaway().error_code == 1)  # type: ignore[union-attr]
        )

    def test_client_goaway_loses_streams(self) -> None:
        """A client GOAWAY ends every open stream with connection_lost and closes."""
        target = RecordingTarget()
        peer = Peer(target)
        peer.request()
        peer.client.close_connection(ErrorCodes.NO_ERROR)
        peer.send()
        self.assertIn("GOAWAY", target.handlers[0].lost or "")
        self.assertTrue(peer.transport.disconnecting)

    def test_other_connections_unaffected(self) -> None:
        """Killing one connection for abuse leaves a second one serving."""
        target = EchoTarget()
        bad = Peer(target)
        good = Peer(target)
        bad.send_raw(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"x" * 8)  # PING, fine
        bad.send_raw(b"\xff" * 40)  # a frame header announcing 16 MiB
        goaway = bad.goaway()
        assert goaway is not None
        self.assertEqual(goaway.error_code, ErrorCodes.FRAME_SIZE_ERROR)
        self.assertTrue(bad.transport.disconnecting)
        stream_id = good.request()
        good.receive()
        self.assertEqual(good.response(stream_id)[1], b"GET /api/x 0\n")


class TimeoutTests(TestCase):
    """Idle and slow clients are closed on the injected clock."""

    def test_idle_timeout(self) -> None:
        """No open stream for idle_timeout: GOAWAY NO_ERROR and close."""
        limits = Limits(idle_timeout=30.0, header_timeout=5.0)
        peer = Peer(EchoTarget(), limits)
        self.assertIs(peer.transport.producer, peer.server)
        peer.request()
        peer.receive()
        peer.clock.advance(29)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(2)
        goaway = peer.goaway()
        assert goaway is not None
        self.assertEqual(goaway.error_code, ErrorCodes.NO_ERROR)
        self.assertTrue(peer.transport.disconnecting)
        # Unregistered first: TLS would not shut down with a producer still registered.
        self.assertIsNone(peer.transport.producer)

    def test_open_stream_is_not_idle(self) -> None:
        """A connection with a stream in progress outlives idle_timeout."""
        limits = Limits(idle_timeout=30.0)
        target = RecordingTarget()
        peer = Peer(target, limits)
        peer.request()
        peer.clock.advance(100)
        self.assertFalse(peer.transport.disconnecting)
        target.handlers[0].writer.write_head(200, [], end=True)
        peer.clock.advance(29)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(31)
        self.assertTrue(peer.transport.disconnecting)

    def test_header_timeout_without_preface(self) -> None:
        """A client that never finishes its preface is closed after header_timeout."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        limits = Limits(header_timeout=5.0)
        peer = Peer(EchoTarget(), limits, handshake=False)
        peer.send_raw(PREFACE[:10])
        peer.clock.advance(4.9)
        self.assertFalse(peer.transport.disconnecting)
        peer.clock.advance(0.2)
        self.assertTrue(peer.transport.disconnecting)
        self.assertIn("preface", protocol_errors(observer)[0])

    def test_abort_when_client_never_reads_the_goaway(self) -> None:
        """After closing, a client that does not read is aborted after a grace period."""
        limits = Limits(header_timeout=5.0)
        peer = Peer(EchoTarget(), limits, handshake=False)
        peer.clock.advance(6)
        self.assertTrue(peer.transport.disconnecting)
        self.assertFalse(peer.transport.disconnected)
        peer.clock.advance(60)
        self.assertTrue(peer.transport.disconnected)


class DrainTests(TestCase):
    """drain() lets streams in flight finish and refuses new ones."""

    def goaways(self, peer: Peer) -> list[tuple[int, int]]:
        return [
            (f.last_stream_id, f.error_code)
            for f in peer.server_frames()
            if isinstance(f, GoAwayFrame)
        ]

    def raw_request(self, peer: Peer, stream_id: int) -> None:
        """A request sent as raw frames (the h2 client stops at the first GOAWAY)."""
        frame = HeadersFrame(stream_id)
        frame.data = peer.client.encoder.encode(request_headers())
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        peer.send_raw(frame.serialize())

    def test_drain(self) -> None:
        """The two-step GOAWAY: a first one with the largest stream id and a PING; a
        stream opened meanwhile is served; once the PING is answered the final GOAWAY
        names the last stream; later streams are refused; close when all are done."""
        target = RecordingTarget()
        peer = Peer(target)
        first = peer.request()
        done = peer.server.drain()
        fired: list[object] = []
        done.addCallback(fired.append)
        self.assertEqual(self.goaways(peer), [(2**31 - 1, 0)])
        pings = [f for f in peer.server_frames() if isinstance(f, PingFrame)]
        self.assertEqual(len(pings), 1)
        self.assertFalse(peer.transport.disconnecting)
        # A stream the client opened before it saw the first GOAWAY is still served.
        self.raw_request(peer, first + 2)
        self.assertEqual(len(target.handlers), 2)
        ack = PingFrame(0)
        ack.flags.add("ACK")
        ack.opaque_data = pings[0].opaque_data
        peer.send_raw(ack.serialize())
        self.assertEqual(self.goaways(peer), [(2**31 - 1, 0), (first + 2, 0)])
        # A stream opened after the final GOAWAY is refused.
        self.raw_request(peer, first + 4)
        self.assertEqual(len(target.handlers), 2)
        resets = [f for f in peer.server_frames() if isinstance(f, RstStreamFrame)]
        self.assertEqual([(f.stream_id, f.error_code) for f in resets],
                         [(first + 4, ErrorCodes.REFUSED_STREAM)])
        for handler in target.handlers:
            handler.writer.write_head(200, [])
            handler.writer.write_body(b"bye")
            handler.writer.end()
        self.assertTrue(peer.transport.disconnecting)
        data = [f for f in peer.server_frames() if isinstance(f, DataFrame)]
        self.assertEqual(b"".join(f.data for f in data), b"byebye")
        peer.server.connectionLost()
        self.assertEqual(fired, [None])

    def test_final_goaway_without_a_ping_answer(self) -> None:
        """A client that never answers the PING gets the final GOAWAY after a second."""
        target = RecordingTarget()
        peer = Peer(target)
        first = peer.request()
        peer.server.drain()
        peer.clock.advance(0.9)
        self.assertEqual(self.goaways(peer), [(2**31 - 1, 0)])
        peer.clock.advance(0.1)
        self.assertEqual(self.goaways(peer), [(2**31 - 1, 0), (first, 0)])
        self.assertFalse(peer.transport.disconnecting)

    def test_drain_idle_connection_closes_after_the_final_goaway(self) -> None:
        """Draining a connection with no streams closes it with the final GOAWAY."""
        peer = Peer(EchoTarget())
        peer.server.drain()
        self.assertFalse(peer.transport.disconnecting)
        pings = [f for f in peer.server_frames() if isinstance(f, PingFrame)]
        ack = PingFrame(0)
        ack.flags.add("ACK")
        ack.opaque_data = pings[-1].opaque_data
        peer.send_raw(ack.serialize())
        self.assertTrue(peer.transport.disconnecting)

    def test_drain_timeout_ends_grpc_calls_unavailable(self) -> None:
        """A gRPC call still open when the drain period is over ends with grpc-status 14
        (UNAVAILABLE): as trailers once its response began, trailers-only before."""
        target = RecordingTarget()
        peer = Peer(target)
        grpc = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        started = peer.request(b"POST", b"/pkg.Svc/Watch", extra=grpc, end=False)
        silent = peer.request(b"POST", b"/pkg.Svc/Other", extra=grpc, end=False)
        target.handlers[0].writer.write_head(200, [(b"content-type", b"application/grpc")])
        target.handlers[0].writer.write_body(b"\x00\x00\x00\x00\x00")
        peer.receive()
        peer.server.drain(timeout=5)
        peer.clock.advance(5)
        frames = peer.server_frames()
        decoder = Decoder()
        blocks = {}
        for frame in frames:
            if isinstance(frame, HeadersFrame):
                blocks.setdefault(frame.stream_id, []).append(
                    (dict(decoder.decode(frame.data, raw=True)), "END_STREAM" in frame.flags)
                )
        self.assertEqual(blocks[started][-1][0][b"grpc-status"], b"14")
        self.assertTrue(blocks[started][-1][1])
        self.assertEqual(blocks[silent][-1][0][b"grpc-status"], b"14")
        self.assertEqual(blocks[silent][-1][0][b":status"], b"200")
        self.assertTrue(blocks[silent][-1][1])
        self.assertTrue(peer.transport.disconnecting)
        self.assertEqual([h.lost is not None for h in target.handlers], [True, True])

    def test_drain_timeout_cuts_streams(self) -> None:
        """Streams still open after the drain timeout are lost and the connection closes."""
        target = RecordingTarget()
        peer = Peer(target)
        peer.request()
        peer.server.drain(timeout=10)
        peer.clock.advance(11)
        self.assertIsNotNone(target.handlers[0].lost)
        self.assertTrue(peer.transport.disconnecting)

    def test_connection_lost_tells_streams(self) -> None:
        """Losing the transport calls connection_lost on every open stream."""
        target = RecordingTarget()
        peer = Peer(target)
        peer.request()
        peer.request()
        peer.server.connectionLost()
        self.assertEqual([h.lost for h in target.handlers], ["connection lost"] * 2)
        self.assertEqual(peer.server.open_streams, 0)
        self.assertEqual(peer.clock.getDelayedCalls(), [])


def _blocking_h2_get(
    port: int, context: stdlib_ssl.SSLContext | None, size: int
) -> tuple[bytes, int, bool, str | None]:
    """GET /big over a real socket; read slowly first; then wait for the server to close.

    Returns (status, body bytes, whether the server closed the socket, ALPN).
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock: socket.socket = (
        context.wrap_socket(raw, server_hostname="localhost") if context else raw
    )
    alpn = sock.selected_alpn_protocol() if isinstance(sock, stdlib_ssl.SSLSocket) else None
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.send_headers(1, request_headers(b"GET", b"/big"), end_stream=True)
    sock.sendall(client.data_to_send())
    status = b""
    received = 0
    ended = False
    time.sleep(0.2)  # a slow reader: the server must hold back, not fail
    while not ended:
        data = sock.recv(65536)
        if not data:
            break
        for event in client.receive_data(data):
            if isinstance(event, ResponseReceived):
                status = dict(event.headers)[b":status"]
            elif isinstance(event, DataReceived):
                received += len(event.data)
                client.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, StreamEnded):
                ended = True
        sock.sendall(client.data_to_send())
    closed = False
    try:
        while True:  # the idle timeout closes the connection: EOF (or a reset)
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            client.receive_data(data)
    except (ConnectionError, stdlib_ssl.SSLError):
        closed = True
    finally:
        sock.close()
    assert received == size, (received, size)
    return status, received, closed, alpn


class EndToEndTests(TestCase):
    """A real listening socket (TLS with ALPN, and cleartext) and a real h2 client."""

    size = 3 * 1024 * 1024

    def listen(self, tls: bool) -> tuple[int, StreamingTarget, list[H2ServerProtocol]]:
        from twisted.internet import reactor

        target = StreamingTarget(self.size)
        limits = Limits(idle_timeout=0.5, header_timeout=5.0)
        protocols: list[H2ServerProtocol] = []

        def build(addr: object) -> H2ServerProtocol:
            protocol = H2ServerProtocol(
                target, limits, scheme=b"https" if tls else b"http", reactor=reactor
            )
            protocols.append(protocol)
            return protocol

        factory: Any = Factory()
        factory.buildProtocol = build
        if tls:
            from eventgw.tls import ensure_dev_certificate, server_context_factory

            cert = ensure_dev_certificate(self.mktemp())
            self.cert_path = cert.cert_path
            port = reactor.listenSSL(  # type: ignore[attr-defined]
                0, factory, server_context_factory(cert.cert_path, cert.key_path),
                interface="127.0.0.1",
            )
        else:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port, target, protocols

    @inlineCallbacks
    def check(self, tls: bool) -> Generator[Deferred[Any], Any, None]:
        port, target, protocols = self.listen(tls)
        context = None
        if tls:
            context = stdlib_ssl.create_default_context(cafile=self.cert_path)
            context.set_alpn_protocols(["h2"])
        result = yield deferToThread(_blocking_h2_get, port, context, self.size)
        status, received, closed, alpn = result
        self.assertEqual((status, received, closed), (b"200", self.size, True))
        if tls:
            self.assertEqual(alpn, "h2")
        streamer = target.streamers[0]
        self.assertTrue(streamer.done)
        self.assertGreaterEqual(streamer.pauses, 1)  # the slow start paused the producer
        for protocol in protocols:
            # The server side may see the close a moment after the client did.
            yield protocol.drain()
            self.assertEqual(protocol.open_streams, 0)

    def test_tls_alpn_h2(self) -> Deferred[None]:
        """Over TLS a slow client gets 3 MiB with back-pressure, then an idle close."""
        return self.check(tls=True)

    def test_cleartext_h2c(self) -> Deferred[None]:
        """Over cleartext (h2c prior knowledge) the same holds."""
        return self.check(tls=False)


class RecordingBackend(resource.Resource):
    """A Master API that records every request it received complete."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes]] = []

    def render(self, request: server.Request) -> bytes:
        body = request.content.read()  # type: ignore[union-attr]
        self.seen.append((request.uri, body))
        return b"ok"


def _malformed_then_good(port: int) -> dict[int, tuple[str, int]]:
    """Over h2c: five malformed POSTs to /api, each in its own writes with pauses (so
    the gateway has time to forward what it would forward), then a good one.

    Returns, per stream, ("reset", code) or ("status", status).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    outcome: dict[int, tuple[str, int]] = {}

    def post(stream_id: int, length: bytes, *, end: bool = False) -> None:
        client.send_headers(
            stream_id,
            request_headers(b"POST", f"/api/s{stream_id}".encode(),
                            [(b"content-length", length)]),
            end_stream=end,
        )

    closed: list[bool] = []

    def step() -> None:
        data = client.data_to_send()
        if not closed:
            try:
                sock.sendall(data)
            except OSError:  # the gateway closed the connection (a GOAWAY)
                closed.append(True)
        time.sleep(0.2)

    def read_until(done: Any) -> None:
        while not done() and not closed:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            for event in client.receive_data(data):
                if isinstance(event, StreamReset):
                    outcome[event.stream_id] = ("reset", event.error_code)
                elif isinstance(event, ResponseReceived):
                    outcome[event.stream_id] = ("status", int(dict(event.headers)[b":status"]))
            step()

    try:
        post(1, b"0")  # declared 0, then DATA
        step()
        client.send_data(1, b"abc")
        step()
        post(3, b"3")  # the declared length, then more
        client.send_data(3, b"abc")
        step()
        client.send_data(3, b"d", end_stream=True)
        step()
        post(5, b"10")  # END_STREAM before the declared length
        client.send_data(5, b"abc")
        step()
        client.send_data(5, b"def", end_stream=True)
        step()
        post(7, b"4", end=True)  # a declared length and no DATA at all
        step()
        post(9, b"3")  # the declared length, then trailers early
        client.send_data(9, b"ab")
        step()
        client.send_headers(9, [(b"x-t", b"1")], end_stream=True)
        step()
        post(11, b"3")
        client.send_data(11, b"abc", end_stream=True)
        step()
        read_until(lambda: len(outcome) == 6)
    finally:
        sock.close()
    return outcome


class MalformedRequestEndToEndTests(TestCase):
    """RFC 9113 section 8.1.1 end to end: the real gateway (h2c) in front of a real HTTP
    backend; a malformed request is never forwarded as a complete one."""

    timeout = 60

    @inlineCallbacks
    def test_content_length_mismatches_never_reach_the_backend(
        self,
    ) -> Generator[Deferred[Any], Any, None]:
        """Every content-length mismatch is reset (PROTOCOL_ERROR) and the backend sees
        none of them complete; the same connection then serves a good request."""
        from tests.rig import gateway_config, listen_site, settle, start_gateway

        backend = RecordingBackend()
        port = listen_site(self, backend)
        gateway = start_gateway(self, gateway_config(api=f"http://127.0.0.1:{port}"))
        outcome = yield deferToThread(_malformed_then_good, gateway.cleartext_port)
        yield settle(0.3)
        self.assertEqual(backend.seen, [(b"/api/s11", b"abc")])
        for stream_id in (1, 3, 5, 7, 9):
            self.assertEqual(
                outcome.get(stream_id), ("reset", ErrorCodes.PROTOCOL_ERROR), stream_id
            )
        self.assertEqual(outcome.get(11), ("status", 200))


# Silence "imported but unused" for names used only in type positions above.
_ = (ConnectionTerminated,)
