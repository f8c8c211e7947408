"""End-to-end test rig: the real gateway service on 127.0.0.1 port 0, real backends.

``start_gateway`` runs :class:`eventgw.service.GatewayService` in the test's reactor
with a generated development certificate (TLS with ALPN) and a cleartext port, and
registers cleanups so nothing is left listening.  Blocking clients (httpx, grpcio,
raw sockets) run in ``deferToThread`` with timeouts.
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import Frame
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventgw.config import GatewayConfig, TlsConfig, load_config
from eventgw.service import GatewayService

CLIENT_TIMEOUT = 20.0


@dataclass
class RunningGateway:
    service: GatewayService
    tls_port: int
    cleartext_port: int
    ca_file: str

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.cleartext_port}"

    def ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.check_hostname = False
        if alpn:
            context.set_alpn_protocols(alpn)
        return context


def gateway_config(
    *,
    api: str | None = None,
    grpc: str | None = None,
    broker: str | None = None,
    response_timeout: float = 10.0,
    extra: str = "",
) -> GatewayConfig:
    """A config for tests: ports 0 on 127.0.0.1, the given upstreams."""
    lines = ["listen: {tls: 0, cleartext: 0, interface: 127.0.0.1}", "master_api:"]
    lines.append(f"  http: {api or 'http://127.0.0.1:9'}")
    if grpc:
        lines.append(f"  grpc: {grpc}")
    lines.append("  connect_timeout: 2")
    lines.append(f"  response_timeout: {response_timeout}")
    if broker:
        lines.append(f"event_broker: {{grpc: '{broker}', deadline: 2}}")
    return load_config("\n".join(lines) + "\n" + extra)


def start_gateway(case: TestCase, config: GatewayConfig) -> RunningGateway:
    """Start the gateway service in the test's reactor; stopped at cleanup."""
    cert_dir = tempfile.mkdtemp(prefix="eventgw-test-cert-")
    config = replace(config, tls=TlsConfig(dev_cert_dir=cert_dir))
    service = GatewayService(config, global_reactor)
    service.startService()
    case.addCleanup(service.stopService)
    tls_port = service.ports[0].getHost().port  # type: ignore[attr-defined]
    cleartext_port = service.ports[1].getHost().port  # type: ignore[attr-defined]
    return RunningGateway(
        service, tls_port, cleartext_port, os.path.join(cert_dir, "gateway-dev.pem")
    )


def listen_site(case: TestCase, root: resource.Resource) -> int:
    """A real twisted.web backend on 127.0.0.1:0; returns its port."""
    site = server.Site(root)
    site.noisy = False
    port = global_reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    case.addCleanup(port.stopListening)
    return int(port.getHost().port)


def free_port() -> int:
    """A port nobody listens on (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_exchange(port: int, data: bytes, *, context: ssl.SSLContext | None = None,
                 read_until_close: bool = True, timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and return what came back until close/timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        sock: Any = raw
        if context is not None:
            sock = context.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


@inlineCallbacks
def settle(seconds: float = 0.05) -> Any:
    """Let the reactor run briefly."""
    d: Deferred[None] = Deferred()
    global_reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    yield d


#: Seconds a wait for a condition may take before the test fails: generous, since it
#: only runs out when something is broken (a loaded machine is merely slow).
WAIT = 30.0


@inlineCallbacks
def wait_until(predicate: Callable[[], object], timeout: float = WAIT,
               interval: float = 0.02) -> Any:
    """Let the reactor run until ``predicate()`` is true; AssertionError after
    ``timeout`` seconds of wall-clock time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        yield settle(interval)


def h2_stream_frames(port: int, context: ssl.SSLContext, headers: list[tuple[bytes, bytes]],
                     body: bytes = b"") -> list[Any]:
    """One request over TLS with ALPN h2 from a raw h2 client (``body`` ends it); the
    frames the gateway sent on its stream (hyperframe objects), in order, once it
    ended or the connection closed."""
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=not body)
    if body:
        conn.send_data(1, body, end_stream=True)
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        sock = context.wrap_socket(plain, server_hostname="localhost")
        sock.sendall(conn.data_to_send())
        ended = False
        while not ended:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == 1:
                    ended = True
            if conn.data_to_send():
                sock.sendall(conn.data_to_send())
    frames = []
    view = memoryview(raw)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        if frame.stream_id == 1:
            frames.append(frame)
        view = view[9 + length :]
    return frames
