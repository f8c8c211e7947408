# mypy: disable-error-code="no-untyped-call"
"""End-to-end tests for the /api reverse proxy (api.target + upstream.httppool + upstream.h1client).

A real ``twisted.web.server.Site`` (and a few raw TCP servers for what Site cannot
send) listens on 127.0.0.1 port 0; :class:`ApiProxy` is driven directly with
``make_head`` and ``RecordingWriter``, so no downstream protocol is involved.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, ssl, task
from twisted.internet import reactor as global_reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from eventgw.api.target import ApiProxy
from eventgw.config import ApiUpstream, Limits
from eventgw.errors import ConfigError
from eventgw.upstream.httppool import UpstreamPool
from tests.support import RecordingWriter, make_head

Headers = list[tuple[bytes, bytes]]
MiB = 1024 * 1024
# The real reactor, for real sockets; typed loosely (it provides many interfaces).
reactor: Any = global_reactor
WAIT = 30.0  # seconds any single wait may take before the test fails (only when broken)


# --- the backend -----------------------------------------------------------------------


class Echo(resource.Resource):
    """Describes the request it got as JSON."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        payload = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": [
                [name.decode().lower(), value.decode()]
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ],
            "body": body[:200].decode("latin-1"),
            "body_len": len(body),
            "body_sha": hashlib.sha256(body).hexdigest(),
            "channel": id(request.channel),
        }
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-backend", b"echo")
        return json.dumps(payload).encode()


class Big(resource.Resource):
    """10 MiB of a repeating pattern, with a content-length."""

    isLeaf = True
    size = 10 * MiB

    def render_GET(self, request: server.Request) -> bytes | int:
        request.setHeader(b"content-length", b"%d" % self.size)
        block = bytes(range(256)) * 256  # 64 KiB
        for _ in range(self.size // len(block)):
            request.write(block)
        request.finish()
        return server.NOT_DONE_YET


class Status(resource.Resource):
    """Answers with the status code named in the path (204, 304...)."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        code = int(request.postpath[0]) if request.postpath else 200
        request.setResponseCode(code)
        return b""


class Hanging(resource.Resource):
    """Never answers (``/slow``), or sends a first chunk and then stalls (``/drip``)."""

    isLeaf = True

    def __init__(self, first_chunk: bytes = b"") -> None:
        super().__init__()
        self.first_chunk = first_chunk
        self.lost: list[defer.Deferred[None]] = []

    def render(self, request: server.Request) -> bytes | int:
        if self.first_chunk:
            request.write(self.first_chunk)
        finished: defer.Deferred[None] = request.notifyFinish()
        lost: defer.Deferred[None] = defer.Deferred()
        finished.addErrback(lambda _: lost.callback(None))
        self.lost.append(lost)
        return server.NOT_DONE_YET


class CountingSite(server.Site):
    """A Site that counts the connections it accepted."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


def backend_site() -> tuple[CountingSite, dict[str, Any]]:
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"api", api)
    parts: dict[str, Any] = {
        "echo": Echo(),
        "big": Big(),
        "status": Status(),
        "slow": Hanging(),
        "drip": Hanging(b"first part;"),
    }
    for name, child in parts.items():
        api.putChild(name.encode(), child)
    site = CountingSite(root)
    site.displayTracebacks = False
    return site, parts


CLOSE = b"<close>"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class ScriptedServer(protocol.Protocol):
    """Reads request heads and answers each with the next scripted reply.

    A reply of ``None`` closes the connection without answering; a reply ending in
    ``CLOSE`` is sent (without the marker) and then the connection is closed.  The
    script is per connection: each new connection starts at the top.
    """

    def __init__(self, script: list[bytes | None], received: list[bytes]) -> None:
        self.script = list(script)
        self.received = received
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.received.append(head)
            reply = self.script.pop(0) if self.script else None
            if reply is None:
                self.transport.loseConnection()
                return
            if reply.endswith(CLOSE):
                self.transport.write(reply[: -len(CLOSE)])
                self.transport.loseConnection()
                return
            self.transport.write(reply)


class ScriptedFactory(protocol.Factory):
    def __init__(self, script: list[bytes | None]) -> None:
        self.script = script
        self.received: list[bytes] = []
        self.connections = 0

    def buildProtocol(self, addr: Any) -> ScriptedServer:
        self.connections += 1
        return ScriptedServer(self.script, self.received)


# --- helpers -----------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> defer.Deferred[None]:
    """Poll ``predicate`` every few milliseconds; fail after ``timeout`` seconds."""
    done: defer.Deferred[None] = defer.Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        if predicate():
            poll.stop()
            done.callback(None)
        elif reactor.seconds() > deadline:
            poll.stop()
            done.errback(AssertionError(f"timed out waiting for {predicate}"))

    poll = task.LoopingCall(check)
    poll.start(0.005)
    return done


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def finished(writer: RecordingWriter) -> Callable[[], bool]:
    return lambda: writer.ended or writer.aborted is not None


def upstream_for(port: int, **changes: Any) -> ApiUpstream:
    scheme = changes.pop("scheme", "http")
    return ApiUpstream(
        scheme=scheme, host="127.0.0.1", port=port, url=f"{scheme}://127.0.0.1:{port}", **changes
    )


def json_body(writer: RecordingWriter) -> Any:
    return json.loads(bytes(writer.body))


def make_certificate(directory: str) -> tuple[str, bytes]:
    """A self-signed certificate for 127.0.0.1; returns (CA file path, cert+key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    import os

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "ca.pem")
    with open(path, "wb") as f:
        f.write(cert_pem)
    return path, cert_pem + key_pem


# --- the tests -----------------------------------------------------------------------


class ProxyTestCase(TestCase):
    """Starts the backend Site; ``proxy()`` builds an ApiProxy that is closed at the end."""

    timeout = 60

    def setUp(self) -> None:
        self.site, self.parts = backend_site()
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def proxy(self, upstream: ApiUpstream | None = None, **limits: Any) -> ApiProxy:
        upstream = upstream or upstream_for(self.port.getHost().port)
        api = ApiProxy(upstream, Limits(**limits), reactor=reactor)
        self.addCleanup(api.close)
        return api

    def listen(self, factory: protocol.Factory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    async def exchange(
        self,
        api: ApiProxy,
        method: bytes = b"GET",
        target: bytes = b"/api/echo",
        headers: Headers | None = None,
        body: bytes | None = None,
        **head_args: Any,
    ) -> RecordingWriter:
        """Run one exchange to its end; the body (if any) is sent with its length."""
        if body is not None:
            head_args.setdefault("content_length", len(body))
            head_args.setdefault("body_expected", True)
        head = make_head(method, target, headers, **head_args)
        writer = RecordingWriter()
        handler = api.start_exchange(head, writer)
        if body is not None:
            if body:
                handler.body_received(body)
            handler.body_ended([])
        await wait_for(finished(writer))
        return writer


class ForwardingTests(ProxyTestCase):
    async def test_method_path_query_headers_body(self) -> None:
        """Method, path and query (as sent), end-to-end headers and body reach the
        upstream; the response's status, headers and body come back."""
        api = self.proxy()
        writer = await self.exchange(
            api,
            b"PATCH",
            b"/api/echo/a%2Fb/c?x=1&y=%20z&x=2",
            [(b"x-custom", b"v1"), (b"traceparent", b"00-abc-def-01"),
             (b"x-request-id", b"rid-7"), (b"content-type", b"text/plain")],
            body=b"hello upstream",
        )
        self.assertEqual(writer.status, 200)
        self.assertTrue(writer.ended)
        self.assertEqual(writer.header(b"x-backend"), b"echo")
        seen = json_body(writer)
        self.assertEqual(seen["method"], "PATCH")
        self.assertEqual(seen["uri"], "/api/echo/a%2Fb/c?x=1&y=%20z&x=2")
        self.assertEqual(seen["body"], "hello upstream")
        headers = dict(seen["headers"])
        self.assertEqual(headers["x-custom"], "v1")
        self.assertEqual(headers["traceparent"], "00-abc-def-01")
        self.assertEqual(headers["x-request-id"], "rid-7")
        self.assertEqual(headers["content-length"], "14")
        self.assertEqual(headers["host"], f"127.0.0.1:{self.port.getHost().port}")

    async def test_hop_by_hop_dropped_forwarded_added(self) -> None:
        """Hop-by-hop headers (and those Connection names) stay behind; X-Forwarded-*
        are added; Expect is not forwarded."""
        api = self.proxy()
        writer = await self.exchange(
            api,
            headers=[
                (b"connection", b"keep-alive, x-secret"),
                (b"x-secret", b"s"),
                (b"keep-alive", b"timeout=5"),
                (b"te", b"trailers"),
                (b"upgrade", b"websocket"),
                (b"proxy-authorization", b"Basic eA=="),
                (b"expect", b"100-continue"),
                (b"x-forwarded-for", b"192.0.2.1"),
                (b"host", b"gateway.test"),
            ],
            peer="198.51.100.7",
        )
        headers = dict(json_body(writer)["headers"])
        for name in ("x-secret", "keep-alive", "te", "upgrade", "proxy-authorization",
                     "expect"):
            self.assertNotIn(name, headers)
        self.assertEqual(headers["x-forwarded-for"], "192.0.2.1, 198.51.100.7")
        self.assertEqual(headers["x-forwarded-host"], "gateway.test")
        self.assertEqual(headers["x-forwarded-proto"], "https")
        self.assertIsNone(writer.header(b"connection"))

    async def test_hostname_upstream(self) -> None:
        """An upstream given by host name is resolved (HostnameEndpoint) and addressed
        by that name in Host."""
        port = self.port.getHost().port
        upstream = ApiUpstream(
            scheme="http", host="localhost", port=port, url=f"http://localhost:{port}"
        )
        writer = await self.exchange(self.proxy(upstream))
        self.assertEqual(writer.status, 200)
        self.assertEqual(dict(json_body(writer)["headers"])["host"], f"localhost:{port}")

    async def test_log_fields(self) -> None:
        """The exchange is tagged with route=api and the upstream URL for the access log."""
        api = self.proxy()
        head = make_head(target=b"/api/echo")
        writer = RecordingWriter()
        api.start_exchange(head, writer)
        await wait_for(finished(writer))
        self.assertEqual(head.log_fields["route"], "api")
        self.assertEqual(head.log_fields["upstream"], api.upstream.url)

    async def test_keep_alive_reuse(self) -> None:
        """Two sequential requests use one pooled upstream connection."""
        api = self.proxy()
        first = await self.exchange(api)
        second = await self.exchange(api)
        self.assertEqual(json_body(first)["channel"], json_body(second)["channel"])
        self.assertEqual(self.site.connections, 1)
        self.assertEqual(api.pool.connections_made, 1)
        self.assertEqual(api.pool.idle_count, 1)

    async def test_head_204_304(self) -> None:
        """HEAD, 204 and 304 responses end with their head and keep the connection."""
        api = self.proxy()
        writer = await self.exchange(api, b"HEAD")
        self.assertEqual(writer.status, 200)
        self.assertTrue(writer.head_ended)
        self.assertEqual(writer.body, b"")
        self.assertIsNotNone(writer.header(b"content-length"))
        for code in (204, 304):
            writer = await self.exchange(api, target=b"/api/status/%d" % code)
            self.assertEqual(writer.status, code)
            self.assertTrue(writer.head_ended)
            self.assertEqual(writer.body, b"")
        self.assertEqual(self.site.connections, 1)

    async def test_http2_style_unknown_length_body_is_chunked(self) -> None:
        """An HTTP/2 request without content-length, whose body arrives after the
        connection is ready, goes upstream chunked and arrives intact."""
        api = self.proxy()
        await self.exchange(api)  # warm the pool: the next exchange connects at once
        head = make_head(b"POST", b"/api/echo", [(b"content-type", b"text/plain")],
                         protocol="HTTP/2", content_length=None, body_expected=True)
        writer = RecordingWriter()
        handler = api.start_exchange(head, writer)
        handler.body_received(b"part one, ")
        await sleep(0.01)
        handler.body_received(b"part two")
        handler.body_ended([])
        await wait_for(finished(writer))
        seen = json_body(writer)
        self.assertEqual(seen["body"], "part one, part two")
        headers = dict(seen["headers"])
        self.assertEqual(headers.get("transfer-encoding"), "chunked")
        self.assertNotIn("content-length", headers)

    async def test_http2_style_complete_body_gets_length(self) -> None:
        """An HTTP/2 body that is complete before the connection is ready is sent with
        a content-length."""
        api = self.proxy()
        writer = await self.exchange(
            api, b"POST", body=b"all at once", protocol="HTTP/2", content_length=None
        )
        headers = dict(json_body(writer)["headers"])
        self.assertEqual(headers.get("content-length"), "11")
        self.assertEqual(json_body(writer)["body"], "all at once")


class ScriptedUpstreamTests(ProxyTestCase):
    def scripted(self, script: list[bytes | None]) -> tuple[ApiProxy, ScriptedFactory]:
        factory = ScriptedFactory(script)
        port = self.listen(factory)
        return self.proxy(upstream_for(port)), factory

    async def test_chunked_response_with_trailers(self) -> None:
        """A chunked response is streamed back with its trailers (hop-by-hop and
        framing fields removed from them)."""
        api, _ = self.scripted([
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc\r\ncontent-length: 3\r\n\r\n"
        ])
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 200)
        self.assertEqual(bytes(writer.body), b"hello world")
        self.assertEqual(writer.trailers, [(b"x-checksum", b"abc")])
        self.assertIsNone(writer.header(b"transfer-encoding"))
        self.assertIsNone(writer.header(b"trailer"))

    async def test_garbage_status_line_is_502(self) -> None:
        """An invalid status line gets the client a JSON 502, never the garbage."""
        api, _ = self.scripted([b"garbage garbage\r\n\r\n"])
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 502)
        self.assertNotIn(b"garbage", bytes(writer.body))
        self.assertEqual(json_body(writer)["code"], 14)
        self.assertEqual(api.pool.open_count, 0)

    async def test_smuggling_response_is_502(self) -> None:
        """A response with content-length and transfer-encoding is refused with 502."""
        api, _ = self.scripted([
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n"
            b"0\r\n\r\n"
        ])
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 502)

    async def test_stale_connection_retried_once(self) -> None:
        """A GET that meets a kept-alive connection closing under it is retried once on
        a fresh connection."""
        # Each connection answers its first request, then closes on the second.
        api, factory = self.scripted([OK, None])
        first = await self.exchange(api)
        self.assertEqual(first.status, 200)
        second = await self.exchange(api)
        self.assertEqual((second.status, bytes(second.body)), (200, b"ok"))
        self.assertEqual(factory.connections, 2)
        self.assertEqual(len(factory.received), 3)

    async def test_non_idempotent_not_retried(self) -> None:
        """A POST on a connection that closes without an answer gets 502, not a retry."""
        api, factory = self.scripted([OK, None])
        await self.exchange(api)
        second = await self.exchange(api, b"POST", body=b"")
        self.assertEqual(second.status, 502)
        self.assertEqual(factory.connections, 1)

    async def test_early_response_before_body_end(self) -> None:
        """An upstream that answers before the request body is complete has its answer
        forwarded; the rest of the body is dropped and the connection is not reused."""
        api, _ = self.scripted([
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope"
        ])
        head = make_head(b"POST", content_length=1000, body_expected=True)
        writer = RecordingWriter()
        handler = api.start_exchange(head, writer)
        handler.body_received(b"x" * 100)
        await wait_for(finished(writer))
        self.assertEqual((writer.status, bytes(writer.body)), (401, b"nope"))
        handler.body_received(b"x" * 900)
        handler.body_ended([])
        await wait_for(lambda: api.pool.open_count == 0)
        self.assertEqual(api.pool.idle_count, 0)

    async def test_close_delimited_response(self) -> None:
        """A response without framing runs until the upstream closes; it is streamed
        back complete and the connection is not pooled."""
        api, _ = self.scripted([b"HTTP/1.1 200 OK\r\n\r\nuntil the end" + CLOSE])
        writer = await self.exchange(api)
        self.assertEqual((writer.status, bytes(writer.body)), (200, b"until the end"))
        self.assertTrue(writer.ended)
        self.assertEqual(api.pool.idle_count, 0)

    async def test_idle_close_detected(self) -> None:
        """A pooled connection the upstream closes while idle leaves the pool at once
        and is never handed out."""
        api, factory = self.scripted([OK + CLOSE])
        await self.exchange(api)
        await wait_for(lambda: api.pool.open_count == 0)
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 200)
        self.assertEqual((factory.connections, len(factory.received)), (2, 2))

    async def test_idle_timeout(self) -> None:
        """Idle connections are closed after the idle timeout."""
        factory = ScriptedFactory([OK])
        upstream = upstream_for(self.listen(factory))
        pool = UpstreamPool(upstream, reactor=reactor, idle_timeout=0.2)
        api = ApiProxy(upstream, Limits(), reactor=reactor, pool=pool)
        self.addCleanup(api.close)
        await self.exchange(api)
        self.assertEqual(pool.idle_count, 1)
        await wait_for(lambda: pool.open_count == 0)

    async def test_requests_wait_for_a_connection(self) -> None:
        """With max_connections=1, concurrent requests queue and share the one
        connection."""
        factory = ScriptedFactory([OK, OK, OK])
        api = self.proxy(upstream_for(self.listen(factory), max_connections=1))
        writers = [RecordingWriter() for _ in range(3)]
        for writer in writers:
            api.start_exchange(make_head(), writer)
        for writer in writers:
            await wait_for(finished(writer))
            self.assertEqual((writer.status, bytes(writer.body)), (200, b"ok"))
        self.assertEqual(factory.connections, 1)

    async def test_connection_close_response_not_pooled(self) -> None:
        """A response with Connection: close is not reused."""
        api, factory = self.scripted([
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
        ])
        await self.exchange(api)
        self.assertEqual(api.pool.idle_count, 0)
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 200)
        self.assertEqual(factory.connections, 2)


class FailureTests(ProxyTestCase):
    async def test_refused_is_502(self) -> None:
        """A port nobody listens on gives a JSON 502 (gRPC code UNAVAILABLE)."""
        closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        number = closed.getHost().port
        await closed.stopListening()
        api = self.proxy(upstream_for(number))
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 502)
        self.assertEqual(writer.header(b"content-type"), b"application/json")
        self.assertEqual(json_body(writer)["code"], 14)

    async def test_refused_answers_every_waiter(self) -> None:
        """Queued requests to a refused port each get their 502 (none is left hanging)."""
        closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        number = closed.getHost().port
        await closed.stopListening()
        api = self.proxy(upstream_for(number, max_connections=1))
        writers = [RecordingWriter() for _ in range(3)]
        for writer in writers:
            api.start_exchange(make_head(), writer)
        for writer in writers:
            await wait_for(finished(writer))
            self.assertEqual(writer.status, 502)

    async def test_slow_upstream_is_504(self) -> None:
        """No response head within response_timeout gives a JSON 504."""
        api = self.proxy(upstream_for(self.port.getHost().port, response_timeout=0.3))
        writer = await self.exchange(api, target=b"/api/slow")
        self.assertEqual(writer.status, 504)
        self.assertEqual(json_body(writer)["code"], 4)
        lost = self.parts["slow"].lost
        await wait_for(lambda: bool(lost) and lost[0].called)
        self.assertEqual(api.pool.open_count, 0)

    async def test_stall_mid_response_aborts(self) -> None:
        """An upstream that stalls after the head went out gets the response aborted."""
        api = self.proxy(upstream_for(self.port.getHost().port, response_timeout=0.3))
        writer = await self.exchange(api, target=b"/api/drip")
        self.assertEqual(writer.status, 200)
        self.assertIsNotNone(writer.aborted)
        self.assertFalse(writer.ended)

    async def test_declared_body_too_large_is_413(self) -> None:
        """A declared content-length over the limit gets 413 without contacting the
        upstream."""
        api = self.proxy(max_request_body=1000)
        head = make_head(b"POST", content_length=1001, body_expected=True)
        writer = RecordingWriter()
        api.start_exchange(head, writer)
        self.assertEqual(writer.status, 413)
        self.assertEqual(json_body(writer)["code"], 8)
        self.assertEqual(api.pool.open_count, 0)
        self.assertEqual(self.site.connections, 0)

    async def test_streamed_body_too_large_is_413(self) -> None:
        """A body of unknown length that passes the limit gets 413 and the upstream
        connection is dropped."""
        api = self.proxy(max_request_body=1000)
        head = make_head(b"POST", content_length=None, body_expected=True)
        writer = RecordingWriter()
        handler = api.start_exchange(head, writer)
        handler.body_received(b"x" * 600)
        await sleep(0.05)
        handler.body_received(b"x" * 600)
        self.assertEqual(writer.status, 413)
        self.assertTrue(writer.ended)
        handler.body_ended([])
        await wait_for(lambda: api.pool.open_count == 0)

    async def test_client_gone_mid_response_closes_upstream(self) -> None:
        """connection_lost while the response streams closes the upstream connection
        instead of returning it to the pool."""
        api = self.proxy()
        writer = RecordingWriter()
        handler = api.start_exchange(make_head(target=b"/api/drip"), writer)
        await wait_for(lambda: len(writer.body) > 0)
        handler.connection_lost("client went away")
        lost = self.parts["drip"].lost
        await wait_for(lambda: bool(lost) and lost[0].called)
        self.assertEqual(api.pool.open_count, 0)
        self.assertEqual(api.pool.idle_count, 0)


class StreamingTests(ProxyTestCase):
    async def test_large_download_with_slow_client(self) -> None:
        """A 10 MiB response stops flowing while the client is paused and arrives
        complete once it resumes."""
        api = self.proxy()
        writer = RecordingWriter()
        api.start_exchange(make_head(target=b"/api/big"), writer)
        await wait_for(lambda: writer.producer is not None)
        assert writer.producer is not None
        writer.producer.pause_producing()
        await sleep(0.1)
        held = len(writer.body)
        await sleep(0.3)
        # Only what was already read from the socket may still trickle in.
        self.assertLess(len(writer.body) - held, 1 * MiB)
        self.assertLess(len(writer.body), 10 * MiB)
        writer.producer.resume_producing()
        await wait_for(finished(writer))
        self.assertTrue(writer.ended)
        self.assertEqual(len(writer.body), 10 * MiB)
        expected = hashlib.sha256(bytes(range(256)) * 256 * 160).hexdigest()
        self.assertEqual(hashlib.sha256(writer.body).hexdigest(), expected)

    async def test_paused_client_does_not_time_out(self) -> None:
        """While the client holds the response back, the response timeout stands still."""
        api = self.proxy(upstream_for(self.port.getHost().port, response_timeout=0.2))
        writer = RecordingWriter()
        api.start_exchange(make_head(target=b"/api/big"), writer)
        await wait_for(lambda: writer.producer is not None)
        assert writer.producer is not None
        writer.producer.pause_producing()
        await sleep(0.6)
        self.assertIsNone(writer.aborted)
        writer.producer.resume_producing()
        await wait_for(finished(writer))
        self.assertEqual((writer.aborted, len(writer.body)), (None, 10 * MiB))

    async def test_large_upload_with_back_pressure(self) -> None:
        """A 10 MiB upload is fed only while the proxy lets it, pauses at least once,
        and arrives intact."""
        api = self.proxy()
        await self.exchange(api)  # a warm connection: the body streams at once
        size = 10 * MiB
        block = bytes(range(256)) * 256
        head = make_head(b"PUT", b"/api/echo", content_length=size, body_expected=True)
        writer = RecordingWriter()
        handler = api.start_exchange(head, writer)
        sent = 0
        pauses = 0
        while sent < size:
            if writer.request_paused:
                pauses += 1
                await wait_for(lambda: not writer.request_paused)
                continue
            handler.body_received(block)
            sent += len(block)
        handler.body_ended([])
        await wait_for(finished(writer))
        self.assertGreater(pauses, 0)
        seen = json_body(writer)
        self.assertEqual(seen["body_len"], size)
        self.assertEqual(seen["body_sha"], hashlib.sha256(block * (size // len(block))).hexdigest())


class TlsUpstreamTests(ProxyTestCase):
    def tls_backend(self) -> tuple[int, str]:
        ca_file, pem = make_certificate(self.mktemp())
        options = ssl.PrivateCertificate.loadPEM(pem).options()
        port = reactor.listenSSL(0, self.site, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port), ca_file

    async def test_https_upstream_with_ca_file(self) -> None:
        """An https:// upstream whose certificate is signed by ca_file is verified and
        used, with keep-alive."""
        number, ca_file = self.tls_backend()
        api = self.proxy(upstream_for(number, scheme="https", ca_file=ca_file))
        writer = await self.exchange(api, b"POST", body=b"over tls")
        self.assertEqual(writer.status, 200)
        self.assertEqual(json_body(writer)["body"], "over tls")
        again = await self.exchange(api)
        self.assertEqual(again.status, 200)
        self.assertEqual(api.pool.connections_made, 1)

    async def test_https_upstream_untrusted_is_502(self) -> None:
        """Without the CA the certificate does not verify: 502, nothing forwarded."""
        number, _ = self.tls_backend()
        api = self.proxy(upstream_for(number, scheme="https"))
        writer = await self.exchange(api)
        self.assertEqual(writer.status, 502)


class ConfigurationTests(SynchronousTestCase):
    def test_unreadable_ca_file(self) -> None:
        """A ca_file that cannot be read is a ConfigError naming master_api.ca_file."""
        upstream = upstream_for(443, scheme="https", ca_file="/nonexistent/ca.pem")
        with self.assertRaises(ConfigError) as caught:
            UpstreamPool(upstream, reactor=MemoryReactorClock())
        self.assertEqual(caught.exception.key, "master_api.ca_file")

    def test_host_header_default_port_omitted(self) -> None:
        """Host is the upstream's authority, without the scheme's default port."""
        clock = MemoryReactorClock()
        for url_port, scheme, expected in [
            (80, "http", b"127.0.0.1"),
            (8080, "http", b"127.0.0.1:8080"),
        ]:
            api = ApiProxy(upstream_for(url_port, scheme=scheme), Limits(), reactor=clock)
            self.assertEqual(api.host_header, expected)
        v6 = ApiUpstream(scheme="http", host="::1", port=8080, url="http://[::1]:8080")
        self.assertEqual(ApiProxy(v6, Limits(), reactor=clock).host_header, b"[::1]:8080")


class ConnectTimeoutTests(SynchronousTestCase):
    def test_connect_timeout_is_504(self) -> None:
        """A connect that does not complete within connect_timeout is a JSON 504."""
        clock = MemoryReactorClock()
        upstream = upstream_for(9, connect_timeout=5.0)
        api = ApiProxy(upstream, Limits(), reactor=clock)
        writer = RecordingWriter()
        api.start_exchange(make_head(), writer)
        self.assertEqual(len(clock.tcpClients), 1)
        clock.advance(4.9)
        self.assertIsNone(writer.status)
        clock.advance(0.2)
        self.assertEqual(writer.status, 504)
        self.assertEqual(json.loads(bytes(writer.body))["code"], 4)
        self.assertEqual(api.pool.open_count, 0)

    def test_queue_bounded(self) -> None:
        """Beyond max_connections requests wait; beyond the queue they get 503."""
        clock = MemoryReactorClock()
        pool = UpstreamPool(upstream_for(9, max_connections=1), reactor=clock, max_waiting=2)
        first = pool.acquire()
        second = pool.acquire()
        third = pool.acquire()
        self.assertEqual(len(clock.tcpClients), 1)
        self.assertEqual(self.failureResultOf(third).value.http_status, 503)
        second.cancel()
        self.failureResultOf(second, defer.CancelledError)
        pool.close()
        self.failureResultOf(first)
