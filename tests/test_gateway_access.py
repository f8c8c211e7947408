"""The gateway's access checks in order, with in-memory exchanges and a Clock."""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from eventgw.auth.cors import CorsPolicy
from eventgw.auth.guard import Guard
from eventgw.auth.ratelimit import RateLimiter
from eventgw.config import AccessConfig, AccessRule, ApiKey, AuthConfig, CorsRule, RateLimit
from eventgw.gateway import Gateway
from tests.support import EchoTarget, RecordingWriter, make_head

KEY = b"k-1"


def gateway(clock: Clock) -> tuple[Gateway, EchoTarget, EchoTarget]:
    api, grpc = EchoTarget(), EchoTarget()
    guard = Guard(
        AuthConfig(api_keys=(ApiKey("batch", hashlib.sha256(KEY).digest()),)),
        AccessConfig(rules=(AccessRule("/api/private", ("key:batch",)),
                            AccessRule("/pkg.S/", ("key:batch",)))),
    )
    limiter = RateLimiter([RateLimit("/api", 1.0, 1, "client", "api")])
    cors = CorsPolicy([CorsRule("/api", ("https://app",))])
    gw = Gateway(api=api, events=EchoTarget(), grpc=grpc,  # type: ignore[arg-type]
                 guard=guard, limiter=limiter, cors=cors, reactor=clock)
    return gw, api, grpc


class GatewayAccessTests(SynchronousTestCase):
    def test_order_and_log_fields(self) -> None:
        """Preflight first (no token, no credentials); a denial takes no token; an
        admitted request takes one; the access log gets principal and decision."""
        clock = Clock()
        gw, api, _ = gateway(clock)
        seen: list[dict[str, Any]] = []

        def run(**kwargs: Any) -> RecordingWriter:
            head = make_head(**kwargs)
            writer = RecordingWriter()
            handler = gw.start_exchange(head, writer)
            handler.body_ended([])
            seen.append(dict(head.log_fields))
            return writer

        preflight = run(method=b"OPTIONS", target=b"/api/private", headers=[
            (b"origin", b"https://app"), (b"access-control-request-method", b"GET")])
        self.assertEqual(preflight.status, 204)
        denied = run(target=b"/api/private")
        self.assertEqual(denied.status, 401)
        ok = run(target=b"/api/private", headers=[(b"x-api-key", KEY), (b"origin", b"https://app")])
        self.assertEqual(ok.status, 200)
        self.assertEqual(ok.header(b"access-control-allow-origin"), b"https://app")
        self.assertEqual(ok.header(b"ratelimit"), b'"api";r=0;t=1')
        limited = run(target=b"/api/private", headers=[(b"x-api-key", KEY)])
        self.assertEqual(limited.status, 429)
        self.assertEqual(limited.header(b"retry-after"), b"1")
        clock.advance(1.0)
        self.assertEqual(run(target=b"/api/private", headers=[(b"x-api-key", KEY)]).status, 200)
        self.assertEqual(len(api.handlers), 2)
        self.assertEqual([(f.get("decision"), f.get("principal")) for f in seen], [
            ("preflight", None), ("denied", "-"), ("allowed", "key:batch"),
            ("ratelimited", "key:batch"), ("allowed", "key:batch")])
        self.assertEqual(seen[1]["route"], "api")

    def test_grpc_refusal_is_trailers_only(self) -> None:
        """A refused gRPC call: HTTP 200, grpc-status 16 in the headers, ended; the
        relay never sees it."""
        gw, _, grpc = gateway(Clock())
        head = make_head(target=b"/pkg.S/M", protocol="HTTP/2",
                         headers=[(b"content-type", b"application/grpc")])
        writer = RecordingWriter()
        gw.start_exchange(head, writer)
        self.assertEqual((writer.status, writer.head_ended), (200, True))
        self.assertEqual(writer.header(b"grpc-status"), b"16")
        self.assertEqual(writer.header(b"grpc-message"), b"missing credentials")
        self.assertEqual(head.log_fields["grpc_status"], 16)
        self.assertEqual(grpc.handlers, [])

    def test_grpc_web_refusal_is_a_grpc_web_answer(self) -> None:
        """A refused gRPC-Web call (HTTP/1.1 POST): HTTP 200, the gRPC-Web content type,
        grpc-status 16 in the headers; the relay never sees it."""
        gw, _, grpc = gateway(Clock())
        head = make_head(method=b"POST", target=b"/pkg.S/M", content_length=None,
                         headers=[(b"content-type", b"application/grpc-web+proto")])
        writer = RecordingWriter()
        gw.start_exchange(head, writer)
        self.assertEqual((writer.status, writer.head_ended), (200, True))
        self.assertEqual(writer.header(b"content-type"), b"application/grpc-web")
        self.assertEqual(writer.header(b"grpc-status"), b"16")
        self.assertEqual(grpc.handlers, [])
