"""What an operator sees of every exchange, through the real gateway service.

Request ids end to end (HTTP header upstream, gRPC metadata, every response, the access
log), ``Date`` and ``Server`` on every response, client-facing error texts that name no
upstream address, a 413 over HTTP/2 that clients read as a 413, plain HTTP sent to the
TLS port, and quiet factories.  Real backends (twisted.web, grpcio), real clients
(httpx over HTTP/1.1 and HTTP/2, grpcio, raw sockets).
"""

from __future__ import annotations

import threading
from concurrent import futures
from email.utils import parsedate_to_datetime
from typing import Any

import grpc
import httpx
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import resource
from twisted.web.server import Request

from eventgw.downstream.listener import PLAIN_HTTP_MESSAGE
from tests.rig import free_port, gateway_config, listen_site, raw_exchange, start_gateway

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/tests",
    "ce-type": "test.created",
    "content-type": "application/json",
}


class _SeenId(resource.Resource):
    """Answers with the x-request-id it received (or ``-``)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        value = request.getHeader(b"x-request-id")
        return value if value is not None else b"-"


def _grpc_recorder() -> tuple[grpc.Server, int, list[dict[str, Any]]]:
    """A grpcio server answering /t.Echo/Call with its request, recording metadata."""
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def call(request: bytes, context: grpc.ServicerContext) -> bytes:
        with lock:
            seen.append(dict(context.invocation_metadata()))
        return request

    handler = grpc.method_handlers_generic_handler(
        "t.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, seen


def _capture_logs(case: TestCase) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def _texts(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for event in events:
        parts = event.get("message") or ()
        out.append(" ".join(str(p) for p in parts) + str(event.get("log_format") or ""))
    return out


class RequestIdTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.events = _capture_logs(self)
        api = listen_site(self, _SeenId())
        server, port, self.seen = _grpc_recorder()
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        self.gw = start_gateway(self, gateway_config(
            api=f"http://127.0.0.1:{api}", grpc=f"127.0.0.1:{port}"
        ))

    def client(self, http2: bool) -> httpx.Client:
        client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_api_request_id_kept_replaced_or_generated(self) -> Any:
        """On /api a sane client x-request-id goes upstream and comes back as it is; an
        insane one (spaces, too long) and a missing one are replaced by a generated id,
        the same upstream, in the response and in the access-log event."""
        for http2 in (False, True):
            client = self.client(http2)
            for sent, kept in (("abc-123.x", True), ("has space", False),
                               ("x" * 300, False), (None, False)):
                headers = {} if sent is None else {"x-request-id": sent}
                response = yield deferToThread(
                    client.get, f"{self.gw.https}/api/x", headers=headers
                )
                self.assertEqual(response.status_code, 200)
                returned = response.headers["x-request-id"]
                self.assertEqual(response.text, returned)  # what went upstream
                if kept:
                    self.assertEqual(returned, sent)
                else:
                    self.assertRegex(returned, "^[0-9a-f]{32}$")
                logged = [e.get("request_id") for e in self.events
                          if e.get("log_namespace") == "eventgw.access"]
                self.assertEqual(logged[-1], returned)

    @inlineCallbacks
    def test_grpc_request_id_in_metadata_both_ways(self) -> Any:
        """A gRPC call's id goes to the Master API as metadata and comes back in the
        initial metadata; a generated one when the client sent none."""
        channel = grpc.insecure_channel(f"127.0.0.1:{self.gw.cleartext_port}")
        self.addCleanup(channel.close)
        method = channel.unary_unary("/t.Echo/Call")

        def call(metadata: Any) -> Any:
            _, rpc = method.with_call(b"hi", timeout=10, metadata=metadata)
            return dict(rpc.initial_metadata())

        initial = yield deferToThread(call, (("x-request-id", "grpc-1"),))
        self.assertEqual(initial["x-request-id"], "grpc-1")
        self.assertEqual(self.seen[-1]["x-request-id"], "grpc-1")
        initial = yield deferToThread(call, None)
        self.assertRegex(initial["x-request-id"], "^[0-9a-f]{32}$")
        self.assertEqual(self.seen[-1]["x-request-id"], initial["x-request-id"])

    @inlineCallbacks
    def test_gateway_made_responses_carry_date_and_server(self) -> Any:
        """A response the gateway makes itself (404) has a valid Date, Server: eventgw
        and an x-request-id, over HTTP/1.1 and HTTP/2."""
        for http2 in (False, True):
            response = yield deferToThread(self.client(http2).get, f"{self.gw.https}/nope")
            self.assertEqual(response.status_code, 404)
            self.assertEqual(response.headers["server"], "eventgw")
            self.assertIsNotNone(parsedate_to_datetime(response.headers["date"]).tzinfo)
            self.assertTrue(response.headers["x-request-id"])


class ErrorTextTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_down_upstreams_are_named_by_kind_only(self) -> Any:
        """A down broker is "event broker unavailable" and a down Master API gRPC
        server "Master API unavailable" to the client, without their addresses (the
        log keeps them); the trailers-only answer carries the x-request-id."""
        events = _capture_logs(self)
        grpc_port, broker_port = free_port(), free_port()
        gw = start_gateway(self, gateway_config(
            grpc=f"127.0.0.1:{grpc_port}", broker=f"127.0.0.1:{broker_port}"
        ))
        client = httpx.Client(verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(
            client.post, f"{gw.https}/events", headers=BINARY, content=b"{}"
        )
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["message"], "event broker unavailable")
        self.assertNotIn("127.0.0.1", response.text)

        channel = grpc.insecure_channel(f"127.0.0.1:{gw.cleartext_port}")
        self.addCleanup(channel.close)
        method = channel.unary_unary("/t.Echo/Call")

        def call() -> grpc.RpcError:
            try:
                method(b"x", timeout=10, metadata=(("x-request-id", "down-1"),))
            except grpc.RpcError as e:
                return e
            raise AssertionError("the call succeeded")

        error: Any = yield deferToThread(call)
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(error.details(), "Master API unavailable")
        self.assertEqual(dict(error.trailing_metadata())["x-request-id"], "down-1")
        logged = "\n".join(_texts(events))
        self.assertIn("event broker unavailable", logged)
        self.assertIn("Master API unavailable", logged)
        self.assertIn(str(grpc_port), "\n".join(
            str(e.get("reason", "")) for e in events if "reason" in e
        ))


class EarlyErrorTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_413_over_http2_reaches_httpx(self) -> Any:
        """An /api body over max_request_body and over the stream window, sent with
        httpx over HTTP/2, gets the 413 response (not a stream reset error), and the
        connection serves on."""
        api = listen_site(self, _SeenId())
        gw = start_gateway(self, gateway_config(
            api=f"http://127.0.0.1:{api}", extra="limits: {max_request_body: 1024}\n"
        ))
        client = httpx.Client(http2=True, verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(
            client.post, f"{gw.https}/api/up", content=b"x" * 1_500_000
        )
        self.assertEqual(response.http_version, "HTTP/2")
        self.assertEqual(response.status_code, 413)
        self.assertIn("1024", response.json()["message"])
        after = yield deferToThread(client.get, f"{gw.https}/api/x")
        self.assertEqual(after.status_code, 200)


class PlainHttpOnTlsPortTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_plain_http_gets_400_saying_tls(self) -> Any:
        """Cleartext HTTP/1.1 sent to the TLS port is answered in cleartext with a 400
        saying the port speaks TLS, then the connection closes; TLS still works."""
        gw = start_gateway(self, gateway_config())
        reply = yield deferToThread(
            raw_exchange, gw.tls_port, b"GET /api/x HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
        head, _, body = reply.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), reply)
        self.assertIn(b"connection: close", head)
        self.assertIn(PLAIN_HTTP_MESSAGE.encode(), body)
        client = httpx.Client(verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(client.get, f"{gw.https}/nope")
        self.assertEqual(response.status_code, 404)

    @inlineCallbacks
    def test_partial_plain_request_answered_at_header_timeout(self) -> Any:
        """A plain request head that never ends gets the 400 at the header timeout."""
        gw = start_gateway(self, gateway_config(extra="limits: {header_timeout: 0.5}\n"))
        reply = yield deferToThread(raw_exchange, gw.tls_port, b"GET / HTTP/1.1\r\nHo")
        self.assertTrue(reply.startswith(b"HTTP/1.1 400 "), reply)


class QuietFactoryTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_no_starting_factory_lines(self) -> Any:
        """Start-up and the first upstream connections log no "Starting factory"."""
        events = _capture_logs(self)
        api = listen_site(self, _SeenId())
        gw = start_gateway(self, gateway_config(api=f"http://127.0.0.1:{api}"))
        client = httpx.Client(verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(client.get, f"{gw.https}/api/x")
        self.assertEqual(response.status_code, 200)
        noisy = [t for t in _texts(events) if "Starting factory" in t
                 or "Stopping factory" in t]
        self.assertEqual(noisy, [])
