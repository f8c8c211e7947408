"""End to end over real sockets: TLS with ALPN, HTTP/1.1 and HTTP/2, h2c, the /api proxy.

The gateway service runs in the test's reactor (tests/rig.py); the Master API is a real
twisted.web Site; clients are httpx (HTTP/1.1 and HTTP/2 over TLS, h2c) and raw
sockets for malformed input, run in threads.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventgw.downstream.sniff import PREFACE
from tests.rig import (
    RunningGateway,
    free_port,
    gateway_config,
    h2_stream_frames,
    listen_site,
    raw_exchange,
    start_gateway,
)

TEN_MIB = 10 * 1024 * 1024


class Backend(resource.Resource):
    """A Master API that describes what it received, plus slow and large answers."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, Any]] = []

    def render(self, request: server.Request) -> Any:
        body = request.content.read()  # type: ignore[union-attr]
        record = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): [v.decode() for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()},
            "body_length": len(body),
        }
        self.seen.append(record)
        if request.path == b"/api/slow":
            d = deferLater(reactor, 5.0, lambda: None)
            d.addCallback(lambda _: (request.write(b"late"), request.finish()))
            d.addErrback(lambda _: None)
            request.notifyFinish().addErrback(lambda _: d.cancel())
            return server.NOT_DONE_YET
        if request.path == b"/api/big":
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"b" * TEN_MIB
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", b"yes")
        return json.dumps(record).encode()


class GatewayCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.backend = Backend()
        port = listen_site(self, self.backend)
        self.gw: RunningGateway = start_gateway(
            self, gateway_config(api=f"http://127.0.0.1:{port}", response_timeout=1.0)
        )

    def client(self, http2: bool) -> httpx.Client:
        client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20.0)
        self.addCleanup(client.close)
        return client


class TLSAlpnTests(GatewayCase):
    @inlineCallbacks
    def test_alpn_negotiation(self) -> Any:
        """The TLS port negotiates h2 when offered, http/1.1 otherwise, and TLS >= 1.2."""

        def negotiate(protocols: list[str]) -> tuple[str | None, str | None]:
            context = self.gw.ssl_context(protocols)
            with socket.create_connection(("127.0.0.1", self.gw.tls_port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    return tls.selected_alpn_protocol(), tls.version()

        h2_alpn, version = yield deferToThread(negotiate, ["h2", "http/1.1"])
        self.assertEqual(h2_alpn, "h2")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        h1_alpn, _ = yield deferToThread(negotiate, ["http/1.1"])
        self.assertEqual(h1_alpn, "http/1.1")

    @inlineCallbacks
    def test_h2_preface_without_alpn(self) -> Any:
        """A TLS client that offers no ALPN and sends the HTTP/2 preface is answered
        with a 400 saying HTTP/2 over TLS needs ALPN h2."""

        def no_alpn() -> bytes:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            with socket.create_connection(("127.0.0.1", self.gw.tls_port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                    data = b""
                    while b"}" not in data:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    return data

        answer = yield deferToThread(no_alpn)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"needs ALPN h2", answer)

    @inlineCallbacks
    def test_tls_1_1_refused(self) -> Any:
        """A client limited to TLS 1.1 cannot connect."""

        def old_client() -> str:
            context = self.gw.ssl_context()
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
            try:
                with socket.create_connection(("127.0.0.1", self.gw.tls_port), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost"):
                        return "connected"
            except (ssl.SSLError, OSError) as e:
                return type(e).__name__

        self.assertNotEqual((yield deferToThread(old_client)), "connected")


class ApiProxyEndToEndTests(GatewayCase):
    @inlineCallbacks
    def test_http1_and_http2_over_tls(self) -> Any:
        """GET /api with query over HTTP/1.1 and HTTP/2 reaches the backend, forwarded."""
        for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
            response = yield deferToThread(
                self.client(http2).get, f"{self.gw.https}/api/things?x=1&y=%20",
                headers={"x-custom": "kept", "connection": "keep-alive"},
            )
            self.assertEqual(response.http_version, version)
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.headers["x-backend"], "yes")
            seen = response.json()
            self.assertEqual(seen["uri"], "/api/things?x=1&y=%20")
            self.assertEqual(seen["headers"]["x-custom"], ["kept"])
            self.assertEqual(seen["headers"]["x-forwarded-proto"], ["https"])
            self.assertEqual(seen["headers"]["x-forwarded-for"], ["127.0.0.1"])
            self.assertIn("x-forwarded-host", seen["headers"])

    @inlineCallbacks
    def test_cleartext_http1_and_h2c(self) -> Any:
        """The cleartext port serves HTTP/1.1 and h2c prior knowledge."""
        response = yield deferToThread(self.client(False).get, f"{self.gw.http}/api/a")
        self.assertEqual((response.http_version, response.status_code), ("HTTP/1.1", 200))
        self.assertEqual(response.json()["headers"]["x-forwarded-proto"], ["http"])

        def h2c() -> httpx.Response:
            with httpx.Client(http1=False, http2=True, timeout=20) as client:
                return client.get(f"{self.gw.http}/api/b")

        response = yield deferToThread(h2c)
        self.assertEqual((response.http_version, response.status_code), ("HTTP/2", 200))

    @inlineCallbacks
    def test_ten_mib_both_ways(self) -> Any:
        """A 10 MiB upload and a 10 MiB download pass over both protocols."""
        for http2 in (False, True):
            client = self.client(http2)
            response = yield deferToThread(
                client.post, f"{self.gw.https}/api/upload", content=b"u" * TEN_MIB
            )
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.json()["body_length"], TEN_MIB)
            response = yield deferToThread(client.get, f"{self.gw.https}/api/big")
            self.assertEqual(len(response.content), TEN_MIB)

    @inlineCallbacks
    def test_routes(self) -> Any:
        """Unknown paths are a JSON 404 over both protocols."""
        for http2 in (False, True):
            response = yield deferToThread(self.client(http2).get, f"{self.gw.https}/nowhere")
            self.assertEqual(response.status_code, 404)
            self.assertEqual(response.json()["code"], 5)
            self.assertIn("/nowhere", response.json()["message"])

    @inlineCallbacks
    def test_slow_upstream_is_504(self) -> Any:
        """An upstream slower than the response timeout gives 504 with a JSON body."""
        response = yield deferToThread(self.client(True).get, f"{self.gw.https}/api/slow")
        self.assertEqual(response.status_code, 504)
        self.assertEqual(response.json()["code"], 4)


class DownUpstreamTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_down_upstream_is_502(self) -> Any:
        """A Master API that refuses connections gives 502 with a JSON body."""
        gw = start_gateway(self, gateway_config(api=f"http://127.0.0.1:{free_port()}"))
        client = httpx.Client(verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(client.get, f"{gw.https}/api/x")
        self.assertEqual(response.status_code, 502)
        self.assertEqual(response.json()["code"], 14)


SMUGGLING = {
    "content-length with transfer-encoding": (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "duplicate content-length": (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    ),
    "signed content-length": b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\na",
    "obfuscated transfer-encoding": (
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "NUL in value": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n",
    "garbage": b"\x16\x03\x01\x00\xa5garbage\r\n\r\n",
    "space before colon": b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
}


class BadInputTests(GatewayCase):
    @inlineCallbacks
    def assertStillServing(self) -> Any:
        response = yield deferToThread(self.client(False).get, f"{self.gw.https}/api/ok")
        self.assertEqual(response.status_code, 200)

    @inlineCallbacks
    def test_smuggling_shapes_rejected(self) -> Any:
        """Each malformed framing gets 400, closes, reaches nobody; service goes on."""
        for name, request in SMUGGLING.items():
            before = len(self.backend.seen)
            answer = yield deferToThread(raw_exchange, self.gw.cleartext_port, request)
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (name, answer[:80]))
            self.assertEqual(len(self.backend.seen), before, name)
            yield self.assertStillServing()

    @inlineCallbacks
    def test_oversized_headers_431(self) -> Any:
        """A header block over the limit gets 431 over TLS HTTP/1.1."""
        request = b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
        answer = yield deferToThread(
            raw_exchange, self.gw.tls_port, request, context=self.gw.ssl_context(["http/1.1"])
        )
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:80])
        yield self.assertStillServing()

    @inlineCallbacks
    def test_http2_garbage_gets_goaway(self) -> Any:
        """Garbage after the h2c preface gets GOAWAY(PROTOCOL_ERROR) and a close."""

        def misbehave() -> list[Any]:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            with socket.create_connection(("127.0.0.1", self.gw.cleartext_port), timeout=10) as s:
                # A DATA frame on stream 0 is a connection error (RFC 9113 section 6.1).
                s.sendall(conn.data_to_send() + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00garb")
                events: list[Any] = []
                while True:
                    try:
                        data = s.recv(65536)
                    except (TimeoutError, ConnectionResetError):
                        break
                    if not data:
                        break
                    try:
                        events += conn.receive_data(data)
                    except Exception:
                        break
                return events

        events = yield deferToThread(misbehave)
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        self.assertEqual(len(goaways), 1, events)
        self.assertEqual(goaways[0].error_code, 1)  # PROTOCOL_ERROR
        yield self.assertStillServing()

    @inlineCallbacks
    def test_not_a_preface(self) -> Any:
        """A wrong preface-like opening on the TLS h2 port closes that connection only."""
        answer = yield deferToThread(
            raw_exchange, self.gw.tls_port, PREFACE[:-4] + b"XXXX" + b"\x00" * 20,
            context=self.gw.ssl_context(["h2"]),
        )
        self.assertNotIn(b"HTTP/1.1 200", answer)
        yield self.assertStillServing()


class TwoFrameResponseEndToEndTests(GatewayCase):
    """A small /api answer over HTTP/2 is two frames on the wire: HEADERS, then one
    DATA frame with END_STREAM (a raw h2 client over TLS counts them)."""

    @inlineCallbacks
    def test_api_answer_and_error_in_two_frames(self) -> Any:
        context = self.gw.ssl_context(["h2"])
        for path in (b"/api/small", b"/nowhere"):
            headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", path),
                       (b":authority", b"localhost")]
            frames = yield deferToThread(h2_stream_frames, self.gw.tls_port, context, headers)
            kinds = [(type(f).__name__, "END_STREAM" in f.flags) for f in frames]
            self.assertEqual(kinds, [("HeadersFrame", False), ("DataFrame", True)], path)
            self.assertGreater(len(frames[1].data), 0, path)
