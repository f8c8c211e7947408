"""Who may call, end to end: real TLS (client certificates from a test CA), HTTP/1.1 and
HTTP/2 clients, grpcio clients, a recording Master API (HTTP and gRPC) and Event Broker.

Every refusal is checked on the client side (status, headers, error shape) and on the
upstream side (nothing arrived); every admitted call is checked for what the upstream
received (credentials stripped, spoofed identity replaced, ``x-eventgw-client`` set).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import grpc
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventgw.admin.metrics import REGISTRY
from eventgw.config import GatewayConfig
from tests import jwt_support
from tests._proto.topics.v1 import topics_pb2, topics_pb2_grpc
from tests.events_support import binary_headers, start_broker
from tests.rig import RunningGateway, free_port, gateway_config, listen_site, start_gateway

BATCH_KEY = "batch-key-0123"
OPS_KEY = "ops-key-4567"
NEW_KEY = "new-key-89ab"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- a test CA and its client certificates --------------------------------------------


class ClientCA:
    """A CA in a temporary folder, issuing client certificates as PEM files."""

    def __init__(self, name: str = "eventgw test clients CA") -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-test-ca-")
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = os.path.join(self.folder, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, label: str, sans: list[x509.GeneralName], cn: str) -> tuple[str, str]:
        """A client certificate and key (paths)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = os.path.join(self.folder, f"{label}.pem")
        key_path = os.path.join(self.folder, f"{label}.key")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        return cert_path, key_path


# --- recording upstreams ----------------------------------------------------------------


class RecordingApi(resource.Resource):
    """A Master API that records every request's headers and answers 200."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, dict[str, list[str]]]] = []

    def render(self, request: server.Request) -> bytes:
        request.content.read()  # type: ignore[union-attr]
        headers = {k.decode().lower(): [v.decode() for v in vs]
                   for k, vs in request.requestHeaders.getAllRawHeaders()}
        self.seen.append((request.uri.decode(), headers))
        request.setHeader(b"content-type", b"text/plain")
        return b"ok"


class RecordingTopics(topics_pb2_grpc.TopicsServicer):
    """The Master API's gRPC side: records each call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def GetTopic(self, request: Any, context: grpc.ServicerContext) -> Any:  # gRPC name
        self.metadata.append(dict(context.invocation_metadata()))
        return topics_pb2.Topic(name=request.name)

    def CreateTopic(self, request: Any, context: grpc.ServicerContext) -> Any:  # gRPC name
        self.metadata.append(dict(context.invocation_metadata()))
        return request.topic


def start_topics(case: TestCase) -> tuple[RecordingTopics, str]:
    topics = RecordingTopics()
    srv = grpc.server(ThreadPoolExecutor(max_workers=4))
    topics_pb2_grpc.add_TopicsServicer_to_server(topics, srv)  # type: ignore[no-untyped-call]
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    case.addCleanup(lambda: srv.stop(grace=None).wait(10))
    return topics, f"127.0.0.1:{port}"


def access_yaml(ca_file: str, *, required: bool = False, keys: dict[str, str] | None = None,
                max_connections: int | None = None) -> str:
    keys = keys if keys is not None else {"batch": BATCH_KEY, "ops": OPS_KEY}
    entries = ", ".join(f"{{name: {name}, sha256: {sha(key)}}}" for name, key in keys.items())
    text = f"""
auth:
  api_keys: [{entries}]
  client_certificates: {{ca: '{ca_file}', required: {str(required).lower()}}}
access:
  default: [anyone]
  rules:
    - {{prefix: /api/private, allow: [key:batch, "cert:spiffe://test/svc"]}}
    - {{prefix: /api/admin, allow: [key:ops]}}
    - {{prefix: /events, allow: [key:batch]}}
    - {{prefix: /topics.v1.Topics/CreateTopic, allow: [key:batch]}}
    - {{prefix: /topics.v1.Topics/GetTopic, allow: [authenticated]}}
rate_limits:
  - {{prefix: /api/limited, per_second: 0.001, burst: 2, name: limited}}
  - {{prefix: /api/recovering, per_second: 1, burst: 1, by: route}}
  - {{prefix: /topics.v1.Topics/CreateTopic, per_second: 0.001, burst: 1}}
cors:
  - prefix: /api
    allow_origins: ["https://app.example.com"]
    allow_methods: [GET, POST]
    allow_headers: [content-type, x-api-key]
    max_age: 600
    expose_headers: [x-request-id]
"""
    if keys.get("batch") != BATCH_KEY and "new" in keys:
        text = text.replace("key:batch", "key:new")
    if max_connections is not None:
        text += f"limits: {{max_connections: {max_connections}}}\n"
    return text


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class AccessTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.ca = ClientCA()
        self.uri_cert = self.ca.issue("uri", [x509.UniformResourceIdentifier("spiffe://test/svc"),
                                              x509.DNSName("ignored.test")], "uri-cn")
        self.dns_cert = self.ca.issue("dns", [x509.DNSName("dns.test")], "dns-cn")
        self.cn_cert = self.ca.issue("cn", [], "cn-only-client")
        self.rogue = ClientCA("rogue CA").issue("rogue", [x509.DNSName("rogue.test")], "rogue")
        self.api = RecordingApi()
        api_port = listen_site(self, self.api)
        self.topics, topics_target = start_topics(self)
        self.broker, broker_target = start_broker(self)
        self.config = gateway_config(
            api=f"http://127.0.0.1:{api_port}", grpc=topics_target, broker=broker_target,
            extra=access_yaml(self.ca.ca_file),
        )
        self.gw: RunningGateway = start_gateway(self, self.config)

    # -- clients ------------------------------------------------------------------------

    def context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        context = self.gw.ssl_context()
        if cert is not None:
            context.load_cert_chain(*cert)
        return context

    def client(self, http2: bool, cert: tuple[str, str] | None = None) -> httpx.Client:
        client = httpx.Client(http2=http2, verify=self.context(cert), timeout=20)
        self.addCleanup(client.close)
        return client

    def get(self, path: str, *, http2: bool = False, cert: tuple[str, str] | None = None,
            **kwargs: Any) -> Any:
        client = self.client(http2, cert)
        return deferToThread(client.request, kwargs.pop("method", "GET"),
                             f"{self.gw.https}{path}", **kwargs)

    def topics_stub(self, cert: tuple[str, str] | None = None) -> Any:
        with open(self.gw.ca_file, "rb") as f:
            root = f.read()
        if cert is None:
            credentials = grpc.ssl_channel_credentials(root)
        else:
            with open(cert[0], "rb") as c, open(cert[1], "rb") as k:
                credentials = grpc.ssl_channel_credentials(root, k.read(), c.read())
        channel = grpc.secure_channel(f"localhost:{self.gw.tls_port}", credentials)
        self.addCleanup(channel.close)
        return topics_pb2_grpc.TopicsStub(channel)  # type: ignore[no-untyped-call]

    # -- HTTP: api keys -----------------------------------------------------------------

    @inlineCallbacks
    def test_api_keys_over_both_protocols(self) -> Any:
        """A known key passes as key:NAME (key stripped, spoofed identity replaced);
        none is 401 missing credentials with WWW-Authenticate; a wrong one 401 unknown
        api key; another key 403 -- over HTTP/1.1 and HTTP/2 -- and the Master API
        sees only the admitted requests."""
        denied_before = counter("eventgw_auth_denied_total", route="api",
                                reason="missing_credentials")
        for http2 in (False, True):
            spoof = {"x-eventgw-client": "key:ops"}
            ok = yield self.get("/api/private/x", http2=http2,
                                headers={"x-api-key": BATCH_KEY, **spoof})
            self.assertEqual(ok.status_code, 200, ok.text)
            self.assertEqual(ok.http_version, "HTTP/2" if http2 else "HTTP/1.1")
            missing = yield self.get("/api/private/x", http2=http2, headers=spoof)
            self.assertEqual(missing.status_code, 401)
            self.assertEqual(missing.json()["message"], "missing credentials")
            self.assertEqual(missing.json()["code"], 16)
            self.assertIn("ApiKey", missing.headers["www-authenticate"])
            wrong = yield self.get("/api/private/x", http2=http2,
                                   headers={"x-api-key": "guessed-key-value"})
            self.assertEqual(wrong.status_code, 401)
            self.assertEqual(wrong.json()["message"], "unknown api key")
            self.assertNotIn("guessed-key-value", wrong.text)
            self.assertIn("www-authenticate", wrong.headers)
            other = yield self.get("/api/private/x", http2=http2, headers={"x-api-key": OPS_KEY})
            self.assertEqual(other.status_code, 403)
            self.assertEqual(other.json()["code"], 7)
        self.assertEqual([uri for uri, _ in self.api.seen], ["/api/private/x"] * 2)
        for _, headers in self.api.seen:
            self.assertEqual(headers["x-eventgw-client"], ["key:batch"])
            self.assertNotIn("x-api-key", headers)
        self.assertEqual(counter("eventgw_auth_denied_total", route="api",
                                 reason="missing_credentials") - denied_before, 2)

    @inlineCallbacks
    def test_open_route_forwards_no_identity_when_anonymous(self) -> Any:
        """anyone: anonymous passes without x-eventgw-client (a spoofed one removed)."""
        response = yield self.get("/api/public", headers={"x-eventgw-client": "cert:admin"})
        self.assertEqual(response.status_code, 200)
        self.assertNotIn("x-eventgw-client", self.api.seen[0][1])

    @inlineCallbacks
    def test_refused_body_leaves_the_connection_usable(self) -> Any:
        """A refused HTTP/1.1 POST with a small body: its body is read and dropped and the
        next request on the same connection is served."""
        body = b"x" * 1000
        request = (b"POST /api/private/upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000\r\n"
                   b"\r\n" + body + b"GET /api/public HTTP/1.1\r\nhost: gw\r\n"
                   b"connection: close\r\n\r\n")

        def exchange() -> bytes:
            context = self.gw.ssl_context(["http/1.1"])
            with socket.create_connection(("127.0.0.1", self.gw.tls_port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as sock:
                    sock.sendall(request)
                    chunks = []
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
                    return b"".join(chunks)

        answer = yield deferToThread(exchange)
        self.assertTrue(answer.startswith(b"HTTP/1.1 401 "), answer[:200])
        self.assertIn(b"HTTP/1.1 200 ", answer)
        self.assertEqual([uri for uri, _ in self.api.seen], ["/api/public"])

    # -- HTTP: client certificates --------------------------------------------------------

    @inlineCallbacks
    def test_client_certificate_identities(self) -> Any:
        """URI SAN, DNS SAN and CN-only certificates each become cert:IDENTITY, over
        HTTP/1.1 and HTTP/2; the URI identity passes a rule naming it."""
        for http2 in (False, True):
            ok = yield self.get("/api/private/c", http2=http2, cert=self.uri_cert)
            self.assertEqual(ok.status_code, 200, ok.text)
            denied = yield self.get("/api/private/c", http2=http2, cert=self.dns_cert)
            self.assertEqual(denied.status_code, 403)
            for cert in (self.dns_cert, self.cn_cert):
                response = yield self.get("/api/public", http2=http2, cert=cert)
                self.assertEqual(response.status_code, 200)
        identities = [headers.get("x-eventgw-client") for _, headers in self.api.seen]
        expected = [["cert:spiffe://test/svc"], ["cert:dns.test"], ["cert:cn-only-client"]]
        self.assertEqual(identities, expected * 2)

    @inlineCallbacks
    def test_a_certificate_from_another_ca_fails_the_handshake(self) -> Any:
        """required: false, yet a certificate that does not verify fails the handshake."""
        with self.assertRaises((httpx.TransportError, ssl.SSLError)):
            yield self.get("/api/public", cert=self.rogue)
        self.assertEqual(self.api.seen, [])
        response = yield self.get("/api/public")
        self.assertEqual(response.status_code, 200)

    # -- gRPC -----------------------------------------------------------------------------

    @inlineCallbacks
    def test_grpc_statuses_and_metadata(self) -> Any:
        """gRPC: no key 16, another key 7, the right key passes (key stripped, identity as
        metadata), then the rate limit 8 -- the refusals took no token; a client
        certificate passes an authenticated rule."""
        stub = self.topics_stub()
        request = topics_pb2.CreateTopicRequest(topic=topics_pb2.Topic(name="t"))

        def call(metadata: tuple[tuple[str, str], ...]) -> Any:
            try:
                stub.CreateTopic(request, metadata=metadata, timeout=10)
            except grpc.RpcError as e:
                return e.code(), e.details(), dict(e.trailing_metadata() or ())
            return grpc.StatusCode.OK, "", {}

        code, details, trailers = yield deferToThread(call, ())
        self.assertEqual((code, details), (grpc.StatusCode.UNAUTHENTICATED, "missing credentials"))
        self.assertIn("ApiKey", trailers.get("www-authenticate", ""))
        code, _, _ = yield deferToThread(call, (("x-api-key", OPS_KEY),))
        self.assertEqual(code, grpc.StatusCode.PERMISSION_DENIED)
        spoof = ("x-eventgw-client", "key:ops")
        code, _, _ = yield deferToThread(call, (("x-api-key", BATCH_KEY), spoof))
        self.assertEqual(code, grpc.StatusCode.OK)
        code, details, _ = yield deferToThread(call, (("x-api-key", BATCH_KEY),))
        self.assertEqual((code, details), (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                           "rate limit exceeded"))
        self.assertEqual(len(self.topics.metadata), 1)
        seen = self.topics.metadata[0]
        self.assertEqual(seen["x-eventgw-client"], "key:batch")
        self.assertNotIn("x-api-key", seen)

        cert_stub = self.topics_stub(self.dns_cert)
        topic = yield deferToThread(
            cert_stub.GetTopic, topics_pb2.GetTopicRequest(name="n"), timeout=10)
        self.assertEqual(topic.name, "n")
        self.assertEqual(self.topics.metadata[1]["x-eventgw-client"], "cert:dns.test")

        def anonymous_get() -> Any:
            try:
                stub.GetTopic(topics_pb2.GetTopicRequest(name="n"), timeout=10)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        code = yield deferToThread(anonymous_get)
        self.assertEqual(code, grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(len(self.topics.metadata), 2)

    # -- events -----------------------------------------------------------------------------

    @inlineCallbacks
    def test_events_reach_the_broker_with_the_identity(self) -> Any:
        """/events without the key: 401 and the broker sees nothing; with it: 202 and
        x-eventgw-client as gRPC metadata (a spoofed one replaced)."""
        headers = {k.decode(): v.decode() for k, v in binary_headers("ev-a")}
        for http2 in (False, True):
            refused = yield self.get("/events", http2=http2, method="POST",
                                     headers={**headers, "x-eventgw-client": "key:ops"},
                                     content=b"{}")
            self.assertEqual(refused.status_code, 401)
        self.assertEqual(self.broker.calls, [])
        ok = yield self.get("/events", http2=True, method="POST",
                            headers={**headers, "x-api-key": BATCH_KEY,
                                     "x-eventgw-client": "key:ops"},
                            content=b"{}")
        self.assertEqual(ok.status_code, 202, ok.text)
        self.assertEqual(len(self.broker.metadata), 1)
        self.assertEqual(self.broker.metadata[0]["x-eventgw-client"], "key:batch")
        self.assertNotIn("x-api-key", self.broker.metadata[0])

    # -- rate limits --------------------------------------------------------------------------

    @inlineCallbacks
    def test_rate_limit_headers_and_independent_clients(self) -> Any:
        """burst 2: two pass with RateLimit headers, the third is 429 with Retry-After,
        RateLimit-Policy and RateLimit; another client's bucket is untouched."""
        limited_before = counter("eventgw_ratelimited_total", route="api")
        first = yield self.get("/api/limited", headers={"x-api-key": BATCH_KEY})
        self.assertEqual(first.status_code, 200)
        self.assertEqual(first.headers["ratelimit-policy"], '"limited";q=2;w=2000')
        self.assertTrue(first.headers["ratelimit"].startswith('"limited";r=1;t='))
        second = yield self.get("/api/limited", headers={"x-api-key": BATCH_KEY}, http2=True)
        self.assertEqual(second.status_code, 200)
        third = yield self.get("/api/limited", headers={"x-api-key": BATCH_KEY})
        self.assertEqual(third.status_code, 429)
        self.assertEqual(third.json()["code"], 8)
        self.assertEqual(third.headers["retry-after"], "1000")
        self.assertEqual(third.headers["ratelimit"], '"limited";r=0;t=1000')
        self.assertEqual(third.headers["ratelimit-policy"], '"limited";q=2;w=2000')
        other = yield self.get("/api/limited", headers={"x-api-key": OPS_KEY})
        self.assertEqual(other.status_code, 200)
        anonymous = yield self.get("/api/limited")
        self.assertEqual(anonymous.status_code, 200)
        self.assertEqual(len(self.api.seen), 4)
        self.assertEqual(counter("eventgw_ratelimited_total", route="api") - limited_before, 1)

    @inlineCallbacks
    def test_rate_limit_recovers_after_the_wait(self) -> Any:
        """per_second 1, burst 1: refused at once after one request, served again after
        the Retry-After wait."""
        yield self.get("/api/recovering")
        refused = yield self.get("/api/recovering")
        self.assertEqual(refused.status_code, 429)
        yield deferToThread(time.sleep, int(refused.headers["retry-after"]))
        again = yield self.get("/api/recovering")
        self.assertEqual(again.status_code, 200)

    # -- CORS -------------------------------------------------------------------------------------

    @inlineCallbacks
    def test_cors(self) -> Any:
        """Preflights are answered by the gateway (204) before access rules, with the
        Allow-* headers only for an allowed origin; real responses (a 401 too) carry
        Access-Control-Allow-Origin and Vary: Origin."""
        app = "https://app.example.com"
        preflight = {"origin": app, "access-control-request-method": "POST",
                     "access-control-request-headers": "x-api-key"}
        ok = yield self.get("/api/private/x", method="OPTIONS", headers=preflight)
        self.assertEqual(ok.status_code, 204)
        self.assertEqual(ok.headers["access-control-allow-origin"], app)
        self.assertEqual(ok.headers["access-control-allow-methods"], "GET, POST")
        self.assertEqual(ok.headers["access-control-max-age"], "600")
        evil = yield self.get("/api/private/x", method="OPTIONS", http2=True,
                              headers={**preflight, "origin": "https://evil.test"})
        self.assertEqual(evil.status_code, 204)
        self.assertFalse([h for h in evil.headers if h.startswith("access-control-allow")])
        self.assertEqual(self.api.seen, [])
        real = yield self.get("/api/public", headers={"origin": app})
        self.assertEqual(real.headers["access-control-allow-origin"], app)
        self.assertEqual(real.headers["access-control-expose-headers"], "x-request-id")
        self.assertIn("Origin", real.headers["vary"])
        refused = yield self.get("/api/private/x", headers={"origin": app}, http2=True)
        self.assertEqual(refused.status_code, 401)
        self.assertEqual(refused.headers["access-control-allow-origin"], app)
        foreign = yield self.get("/api/public", headers={"origin": "https://evil.test"})
        self.assertNotIn("access-control-allow-origin", foreign.headers)

    # -- reload ---------------------------------------------------------------------------------

    @inlineCallbacks
    def test_reload_replaces_keys_and_keeps_unchanged_buckets(self) -> Any:
        """A reload replacing the keys: the old key is refused, the new one passes; the
        unchanged rate limit keeps its exhausted bucket."""
        for _ in range(3):
            last = yield self.get("/api/limited", headers={"x-api-key": BATCH_KEY})
        self.assertEqual(last.status_code, 429)
        text = access_yaml(self.ca.ca_file, keys={"new": NEW_KEY, "ops": OPS_KEY})
        new = gateway_config(api=self.config.master_api_http.url,  # type: ignore[union-attr]
                             grpc=self.config.master_api_grpc.address,  # type: ignore[union-attr]
                             broker=self.config.event_broker.target,  # type: ignore[union-attr]
                             extra=text)
        service = self.gw.service
        service.loader = lambda: replace(new, tls=service.config.tls)
        self.assertTrue(service.reload())
        old = yield self.get("/api/private/x", headers={"x-api-key": BATCH_KEY})
        self.assertEqual((old.status_code, old.json()["message"]), (401, "unknown api key"))
        fresh = yield self.get("/api/private/x", headers={"x-api-key": NEW_KEY})
        self.assertEqual(fresh.status_code, 200)
        self.assertEqual(self.api.seen[-1][1]["x-eventgw-client"], ["key:new"])
        # The limit's rule is the same: its buckets (anonymous, by address) carried over.
        for _ in range(2):
            yield self.get("/api/limited")
        still = yield self.get("/api/limited")
        self.assertEqual(still.status_code, 429)


class RequiredCertificateTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.ca = ClientCA()
        self.cert = self.ca.issue("svc", [x509.UniformResourceIdentifier("spiffe://test/svc")],
                                  "svc")
        self.api = RecordingApi()
        port = listen_site(self, self.api)
        self.api_url = f"http://127.0.0.1:{port}"
        self.gw = start_gateway(self, gateway_config(
            api=self.api_url, extra=access_yaml(self.ca.ca_file, required=True)))

    def fetch(self, cert: tuple[str, str] | None) -> Any:
        context = self.gw.ssl_context()
        if cert is not None:
            context.load_cert_chain(*cert)
        client = httpx.Client(verify=context, timeout=20)
        self.addCleanup(client.close)
        return deferToThread(client.get, f"{self.gw.https}/api/public")

    @inlineCallbacks
    def test_handshake_without_certificate_fails(self) -> Any:
        """required: true -- no certificate, no request; with one, served."""
        with self.assertRaises((httpx.TransportError, ssl.SSLError)):
            yield self.fetch(None)
        self.assertEqual(self.api.seen, [])
        response = yield self.fetch(self.cert)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(self.api.seen[0][1]["x-eventgw-client"], ["cert:spiffe://test/svc"])

    @inlineCallbacks
    def test_reload_replaces_the_client_ca(self) -> Any:
        """A reload naming another CA: new handshakes verify against it only."""
        other = ClientCA("second CA")
        cert = other.issue("next", [x509.DNSName("next.test")], "next")
        service = self.gw.service
        new = replace(
            gateway_config(api=self.api_url, extra=access_yaml(other.ca_file, required=True)),
            tls=service.config.tls,
        )
        service.loader = lambda: new
        self.assertTrue(service.reload())
        with self.assertRaises((httpx.TransportError, ssl.SSLError)):
            yield self.fetch(self.cert)
        response = yield self.fetch(cert)
        self.assertEqual(response.status_code, 200)
        self.assertEqual(self.api.seen[-1][1]["x-eventgw-client"], ["cert:next.test"])


class ConnectionCapTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.api = RecordingApi()
        port = listen_site(self, self.api)
        config: GatewayConfig = gateway_config(
            api=f"http://127.0.0.1:{port}", extra="limits: {max_connections: 2}\n")
        self.gw = start_gateway(self, config)

    @inlineCallbacks
    def test_cap_holds_and_open_connections_keep_working(self) -> Any:
        """Two connections open: a third is closed at once (and counted); the two open
        ones still serve requests."""
        port = self.gw.cleartext_port

        def scenario() -> tuple[bytes, list[bytes]]:
            held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
            try:
                # The gateway has accepted both before the third arrives.
                for sock in held:
                    sock.sendall(b"GET /api/warm HTTP/1.1\r\nhost: gw\r\n\r\n")
                    sock.recv(65536)
                with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                    try:
                        third.sendall(b"GET /api/third HTTP/1.1\r\nhost: gw\r\n\r\n")
                        refused = third.recv(65536)
                    except (ConnectionResetError, BrokenPipeError):
                        refused = b""
                answers = []
                for sock in held:
                    sock.sendall(b"GET /api/again HTTP/1.1\r\nhost: gw\r\n\r\n")
                    answers.append(sock.recv(65536))
                return refused, answers
            finally:
                for sock in held:
                    sock.close()

        before = counter("eventgw_connections_refused_total", listener="cleartext")
        refused, answers = yield deferToThread(scenario)
        self.assertEqual(refused, b"")
        for answer in answers:
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:100])
        self.assertNotIn("/api/third", [uri for uri, _ in self.api.seen])
        self.assertEqual(counter("eventgw_connections_refused_total", listener="cleartext")
                         - before, 1)
        self.assertEqual(self.gw.service.factories[1].refused, 1)


class ClientCaFileTests(TestCase):
    def test_unreadable_or_empty_ca_names_the_key(self) -> None:
        """A missing CA file, or one without a certificate, stops the start naming
        auth.client_certificates.ca."""
        from eventgw.config import ClientCertificates
        from eventgw.errors import ConfigError
        from eventgw.tls import ensure_dev_certificate, server_context_factory

        folder = tempfile.mkdtemp(prefix="eventgw-test-ca-")
        dev = ensure_dev_certificate(folder)
        empty = os.path.join(folder, "empty.pem")
        with open(empty, "w") as f:
            f.write("no certificate here\n")
        for path in (os.path.join(folder, "missing.pem"), empty):
            with self.assertRaises(ConfigError) as caught:
                server_context_factory(dev.cert_path, dev.key_path, ClientCertificates(path))
            self.assertEqual(caught.exception.key, "auth.client_certificates.ca")



class JwtAccessTests(TestCase):
    """Bearer tokens of auth.jwt through the real gateway: HTTP/1.1, HTTP/2 and gRPC."""

    timeout = 60

    def setUp(self) -> None:
        self.key = jwt_support.ec_key("k1")
        self.forwarding_key = jwt_support.ec_key("f1")
        folder = tempfile.mkdtemp(prefix="eventgw-test-jwks-")
        corp_jwks = os.path.join(folder, "corp.json")
        fwd_jwks = os.path.join(folder, "fwd.json")
        with open(corp_jwks, "wb") as f:
            f.write(jwt_support.jwks(self.key))
        with open(fwd_jwks, "wb") as f:
            f.write(jwt_support.jwks(self.forwarding_key))
        down = f"https://127.0.0.1:{free_port()}/jwks.json"
        self.api = RecordingApi()
        api_port = listen_site(self, self.api)
        self.topics, topics_target = start_topics(self)
        self.broker, broker_target = start_broker(self)
        extra = f"""
auth:
  jwt:
    - {{name: corp, issuer: "https://idp.test/", audiences: [eventgw], jwks: '{corp_jwks}',
       forward_claims: {{sub: x-client-id}}}}
    - {{name: fwd, issuer: "https://fwd.test/", jwks: '{fwd_jwks}', forward: true}}
    - {{name: down, issuer: "https://down.test/", jwks: '{down}'}}
access:
  default: [anyone]
  rules:
    - {{prefix: /api/jwt, allow: [jwt:corp, jwt:fwd, jwt:down]}}
    - {{prefix: /api/bob, allow: ["jwt:corp:bob"]}}
    - {{prefix: /topics.v1.Topics/GetTopic, allow: [authenticated]}}
"""
        self.gw = start_gateway(self, gateway_config(
            api=f"http://127.0.0.1:{api_port}", grpc=topics_target, broker=broker_target,
            extra=extra))

    def token(self, issuer: str = "https://idp.test/", key: Any = None, **changes: Any) -> str:
        now = time.time()
        claims = jwt_support.claims(iss=issuer, exp=now + 300, iat=now - 5, nbf=now - 5)
        claims.update(changes)
        return str((key or self.key).sign({k: v for k, v in claims.items() if v is not None}))

    def get(self, path: str, token: str | None, *, http2: bool = False,
            headers: dict[str, str] | None = None) -> Any:
        client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        sent = dict(headers or {})
        if token is not None:
            sent["authorization"] = f"Bearer {token}"
        return deferToThread(client.get, f"{self.gw.https}{path}", headers=sent)

    @inlineCallbacks
    def test_event_reaches_the_broker_with_identity_and_claim(self) -> Any:
        """/events with a token: the broker gets the identity and the forwarded claim
        as metadata (the client's own values replaced), never the token."""
        headers = {k.decode(): v.decode() for k, v in binary_headers("ev-jwt")}
        client = httpx.Client(http2=True, verify=self.gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        ok = yield deferToThread(client.post, f"{self.gw.https}/events", content=b"{}",
                                 headers={**headers, "authorization": f"Bearer {self.token()}",
                                          "x-client-id": "mallory"})
        self.assertEqual(ok.status_code, 202, ok.text)
        [metadata] = self.broker.metadata
        self.assertEqual(
            (metadata["x-eventgw-client"], metadata["x-client-id"]), ("jwt:corp:alice", "alice")
        )
        self.assertNotIn("authorization", metadata)

    @inlineCallbacks
    def test_tokens_over_http(self) -> Any:
        """A good token passes as jwt:corp:alice with its claim header (the client's own
        replaced) and without the authorization header; expired, wrong issuer and
        tampered tokens are 401 naming the reason; another subject's rule 403; a
        provider without keys 503; forward: true keeps the header."""
        for http2 in (False, True):
            ok = yield self.get("/api/jwt/x", self.token(), http2=http2, headers={
                "x-client-id": "mallory", "x-eventgw-client": "key:root"})
            self.assertEqual(ok.status_code, 200, ok.text)
        for _, headers in self.api.seen:
            self.assertEqual(headers["x-eventgw-client"], ["jwt:corp:alice"])
            self.assertEqual(headers["x-client-id"], ["alice"])
            self.assertNotIn("authorization", headers)
        cases = [
            (self.token(exp=time.time() - 3600), "expired"),
            (self.token(issuer="https://other.test/"), "wrong issuer"),
            (self.token()[:-4] + "AAAA", "bad signature"),
            ("not-a-token", "malformed token"),
        ]
        for token, reason in cases:
            refused = yield self.get("/api/jwt/x", token, http2=True)
            self.assertEqual((refused.status_code, refused.json()["message"]), (401, reason))
            self.assertIn("Bearer", refused.headers["www-authenticate"])
            self.assertNotIn(token, refused.text)
        missing = yield self.get("/api/jwt/x", None)
        self.assertEqual((missing.status_code, missing.json()["message"]),
                         (401, "missing credentials"))
        self.assertEqual(missing.headers["www-authenticate"], 'Bearer realm="eventgw"')
        other = yield self.get("/api/bob", self.token())
        self.assertEqual(other.status_code, 403)
        bob = yield self.get("/api/bob", self.token(sub="bob"))
        self.assertEqual(bob.status_code, 200)
        unavailable = yield self.get("/api/jwt/x", self.token(issuer="https://down.test/"))
        self.assertEqual((unavailable.status_code, unavailable.json()["code"]), (503, 14))
        seen = len(self.api.seen)
        forwarded_token = self.token(issuer="https://fwd.test/", key=self.forwarding_key)
        forwarded = yield self.get("/api/jwt/x", forwarded_token)
        self.assertEqual(forwarded.status_code, 200)
        self.assertEqual(len(self.api.seen), seen + 1)
        self.assertEqual(self.api.seen[-1][1]["authorization"], [f"Bearer {forwarded_token}"])
        self.assertEqual(self.api.seen[-1][1]["x-eventgw-client"], ["jwt:fwd:alice"])
        self.assertEqual(len(self.api.seen), 4)  # two good, bob, forwarded

    @inlineCallbacks
    def test_tokens_over_grpc(self) -> Any:
        """gRPC metadata: a good token passes (identity and claim as metadata, the token
        removed); an expired one is 16 naming the reason; no keys is 14."""
        with open(self.gw.ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(f.read())
        channel = grpc.secure_channel(f"localhost:{self.gw.tls_port}", credentials)
        self.addCleanup(channel.close)
        stub = topics_pb2_grpc.TopicsStub(channel)  # type: ignore[no-untyped-call]

        def call(token: str) -> Any:
            try:
                stub.GetTopic(topics_pb2.GetTopicRequest(name="n"), timeout=10,
                              metadata=(("authorization", f"Bearer {token}"),))
            except grpc.RpcError as e:
                return e.code(), e.details()
            return grpc.StatusCode.OK, ""

        result = yield deferToThread(call, self.token())
        self.assertEqual(result, (grpc.StatusCode.OK, ""))
        seen = self.topics.metadata[0]
        self.assertEqual((seen["x-eventgw-client"], seen["x-client-id"]),
                         ("jwt:corp:alice", "alice"))
        self.assertNotIn("authorization", seen)
        result = yield deferToThread(call, self.token(exp=time.time() - 3600))
        self.assertEqual(result, (grpc.StatusCode.UNAUTHENTICATED, "expired"))
        result = yield deferToThread(call, self.token(issuer="https://down.test/"))
        self.assertEqual(result[0], grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(len(self.topics.metadata), 1)
