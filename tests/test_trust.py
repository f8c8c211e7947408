# mypy: disable-error-code="no-untyped-call"
"""Upstream trust and addresses: a CA bundle is trusted whole, by every upstream flow.

The loader (:mod:`eventgw.upstream.trust`) and the authority builder
(:mod:`eventgw.upstream.address`) are tested directly.  The end-to-end cases use a
bundle of TWO certificate authorities and upstream servers (real TLS, 127.0.0.1 port
0) whose certificate is signed by the SECOND one, so a client that trusted only the
first certificate of the file would refuse them: the ``/api`` proxy to an
``https://`` Master API, the gRPC relay to a ``grpcs://`` Master API, and ``/events``
to a ``grpcs://`` broker with both broker clients.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor as global_reactor
from twisted.internet import ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from demo.masterapi._proto import demo_pb2
from demo.masterapi.grpc_server import serve
from eventgw.api.target import ApiProxy
from eventgw.config import ApiUpstream, BrokerUpstream, GrpcUpstream, Limits
from eventgw.errors import ConfigError
from eventgw.events.broker import GrpcioBrokerClient
from eventgw.events.h2broker import H2BrokerClient
from eventgw.events.target import EventsEndpoint
from eventgw.grpc.target import GrpcRelay
from eventgw.routing import MethodPolicy
from eventgw.tls import server_context_factory
from eventgw.upstream.address import UpstreamAddress
from eventgw.upstream.h2pool import GrpcConnectionPool
from eventgw.upstream.httppool import UpstreamPool
from eventgw.upstream.trust import load_trust
from tests.events_support import binary_headers, exchange, start_broker
from tests.support import RecordingWriter, make_head

reactor: Any = global_reactor
WAIT = 30.0  # seconds any single wait may take before the test fails (only when broken)
POLICY = MethodPolicy.from_lists(["/"], [])
GET_ITEM = b"/demo.masterapi.v1.Items/GetItem"


# --- certificates ----------------------------------------------------------------------


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_certificate(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``: (cert, key) PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
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
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


@dataclass(frozen=True)
class TwoCaBundle:
    """A CA file holding two authorities, and a server certificate signed by the second.

    :ivar bundle: the path of the file holding both CAs (first, then second).
    :ivar first_only: the path of a file holding only the first CA.
    :ivar cert_pem: the server certificate (alone: the server sends no chain).
    :ivar key_pem: its private key.
    """

    bundle: str
    first_only: str
    cert_pem: bytes
    key_pem: bytes


def two_ca_bundle(directory: str) -> TwoCaBundle:
    """Write the two-CA bundle (and a first-CA-only file) into ``directory``."""
    first, _ = make_ca("eventgw test CA one")
    second, second_key = make_ca("eventgw test CA two")
    cert_pem, key_pem = make_server_certificate(second, second_key)
    os.makedirs(directory, exist_ok=True)
    bundle = os.path.join(directory, "bundle.pem")
    with open(bundle, "wb") as f:
        f.write(b"# two authorities\n" + _pem(first) + b"\n" + _pem(second))
    first_only = os.path.join(directory, "first.pem")
    with open(first_only, "wb") as f:
        f.write(_pem(first))
    return TwoCaBundle(bundle, first_only, cert_pem, key_pem)


# --- helpers -----------------------------------------------------------------------------


@inlineCallbacks
def wait_for(condition: Any, timeout: float = WAIT) -> Any:
    """Poll ``condition`` on the reactor until it is true; fail after ``timeout``."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        yield deferLater(reactor, 0.005, lambda: None)


class Hello(resource.Resource):
    """Answers every request with a small JSON document."""

    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"path": request.path.decode()}).encode()


def grpc_frame(message: Any) -> bytes:
    payload: bytes = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def grpc_status(headers: list[tuple[bytes, bytes]] | None) -> int | None:
    for name, value in headers or []:
        if name == b"grpc-status":
            return int(value)
    return None


def write(directory: str, name: str, data: bytes) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# --- the loader ----------------------------------------------------------------------------


class LoadTrustTests(SynchronousTestCase):
    """load_trust reads a CA file once, keeps every certificate, and names the key on
    any problem."""

    def setUp(self) -> None:
        self.folder = self.mktemp()
        self.first, _ = make_ca("one")
        self.second, _ = make_ca("two")

    def assertConfigError(self, path: str, key: str = "event_broker.ca_file") -> str:
        with self.assertRaises(ConfigError) as caught:
            load_trust(path, key)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(path, str(caught.exception))
        return str(caught.exception)

    def test_one_ca(self) -> None:
        """A file with one certificate gives that certificate, in both forms."""
        path = write(self.folder, "one.pem", _pem(self.first))
        trust = load_trust(path, "master_api.ca_file")
        self.assertEqual(trust.source, path)
        self.assertEqual(trust.certificates, (self.first,))
        self.assertEqual(trust.pem, _pem(self.first))
        self.assertEqual(len(trust.trust_root._caCerts), 1)  # type: ignore[attr-defined]

    def test_two_cas(self) -> None:
        """Every certificate of a bundle is kept, in order, comments between them
        ignored: the Twisted trust root and the PEM for grpcio hold both."""
        bundle = b"# first\n" + _pem(self.first) + b"\nsecond:\n" + _pem(self.second)
        trust = load_trust(write(self.folder, "two.pem", bundle), "master_api.ca_file")
        self.assertEqual(trust.certificates, (self.first, self.second))
        self.assertEqual(trust.pem, _pem(self.first) + _pem(self.second))
        roots = trust.trust_root._caCerts  # type: ignore[attr-defined]
        self.assertEqual([root.to_cryptography() for root in roots], [self.first, self.second])

    def test_no_file_is_the_platform_store(self) -> None:
        """No ca_file: the platform's trust store for Twisted, grpcio's roots (None)."""
        trust = load_trust(None, "master_api.ca_file")
        self.assertIsNone(trust.source)
        self.assertIsNone(trust.pem)
        self.assertEqual(trust.certificates, ())
        self.assertIsInstance(trust.trust_root, type(ssl.platformTrust()))

    def test_missing_file(self) -> None:
        """A file that does not exist is a ConfigError naming the key and the file."""
        message = self.assertConfigError(os.path.join(self.folder, "absent.pem"))
        self.assertIn("cannot read", message)

    def test_empty_file(self) -> None:
        """An empty file holds no certificate: ConfigError."""
        message = self.assertConfigError(write(self.folder, "empty.pem", b""))
        self.assertIn("no PEM certificate", message)

    def test_garbage(self) -> None:
        """Text without any PEM block is a ConfigError."""
        self.assertConfigError(write(self.folder, "garbage.pem", b"not a certificate\n"),
                               "master_api.ca_file")

    def test_block_that_does_not_parse(self) -> None:
        """A CERTIFICATE block whose contents are not a certificate is named by number,
        even after a good one."""
        bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        message = self.assertConfigError(write(self.folder, "bad.pem", _pem(self.first) + bad))
        self.assertIn("block 2", message)

    def test_block_that_is_not_a_certificate(self) -> None:
        """A private key (or any other PEM block) in a CA file is refused."""
        _, key = make_ca("three")
        message = self.assertConfigError(
            write(self.folder, "key.pem", _pem(self.first) + _key_pem(key)))
        self.assertIn("PRIVATE KEY", message)

    def test_truncated_block(self) -> None:
        """A block without its END line is refused rather than silently dropped."""
        cut = _pem(self.second)[:-30]
        message = self.assertConfigError(write(self.folder, "cut.pem", _pem(self.first) + cut))
        self.assertIn("END", message)


class StartErrorTests(SynchronousTestCase):
    """Each upstream client reads its CA file when it is built: a bad one fails there,
    naming its key, and nothing connects."""

    def setUp(self) -> None:
        self.garbage = write(self.mktemp(), "garbage.pem", b"garbage\n")

    def assertKey(self, build: Any, key: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            build()
        self.assertEqual(caught.exception.key, key)

    def test_api_pool(self) -> None:
        """The /api pool: master_api.ca_file."""
        upstream = ApiUpstream(scheme="https", host="127.0.0.1", port=443,
                               url="https://127.0.0.1", ca_file=self.garbage)
        self.assertKey(lambda: UpstreamPool(upstream, reactor=MemoryReactorClock()),
                       "master_api.ca_file")

    def test_grpc_pool(self) -> None:
        """The gRPC relay's pool: master_api.ca_file, at construction."""
        upstream = GrpcUpstream(host="127.0.0.1", port=443, tls=True,
                                address="127.0.0.1:443", ca_file=self.garbage)
        self.assertKey(lambda: GrpcConnectionPool(upstream, reactor=MemoryReactorClock()),
                       "master_api.ca_file")

    def test_broker_clients(self) -> None:
        """Both broker clients: event_broker.ca_file."""
        upstream = BrokerUpstream(target="127.0.0.1:443", tls=True, ca_file=self.garbage)
        for client in (GrpcioBrokerClient, H2BrokerClient):
            self.assertKey(lambda c=client: c(upstream, reactor=reactor),
                           "event_broker.ca_file")


# --- the authority -------------------------------------------------------------------------


class UpstreamAddressTests(SynchronousTestCase):
    """One authority (Host / :authority) and one TLS server name per upstream."""

    def test_grpc_always_has_the_port(self) -> None:
        """Without a default port the authority is host:port; IPv6 is bracketed."""
        self.assertEqual(UpstreamAddress("api.example", 443).authority, b"api.example:443")
        self.assertEqual(UpstreamAddress("127.0.0.1", 50051).authority, b"127.0.0.1:50051")
        self.assertEqual(UpstreamAddress("::1", 50051).authority, b"[::1]:50051")

    def test_http_default_port_omitted(self) -> None:
        """The scheme's own port is left out of Host; any other is written."""
        cases = [
            ("http", "127.0.0.1", 80, b"127.0.0.1"),
            ("http", "127.0.0.1", 8080, b"127.0.0.1:8080"),
            ("https", "api.example", 443, b"api.example"),
            ("https", "api.example", 80, b"api.example:80"),
            ("http", "::1", 80, b"[::1]"),
            ("http", "::1", 8080, b"[::1]:8080"),
        ]
        for scheme, host, port, expected in cases:
            self.assertEqual(UpstreamAddress.for_http(scheme, host, port).authority, expected)

    def test_international_name(self) -> None:
        """A non-ASCII host name is sent as its IDNA A-label; the TLS name stays the
        name itself (Twisted encodes SNI and service-identity matches it)."""
        address = UpstreamAddress("bücher.example", 443)
        self.assertEqual(address.authority, b"xn--bcher-kva.example:443")
        self.assertEqual(address.server_name, "bücher.example")

    def test_server_name_has_no_brackets_or_port(self) -> None:
        """The name a certificate is checked against is the bare host."""
        self.assertEqual(UpstreamAddress("::1", 8443).server_name, "::1")
        self.assertEqual(UpstreamAddress.for_http("https", "api.example", 8443).server_name,
                         "api.example")

    def test_same_host_header_as_the_api_proxy(self) -> None:
        """For http:// upstreams it agrees with the /api proxy's Host header."""
        clock = MemoryReactorClock()
        for scheme, host, port in [("http", "127.0.0.1", 80), ("http", "::1", 8080),
                                   ("http", "bücher.example", 80), ("http", "a.example", 81)]:
            url = f"{scheme}://{host}:{port}"
            upstream = ApiUpstream(scheme=scheme, host=host, port=port, url=url)
            proxy = ApiProxy(upstream, Limits(), reactor=clock)
            self.assertEqual(UpstreamAddress.for_http(scheme, host, port).authority,
                             proxy.host_header)

    def test_grpc_pool_authority(self) -> None:
        """The HTTP/2 pool sends the address's authority."""
        upstream = GrpcUpstream(host="::1", port=50051, tls=False, address="::1:50051")
        pool = GrpcConnectionPool(upstream, reactor=MemoryReactorClock())
        self.assertEqual(pool.authority, b"[::1]:50051")


# --- the flows ---------------------------------------------------------------------------


class BundleTestCase(TestCase):
    """Each test gets a fresh two-CA bundle (``self.certs``)."""

    timeout = 60

    def setUp(self) -> None:
        self.certs = two_ca_bundle(self.mktemp())


class ApiProxyBundleTests(BundleTestCase):
    """``/api`` to an ``https://`` Master API signed by the bundle's second CA."""

    def start_backend(self) -> int:
        folder = self.mktemp()
        options = server_context_factory(
            write(folder, "server.pem", self.certs.cert_pem),
            write(folder, "server.key", self.certs.key_pem),
        )
        port = reactor.listenSSL(0, server.Site(Hello()), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def proxy(self, port: int, ca_file: str) -> ApiProxy:
        upstream = ApiUpstream(scheme="https", host="127.0.0.1", port=port,
                               url=f"https://127.0.0.1:{port}", ca_file=ca_file)
        api = ApiProxy(upstream, Limits(), reactor=reactor)
        self.addCleanup(api.close)
        return api

    @inlineCallbacks
    def request(self, api: ApiProxy) -> Any:
        writer = RecordingWriter()
        handler = api.start_exchange(make_head(b"GET", b"/api/hello"), writer)
        handler.body_ended([])
        yield wait_for(lambda: writer.ended or writer.aborted is not None)
        return writer

    @inlineCallbacks
    def test_second_ca_of_bundle_is_trusted(self) -> Any:
        """The upstream certificate verifies against the bundle: 200 from the upstream."""
        api = self.proxy(self.start_backend(), self.certs.bundle)
        writer = yield self.request(api)
        self.assertEqual(writer.status, 200, bytes(writer.body))
        self.assertEqual(json.loads(bytes(writer.body)), {"path": "/api/hello"})

    @inlineCallbacks
    def test_first_ca_alone_is_not_enough(self) -> Any:
        """Without the second CA the certificate does not verify: 502."""
        api = self.proxy(self.start_backend(), self.certs.first_only)
        writer = yield self.request(api)
        self.assertEqual(writer.status, 502)


class GrpcRelayBundleTests(BundleTestCase):
    """The gRPC relay to a ``grpcs://`` Master API signed by the bundle's second CA."""

    def relay(self, ca_file: str) -> GrpcRelay:
        credentials = grpc.ssl_server_credentials([(self.certs.key_pem, self.certs.cert_pem)])
        api, port, self.servicer = serve(0, credentials=credentials)
        self.addCleanup(api.stop, 0)
        upstream = GrpcUpstream(host="127.0.0.1", port=port, tls=True,
                                address=f"127.0.0.1:{port}", ca_file=ca_file,
                                connect_timeout=WAIT)
        relay = GrpcRelay(upstream, POLICY, reactor=reactor)
        self.addCleanup(relay.close)
        return relay

    @inlineCallbacks
    def call(self, relay: GrpcRelay) -> Any:
        writer = RecordingWriter()
        head = make_head(
            b"POST", GET_ITEM,
            [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
            protocol="HTTP/2", content_length=None, body_expected=True,
        )
        handler = relay.start_exchange(head, writer)
        handler.body_received(grpc_frame(demo_pb2.GetItemRequest(id="bundle")))
        handler.body_ended([])
        yield wait_for(lambda: writer.ended or writer.aborted is not None)
        return writer

    @inlineCallbacks
    def test_second_ca_of_bundle_is_trusted(self) -> Any:
        """The call reaches the Master API over TLS and comes back OK with its reply."""
        writer = yield self.call(self.relay(self.certs.bundle))
        self.assertEqual(grpc_status(writer.trailers or writer.headers), 0, writer)
        reply = demo_pb2.Item.FromString(bytes(writer.body)[5:])
        self.assertEqual(reply.id, "bundle")

    @inlineCallbacks
    def test_file_read_once(self) -> Any:
        """The CA file is read when the relay is built: removed afterwards, new
        connections still verify against what was read."""
        relay = self.relay(self.certs.bundle)
        os.unlink(self.certs.bundle)
        writer = yield self.call(relay)
        self.assertEqual(grpc_status(writer.trailers or writer.headers), 0, writer)
        assert relay.pool is not None
        self.assertEqual(relay.pool.connection_count, 1)

    @inlineCallbacks
    def test_first_ca_alone_is_not_enough(self) -> Any:
        """Without the second CA the handshake fails: UNAVAILABLE, nothing relayed."""
        writer = yield self.call(self.relay(self.certs.first_only))
        self.assertEqual(grpc_status(writer.headers), 14, writer)
        self.assertEqual(self.servicer.calls, [])


class BrokerBundleTests(BundleTestCase):
    """``/events`` to a ``grpcs://`` broker signed by the bundle's second CA."""

    client = "grpcio"

    def endpoint(self, ca_file: str) -> tuple[EventsEndpoint, Any]:
        credentials = grpc.ssl_server_credentials([(self.certs.key_pem, self.certs.cert_pem)])
        broker, target = start_broker(self, credentials=credentials)
        endpoint = EventsEndpoint(
            BrokerUpstream(target=target, tls=True, ca_file=ca_file, deadline=5.0),
            Limits(), client=self.client,
        )
        self.addCleanup(endpoint.close)
        return endpoint, broker

    @inlineCallbacks
    def test_second_ca_of_bundle_is_trusted(self) -> Any:
        """The event reaches the TLS broker: 202 with the broker's answer."""
        endpoint, broker = self.endpoint(self.certs.bundle)
        writer = yield exchange(endpoint, binary_headers("bundle-1"), b"{}")
        self.assertEqual((writer.status, writer.json()), (202, {"id": "bundle-1"}))
        self.assertEqual([event.id for event in broker.events], ["bundle-1"])

    @inlineCallbacks
    def test_first_ca_alone_is_not_enough(self) -> Any:
        """Without the second CA the broker is unreachable: 503, no call made."""
        endpoint, broker = self.endpoint(self.certs.first_only)
        writer = yield exchange(endpoint, binary_headers(), b"{}")
        self.assertEqual(writer.status, 503)
        self.assertEqual(broker.calls, [])


class H2BrokerBundleTests(BrokerBundleTests):
    """``/events`` to a ``grpcs://`` broker signed by the bundle's second CA (HTTP/2
    broker client)."""

    client = "h2"
