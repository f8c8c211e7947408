"""WebSockets through /api: the handshake rules and frame scanner (no sockets), and
sessions through the real gateway.

The end-to-end tests run the gateway service on 127.0.0.1 with TLS (ALPN), the demo
Master API's site with its WebSocket echo (wsproto) as the upstream, and as clients
the ``websockets`` library over HTTP/1.1 and ``h2`` + ``wsproto`` over HTTP/2 extended
CONNECT (RFC 8441; ``websockets`` speaks HTTP/1.1 only).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from typing import Any

import websockets.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
)
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from websockets.sync.client import connect as ws_connect
from wsproto import ConnectionType
from wsproto.connection import Connection as WsFrames
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from demo.masterapi.http_server import MasterApi
from demo.masterapi.websocket import WebSocketSite
from eventgw.admin.metrics import REGISTRY
from eventgw.api.wsframes import (
    CLOSE_MESSAGE_TOO_BIG,
    FrameScanner,
    accept_key,
    close_frame,
    downstream_accept_headers,
    handshake_problem,
    upstream_handshake_headers,
)
from eventgw.downstream.h2heads import Accepted, Refused, RequestFacts, h2_request_head
from eventgw.downstream.http1parse import PAUSED, MessageEnded, RequestHeadParsed, RequestParser
from eventgw.errors import ResponseError
from eventgw.upstream.h1client import ClientConnection, Data, Ended, ResponseHead
from tests.rig import RunningGateway, free_port, gateway_config, start_gateway, wait_until
from tests.support import make_head

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def frame(payload: bytes, *, opcode: int = 0x2, fin: bool = True, masked: bool = True) -> bytes:
    """One WebSocket frame (mask key 0: the scanner never unmasks)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 65536:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload


class HandshakeTests(SynchronousTestCase):
    """The opening handshake's header rules."""

    def test_accept_key_of_rfc_6455(self) -> None:
        """The example of RFC 6455 section 1.3."""
        self.assertEqual(accept_key(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_handshake_problems(self) -> None:
        """HTTP/1.1 needs a 16-byte key; both protocols need version 13."""
        good = [(b"sec-websocket-key", KEY), (b"sec-websocket-version", b"13")]
        self.assertIsNone(handshake_problem(make_head(headers=good)))
        self.assertIn("Sec-WebSocket-Key", handshake_problem(make_head(headers=good[1:])) or "")
        self.assertIn("Version", handshake_problem(make_head(headers=good[:1])) or "")
        self.assertIsNone(handshake_problem(make_head(headers=good[1:], protocol="HTTP/2")))

    def test_upstream_headers(self) -> None:
        """Forwarding headers as on /api, the upgrade pair, the gateway's key for HTTP/2."""
        head = make_head(
            headers=[(b"sec-websocket-version", b"13"), (b"connection", b"Upgrade"),
                     (b"upgrade", b"websocket"), (b"origin", b"https://app.test")],
            protocol="HTTP/2", peer="10.0.0.9",
        )
        headers = upstream_handshake_headers(head, b"k")
        self.assertEqual(headers[-2:], [(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
        self.assertIn((b"sec-websocket-key", b"k"), headers)
        self.assertIn((b"x-forwarded-for", b"10.0.0.9"), headers)
        self.assertIn((b"x-forwarded-proto", b"https"), headers)
        self.assertIn((b"origin", b"https://app.test"), headers)

    def test_accept_checked_for_the_gateways_key(self) -> None:
        """With the gateway's own key the Accept must match; HTTP/2 never gets it."""
        answer = [(b"upgrade", b"websocket"), (b"connection", b"upgrade"),
                  (b"sec-websocket-accept", accept_key(KEY)),
                  (b"sec-websocket-protocol", b"chat")]
        self.assertEqual(
            downstream_accept_headers(answer, http2=True, key=KEY),
            [(b"sec-websocket-protocol", b"chat")],
        )
        self.assertIsInstance(downstream_accept_headers(answer, http2=True, key=b"other"), str)
        kept = downstream_accept_headers(answer, http2=False, key=None)
        self.assertIn((b"sec-websocket-accept", accept_key(KEY)), kept)
        self.assertIsInstance(
            downstream_accept_headers([(b"upgrade", b"h2c")], http2=False, key=None), str
        )


class UpgradeRecognitionTests(SynchronousTestCase):
    """Which requests are WebSocket handshakes, on each protocol and codec."""

    def parse(self, head: bytes) -> Any:
        parser = RequestParser(32 * 1024)
        parser.receive_data(head + b"\r\n\r\nafter")
        return parser, parser.next_event()

    def test_http1_websocket_handshake(self) -> None:
        """GET with Upgrade: websocket and the upgrade connection option; the bytes after
        the head are handed over once the upgrade is accepted."""
        parser, event = self.parse(
            b"GET /api/ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
            b"Upgrade: WebSocket"
        )
        self.assertIsInstance(event, RequestHeadParsed)
        self.assertEqual(event.upgrade, b"websocket")
        self.assertIsInstance(parser.next_event(), MessageEnded)
        self.assertEqual(parser.take_tunnel_bytes(), b"after")
        self.assertIs(parser.next_event(), PAUSED)

    def test_not_websocket(self) -> None:
        """Other upgrades, a missing connection option, a body or POST: no upgrade."""
        for head in (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c",
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket",
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Content-Length: 5",
        ):
            _, event = self.parse(head)
            self.assertIsNone(event.upgrade, head)

    def test_h2_extended_connect(self) -> None:
        """CONNECT + :protocol websocket is accepted with its path; another :protocol
        and plain CONNECT are 501."""
        facts = RequestFacts(scheme=b"https", peer="10.0.0.1", max_header_bytes=4096)
        base = [(b":method", b"CONNECT"), (b":scheme", b"https"), (b":authority", b"x")]
        accepted = h2_request_head(
            [*base, (b":protocol", b"websocket"), (b":path", b"/api/ws")], facts,
            end_stream=False,
        )
        self.assertIsInstance(accepted, Accepted)
        self.assertEqual((accepted.head.upgrade, accepted.head.target), (b"websocket", b"/api/ws"))
        other = h2_request_head(
            [*base, (b":protocol", b"webtransport"), (b":path", b"/api/ws")], facts,
            end_stream=False,
        )
        self.assertIsInstance(other, Refused)
        self.assertEqual(other.status, 501)
        plain = h2_request_head([(b":method", b"CONNECT"), (b":authority", b"x:1")], facts,
                                end_stream=False)
        self.assertIsInstance(plain, Refused)
        self.assertEqual((plain.status, plain.message), (501, "CONNECT is not supported"))

    def test_h1client_reads_on_after_101(self) -> None:
        """The upstream codec, asked to upgrade, returns the 101 and then every byte as
        data until the connection closes; without the flag a 101 is an error."""
        codec = ClientConnection()
        codec.send_request(b"GET", b"/api/ws", b"up", [], content_length=0, upgrade=True)
        codec.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nab")
        head = codec.next_event()
        self.assertIsInstance(head, ResponseHead)
        self.assertEqual(head.status, 101)
        self.assertEqual(codec.next_event(), Data(data=b"ab"))
        codec.receive_data(b"")
        self.assertIsInstance(codec.next_event(), Ended)
        plain = ClientConnection()
        plain.send_request(b"GET", b"/", b"up", [], content_length=0)
        plain.receive_data(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        self.assertRaises(ResponseError, plain.next_event)


class FrameScannerTests(SynchronousTestCase):
    """Frame headers followed across reads; big messages stopped before they pass."""

    def test_frames_pass_byte_by_byte(self) -> None:
        """Every byte passes, a header only once it is whole."""
        data = frame(b"a" * 5) + frame(b"b" * 300) + frame(b"c" * 70000) + frame(b"", opcode=9)
        scanner = FrameScanner(100_000)
        out = b""
        for i in range(len(data)):
            out += scanner.feed(data[i : i + 1])
            if i == 0:
                self.assertEqual(out, b"")  # half a header waits
        self.assertEqual(out, data)
        self.assertTrue(scanner.at_boundary)
        self.assertIsNone(scanner.violation)

    def test_message_too_big_across_fragments(self) -> None:
        """The frames of one message add up; the one that passes the limit is stopped
        before its header, control frames in between do not count."""
        first = frame(b"x" * 60, fin=False, opcode=0x1)
        ping = frame(b"p", opcode=0x9)
        second = frame(b"y" * 60, fin=True, opcode=0x0)
        scanner = FrameScanner(100)
        self.assertEqual(scanner.feed(first + ping), first + ping)
        self.assertEqual(scanner.feed(second), b"")
        self.assertEqual(scanner.violation and scanner.violation[0], CLOSE_MESSAGE_TOO_BIG)
        self.assertEqual(scanner.feed(frame(b"z")), b"")

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.tuples(st.integers(0, 70000), st.booleans(), st.booleans()), max_size=6),
        st.lists(st.integers(1, 5000), max_size=30),
    )
    def test_any_frames_any_reads(
        self, frames: list[tuple[int, bool, bool]], reads: list[int]
    ) -> None:
        """Frames of any size (7-bit, 16-bit and 64-bit lengths), masked or not, cut
        anywhere: under the limit every byte passes, in order."""
        data = b"".join(frame(b"p" * size, masked=masked, opcode=0x2 if fin else 0x1)
                        for size, masked, fin in frames)
        scanner = FrameScanner(10**9)
        out, pos = b"", 0
        for size in reads:
            out += scanner.feed(data[pos : pos + size])
            pos += size
        out += scanner.feed(data[pos:])
        self.assertEqual(out, data)
        self.assertTrue(scanner.at_boundary)

    def test_limit_is_per_message(self) -> None:
        """Finished messages do not add up."""
        scanner = FrameScanner(100)
        data = frame(b"x" * 90) * 5
        self.assertEqual(scanner.feed(data), data)

    def test_close_frames(self) -> None:
        """A server's Close is unmasked, a client's masked; both carry the code."""
        self.assertEqual(close_frame(1009, "big", masked=False), b"\x88\x05\x03\xf1big")
        masked = close_frame(1009, "big", masked=True)
        self.assertEqual(masked[:2], b"\x88\x85")
        mask = masked[2:6]
        self.assertEqual(bytes(b ^ mask[i % 4] for i, b in enumerate(masked[6:])), b"\x03\xf1big")


# --- end to end ------------------------------------------------------------------------


def listen_echo(case: TestCase) -> int:
    site = WebSocketSite(MasterApi())
    site.noisy = False
    port = global_reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    case.addCleanup(port.stopListening)
    return int(port.getHost().port)


class _Flood(Protocol):
    """An upstream that accepts any WebSocket handshake, then sends binary frames as
    fast as its transport takes them, until ``total`` bytes; it records the pauses."""

    def __init__(self, owner: _FloodFactory) -> None:
        self.owner = owner
        self.buffer = b""
        self.paused = False

    def dataReceived(self, data: bytes) -> None:
        if self.owner.sent or self.transport is None:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        self.owner.request = self.buffer
        key = b""
        for line in self.buffer.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"sec-websocket-key":
                key = value.strip()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True
        self.owner.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = self.owner.chunk
        while not self.paused and self.owner.sent < self.owner.total:
            assert self.transport is not None
            self.transport.write(chunk)
            self.owner.sent += len(chunk)

    def stopProducing(self) -> None:
        pass


class _Sink(Protocol):
    """An upstream that accepts the handshake, then reads nothing until told to; it
    counts what it reads."""

    def __init__(self, owner: _SinkFactory) -> None:
        self.owner = owner
        self.buffer = b""
        self.open = False

    def dataReceived(self, data: bytes) -> None:
        if self.open:
            self.owner.received += len(data)
            return
        self.buffer += data
        head, sep, rest = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.transport is None:
            return
        key = next(v.strip() for n, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                   if n.lower() == b"sec-websocket-key")
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
            b"sec-websocket-accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.open = True
        self.owner.received += len(rest)
        self.owner.connection = self
        self.transport.pauseProducing()  # stop reading: the client must be held back


class _SinkFactory(Factory):
    def __init__(self) -> None:
        self.received = 0
        self.connection: _Sink | None = None

    def buildProtocol(self, addr: Any) -> _Sink:
        return _Sink(self)


class _FloodFactory(Factory):
    #: One frame of the flood (a binary frame of 64 KiB with its header).
    chunk = frame(b"f" * (64 * 1024 - 4), masked=False)

    def __init__(self, chunks: int) -> None:
        self.total = chunks * len(self.chunk)
        self.request = b""
        self.sent = 0
        self.pauses = 0

    def buildProtocol(self, addr: Any) -> _Flood:
        return _Flood(self)


def h2_websocket(gw: RunningGateway, path: str, *, protocol: bytes = b"websocket",
                 method: bytes = b"CONNECT") -> tuple[Any, H2Connection, int, dict[int, int], int]:
    """Open an HTTP/2 connection and send an extended CONNECT; return the socket, the
    connection, the stream, the server's settings and the response status."""
    context = gw.ssl_context(["h2"])
    raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10)
    sock = context.wrap_socket(raw, server_hostname="localhost")
    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    settings: dict[int, int] = {}
    while SettingCodes.ENABLE_CONNECT_PROTOCOL not in settings:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, RemoteSettingsChanged):
                settings.update({k: v.new_value for k, v in event.changed_settings.items()})
        sock.sendall(conn.data_to_send())
        if settings:
            break
    stream = conn.get_next_available_stream_id()
    headers = [(b":method", method), (b":authority", b"localhost")]
    if protocol:
        headers += [(b":protocol", protocol), (b":scheme", b"https"), (b":path", path.encode())]
    headers.append((b"sec-websocket-version", b"13"))
    conn.send_headers(stream, headers)
    sock.sendall(conn.data_to_send())
    status = 0
    while not status:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived) and event.stream_id == stream:
                status = int(dict(event.headers)[b":status"])
        sock.sendall(conn.data_to_send())
    return sock, conn, stream, settings, status


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    from eventgw.admin.metrics import flush

    flush()
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


class WebSocketEndToEndTests(TestCase):
    """Sessions through the gateway to a real WebSocket server."""

    timeout = 60

    def start(self, upstream_port: int, extra: str = "") -> RunningGateway:
        return start_gateway(self, gateway_config(api=f"http://127.0.0.1:{upstream_port}",
                                                  extra=extra))

    def ws_url(self, gw: RunningGateway, path: str = "/api/ws/echo") -> str:
        return f"wss://127.0.0.1:{gw.tls_port}{path}"

    def ws_tls(self, gw: RunningGateway) -> ssl.SSLContext:
        """The websockets client's TLS: HTTP/1.1, and TLS 1.2 at most.

        The sync client reads its socket on a thread of its own while the caller
        writes to it, so one OpenSSL connection is used from two threads at once,
        which OpenSSL does not allow.  With TLS 1.3 the server's session tickets
        arrive just after the handshake, while the client writes its upgrade
        request: now and then the request never reached the gateway, and the
        handshake timed out.  TLS 1.2 has no such message after the handshake;
        TLS 1.3 to the gateway is tested with clients that use one thread.
        """
        context = gw.ssl_context(["http/1.1"])
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def access_events(self) -> list[dict[str, Any]]:
        """The access events logged from now on (collected until the test ends)."""
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "eventgw.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    @inlineCallbacks
    def test_echo_over_http1(self) -> Any:
        """The websockets client: text and binary echo, the subprotocol agreed, a clean
        close from the client; the session is counted and has one access event with
        its bytes and how it ended."""
        events = self.access_events()
        gw = self.start(listen_echo(self))
        before = sample("eventgw_websocket_sessions_total", {"protocol": "HTTP/1.1"})

        def talk() -> tuple[Any, ...]:
            with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                            subprotocols=["chat"], open_timeout=10) as ws:
                ws.send("hello")
                text = ws.recv(10)
                ws.send(b"\x00\x01" * 40000)
                data = ws.recv(10)
                return text, data, ws.subprotocol

        text, data, subprotocol = yield deferToThread(talk)
        self.assertEqual((text, data, subprotocol), ("hello", b"\x00\x01" * 40000, "chat"))
        self.assertEqual(
            sample("eventgw_websocket_sessions_total", {"protocol": "HTTP/1.1"}), before + 1
        )
        yield wait_until(lambda: any(e.get("path") == "/api/ws/echo" for e in events))
        [event] = [e for e in events if e.get("path") == "/api/ws/echo"]
        self.assertEqual((event["status"], event["protocol"]), (101, "HTTP/1.1"))
        self.assertIn(event["websocket"], ("client closed", "upstream closed"))
        self.assertGreater(event["ws_bytes_up"], 80000)
        self.assertGreater(event["ws_bytes_down"], 80000)

    @inlineCallbacks
    def test_echo_over_http2_extended_connect(self) -> Any:
        """RFC 8441: the server offers ENABLE_CONNECT_PROTOCOL, a CONNECT with
        :protocol websocket gets 200, and WebSocket frames in DATA echo back."""
        gw = self.start(listen_echo(self))

        def talk() -> tuple[dict[int, int], int, list[Any], bool]:
            sock, conn, stream, settings, status = h2_websocket(gw, "/api/ws/echo")
            frames = WsFrames(ConnectionType.CLIENT)
            conn.send_data(stream, frames.send(TextMessage(data="over h2")))
            conn.send_data(stream, frames.send(BytesMessage(data=b"b" * 12000)))
            sock.sendall(conn.data_to_send())
            got: list[Any] = []
            ended = False
            while not ended:
                data = sock.recv(65536)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if isinstance(event, DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, stream)
                        if not event.data:
                            continue
                        frames.receive_data(event.data)
                        for message in frames.events():
                            got.append(message)
                            if len(got) == 2:
                                conn.send_data(stream, frames.send(CloseConnection(code=1000)))
                    elif isinstance(event, StreamEnded):
                        ended = True
                sock.sendall(conn.data_to_send())
            sock.close()
            return settings, status, got, ended

        settings, status, got, ended = yield deferToThread(talk)
        self.assertEqual(settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL), 1)
        self.assertEqual(status, 200)
        self.assertEqual(got[0].data, "over h2")
        self.assertEqual(bytes(got[1].data), b"b" * 12000)
        self.assertIsInstance(got[2], CloseConnection)
        self.assertTrue(ended)  # the upstream closed: the stream ends

    @inlineCallbacks
    def test_refused_outside_api(self) -> Any:
        """A WebSocket elsewhere than /api is a 400 in the one error shape (HTTP/1.1 and
        HTTP/2); plain CONNECT stays 501; an unknown :protocol is 501."""
        gw = self.start(listen_echo(self))

        def http1() -> bytes:
            context = gw.ssl_context(["http/1.1"])
            with socket.create_connection(("127.0.0.1", gw.tls_port), timeout=10) as raw:
                sock = context.wrap_socket(raw, server_hostname="localhost")
                sock.sendall(
                    b"GET /events HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                    b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                    b"sec-websocket-key: " + KEY + b"\r\n\r\n"
                )
                data = b""
                while b"}" not in data:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data

        response = yield deferToThread(http1)
        self.assertTrue(response.startswith(b"HTTP/1.1 400 "), response)
        body = json.loads(response.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(body["code"], 3)
        self.assertIn("/api", body["message"])
        for path, protocol, method, expected in (
            ("/events", b"websocket", b"CONNECT", 400),
            ("/api/ws/echo", b"", b"CONNECT", 501),
            ("/api/ws/echo", b"webtransport", b"CONNECT", 501),
        ):
            result = yield deferToThread(h2_websocket, gw, path, protocol=protocol, method=method)
            result[0].close()
            self.assertEqual(result[4], expected, (path, protocol))

    @inlineCallbacks
    def test_access_rules_refuse_an_upgrade_before_the_upstream(self) -> Any:
        """A WebSocket under a rule that needs an API key: without it 401 in the one
        error shape over HTTP/1.1 and HTTP/2, and the Master API is never connected to;
        with it the session opens."""
        import hashlib

        key = "ws-key-0123"
        digest = hashlib.sha256(key.encode()).hexdigest()
        rules = (
            f"auth:\n  api_keys: [{{name: app, sha256: {digest}}}]\n"
            "access:\n  default: [anyone]\n  rules:\n"
            "    - {prefix: /api/ws, allow: [key:app]}\n"
        )
        connections: list[object] = []

        class Counting(Protocol):
            def connectionMade(self) -> None:
                connections.append(self)

        counting = Factory.forProtocol(Counting)
        counting.noisy = False
        port = global_reactor.listenTCP(0, counting, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        gw = self.start(port.getHost().port, extra=rules)

        def http1(gw: RunningGateway = gw) -> tuple[int, str, str]:
            try:
                with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                                open_timeout=10):
                    return 101, "", ""
            except websockets.exceptions.InvalidStatus as e:
                body = json.loads(e.response.body or b"{}")
                return (int(e.response.status_code), body.get("message", ""),
                        e.response.headers.get("www-authenticate", ""))

        status, message, challenge = yield deferToThread(http1)
        self.assertEqual((status, message), (401, "missing credentials"))
        self.assertIn("ApiKey", challenge)
        result = yield deferToThread(h2_websocket, gw, "/api/ws/echo")
        result[0].close()
        self.assertEqual(result[4], 401)
        self.assertEqual(connections, [])

        echo = self.start(listen_echo(self), extra=rules)

        def allowed(gw: RunningGateway = echo) -> str:
            with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                            additional_headers={"x-api-key": key}, open_timeout=10) as ws:
                ws.send("let in")
                return str(ws.recv(10))

        self.assertEqual((yield deferToThread(allowed)), "let in")

    @inlineCallbacks
    def test_upstream_refusal_and_upstream_down(self) -> Any:
        """The Master API's own refusal (404) is passed on; a Master API that is down
        is a 502."""
        gw = self.start(listen_echo(self))

        def refused(url: str, gw: RunningGateway = gw) -> int:
            try:
                with ws_connect(url, ssl=self.ws_tls(gw), open_timeout=10):
                    return 101
            except websockets.exceptions.InvalidStatus as e:
                return int(e.response.status_code)

        self.assertEqual((yield deferToThread(refused, self.ws_url(gw, "/api/ws/nope"))), 404)
        down = self.start(free_port())
        self.assertEqual((yield deferToThread(refused, self.ws_url(down), down)), 502)

    @inlineCallbacks
    def test_sessions_spread_over_the_master_api_hosts(self) -> Any:
        """With several ``master_api.http`` hosts each session goes to the host the
        /api balancer picks (round robin here), and a host that is down counts as a
        failure there while the next session goes to a live one."""
        events = self.access_events()
        first, second, dead = listen_echo(self), listen_echo(self), free_port()
        hosts = ", ".join(f"http://127.0.0.1:{p}" for p in (first, second, dead))
        gw = start_gateway(self, gateway_config(api=f"[{hosts}]\n  balance: round_robin"))

        def session(gw: RunningGateway = gw) -> str:
            try:
                with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                                open_timeout=10) as ws:
                    ws.send("x")
                    return str(ws.recv(10))
            except websockets.exceptions.InvalidStatus as e:
                return str(e.response.status_code)

        answers = []
        for _ in range(6):
            answers.append((yield deferToThread(session)))
        yield wait_until(
            lambda: len([e for e in events if e.get("path") == "/api/ws/echo"]) >= 6
        )
        used = [e.get("upstream_host") for e in events if e.get("path") == "/api/ws/echo"]
        self.assertEqual(sorted(answers), ["502", "502", "x", "x", "x", "x"])
        self.assertEqual(
            sorted(used),
            sorted([f"127.0.0.1:{p}" for p in (first, second, dead)] * 2),
        )

    @inlineCallbacks
    def test_message_size_limit(self) -> Any:
        """A message over limits.max_request_body never reaches the Master API: the
        client gets Close 1009 and the session ends."""
        gw = self.start(listen_echo(self), "limits: {max_request_body: 1024}\n")

        def talk() -> tuple[str, int | None]:
            with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                            open_timeout=10) as ws:
                ws.send("small")
                small = ws.recv(10)
                ws.send("x" * 2000)
                try:
                    ws.recv(10)
                except websockets.exceptions.ConnectionClosed as e:
                    return str(small), e.rcvd.code if e.rcvd else None
            return str(small), None

        small, code = yield deferToThread(talk)
        self.assertEqual((small, code), ("small", CLOSE_MESSAGE_TOO_BIG))

    @inlineCallbacks
    def test_idle_timeout(self) -> Any:
        """A session with no bytes for limits.idle_timeout is closed with 1001."""
        gw = self.start(listen_echo(self), "limits: {idle_timeout: 0.5}\n")

        def talk() -> int | None:
            with ws_connect(self.ws_url(gw), ssl=self.ws_tls(gw),
                            open_timeout=10, ping_interval=None) as ws:
                try:
                    ws.recv(20)
                except websockets.exceptions.ConnectionClosed as e:
                    return e.rcvd.code if e.rcvd else None
            return None

        self.assertEqual((yield deferToThread(talk)), 1001)

    @inlineCallbacks
    def test_slow_reader_bounds_memory(self) -> Any:
        """A client that does not read: the gateway stops reading the upstream (its
        writes get paused) while most of the flood is still unsent; when the client
        reads, everything arrives."""
        flood = _FloodFactory(768)  # 48 MiB
        total = flood.total
        port = global_reactor.listenTCP(0, flood, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        gw = self.start(int(port.getHost().port))
        context = gw.ssl_context(["http/1.1"])

        def open_session() -> tuple[ssl.SSLSocket, bytes]:
            raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=20)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock = context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(
                b"GET /api/flood HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                b"sec-websocket-key: " + KEY + b"\r\n\r\n"
            )
            return sock, sock.recv(4096)

        sock, head = yield deferToThread(open_session)
        self.addCleanup(sock.close)
        # The upgrade request carried the forwarding headers of any /api request.
        request = flood.request.lower()
        self.assertIn(b"\r\nx-forwarded-proto: https\r\n", request)
        self.assertIn(b"\r\nx-forwarded-for: 127.0.0.1\r\n", request)
        self.assertIn(b"\r\nupgrade: websocket\r\n", request)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        # The client reads nothing now.  Wait until the upstream has been paused and
        # stays paused (its count of sent bytes stops moving).
        settled = threading.Event()
        last = [-1]

        def check() -> None:
            if flood.pauses and flood.sent == last[0]:
                settled.set()
                return
            last[0] = flood.sent
            global_reactor.callLater(0.2, check)  # type: ignore[attr-defined]

        check()
        yield deferToThread(settled.wait, 30)
        self.assertTrue(settled.is_set())
        held = flood.sent
        self.assertLess(held, 16 * 1024 * 1024)  # of 48 MiB: the rest was never read

        def drain() -> int:
            received = len(head) - head.index(b"\r\n\r\n") - 4
            while received < total:
                chunk = sock.recv(1024 * 1024)
                if not chunk:
                    break
                received += len(chunk)
            return received

        received = yield deferToThread(drain)
        self.assertEqual(received, total)
        self.assertGreater(flood.sent, held)

    @inlineCallbacks
    def test_slow_upstream_holds_the_client_back(self) -> Any:
        """An upstream that does not read: the client's writes stop being taken (the
        gateway stopped reading it) long before 48 MiB; once the upstream reads,
        every byte the client sent arrives."""
        sink = _SinkFactory()
        port = global_reactor.listenTCP(0, sink, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        gw = self.start(int(port.getHost().port))
        context = gw.ssl_context(["http/1.1"])
        chunk = frame(b"u" * (64 * 1024 - 8))
        limit = 48 * 1024 * 1024

        def send_until_blocked() -> tuple[ssl.SSLSocket, int]:
            raw = socket.create_connection(("127.0.0.1", gw.tls_port), timeout=20)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            sock = context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(
                b"GET /api/sink HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
                b"sec-websocket-key: " + KEY + b"\r\n\r\n"
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
            sock.settimeout(3)  # no progress for this long: the gateway holds us back
            sent = 0
            try:
                while sent < limit:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except TimeoutError:
                pass
            return sock, sent

        sock, sent = yield deferToThread(send_until_blocked)
        self.addCleanup(sock.close)
        self.assertLess(sent, 16 * 1024 * 1024)
        assert sink.connection is not None and sink.connection.transport is not None
        sink.connection.transport.resumeProducing()
        yield wait_until(lambda: sink.received >= sent)
        # Every whole chunk arrived; of the one cut by the timeout, at most a part.
        self.assertGreaterEqual(sink.received, sent)
        self.assertLess(sink.received, sent + len(chunk))
