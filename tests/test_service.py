# -*- test-case-name: tests.test_service -*-
# mypy: disable-error-code="no-untyped-call"
"""The gateway service's stop: one drain period for HTTP/1.1 and HTTP/2, then close.

The service runs on a ``MemoryReactorClock``: its listening sockets are really bound
(127.0.0.1 port 0) and handed to the fake reactor, downstream connections are wired to
``StringTransport``\\ s by hand, and the upstream connections the ``/api`` proxy opens
are answered by the test, so time only moves when the test advances the clock.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from eventgw.config import GatewayConfig, TlsConfig, load_config
from eventgw.downstream.listener import ProtocolSniffer
from eventgw.http2 import DRAIN_TIMEOUT
from eventgw.service import GatewayService

UPSTREAM_RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"


class ClosingTransport(StringTransport):
    """A StringTransport that, like a real one, reports the connection lost (on the
    next reactor turn) once it is closed or aborted."""

    def __init__(self, reactor: MemoryReactorClock) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
        self.reactor = reactor
        self.protocol: Any = None
        self.lost = False
        self.aborted = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._report_lost()

    def abortConnection(self) -> None:
        self.aborted = True
        self._report_lost()

    def _report_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        self.reactor.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))


def parse_frames(data: bytes) -> list[Frame]:
    """Split raw HTTP/2 bytes from the server into hyperframe frames."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def service_config(cert_dir: str) -> GatewayConfig:
    """Both ports on 127.0.0.1:0, an /api upstream that never times out on its own."""
    config = load_config(
        "listen: {tls: 0, cleartext: 0, interface: 127.0.0.1}\n"
        "master_api:\n"
        "  http: http://127.0.0.1:9\n"
        "  connect_timeout: 1000\n"
        "  response_timeout: 1000\n"
    )
    return replace(config, tls=TlsConfig(dev_cert_dir=cert_dir), access_log=False)


class DrainOnStopTests(TestCase):
    """stopService gives in-flight work one drain period, then cuts it and completes."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.service = GatewayService(service_config(self.mktemp()), self.reactor)
        self.service.startService()
        # The cleartext port: HTTP/1.1, or HTTP/2 with prior knowledge.
        self.factory = self.service.factories[1]

    def connect(self, data: bytes) -> ClosingTransport:
        transport = ClosingTransport(self.reactor)
        sniffer: ProtocolSniffer = self.factory.buildProtocol(None)
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        sniffer.dataReceived(data)
        return transport

    def start_http1(self) -> ClosingTransport:
        """An HTTP/1.1 GET to /api, waiting for its upstream."""
        return self.connect(b"GET /api/slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")

    def start_http2(self) -> tuple[ClosingTransport, H2Connection]:
        """An HTTP/2 (h2c) GET to /api on stream 1, waiting for its upstream."""
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        client.initiate_connection()
        client.send_headers(
            1,
            [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"gw.test"),
             (b":path", b"/api/slow")],
            end_stream=True,
        )
        return self.connect(client.data_to_send()), client

    def answer_upstreams(self) -> None:
        """Accept every upstream connection the proxy opened and answer each request
        it sends, until no request is left unanswered."""
        upstreams: list[tuple[Any, ClosingTransport]] = []
        answered: list[int] = []
        accepted = 0
        while True:
            for host, port, factory, _timeout, _bind in self.reactor.tcpClients[accepted:]:
                protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
                assert protocol is not None
                transport = ClosingTransport(self.reactor)
                transport.protocol = protocol
                protocol.makeConnection(transport)
                upstreams.append((protocol, transport))
                answered.append(0)
            accepted = len(self.reactor.tcpClients)
            self.reactor.advance(0)
            progress = False
            for index, (protocol, transport) in enumerate(upstreams):
                sent = transport.value().count(b" HTTP/1.1\r\n")
                while answered[index] < sent:
                    answered[index] += 1
                    protocol.dataReceived(UPSTREAM_RESPONSE)
                    progress = True
            self.reactor.advance(0)
            if not progress and accepted == len(self.reactor.tcpClients):
                return

    def stop(self) -> list[object]:
        stopped: Deferred[object] = self.service.stopService()
        fired: list[object] = []
        stopped.addBoth(fired.append)
        return fired

    def test_in_flight_work_gets_the_whole_drain_period(self) -> None:
        """An HTTP/1.1 request and an HTTP/2 stream still in flight keep their
        connections for the full drain period (the HTTP/2 one told by GOAWAY); then
        both are closed and the stop completes."""
        http1 = self.start_http1()
        http2, _ = self.start_http2()
        self.assertEqual(len(self.reactor.tcpClients), 2)  # both wait for the upstream
        fired = self.stop()
        goaways = [f for f in parse_frames(http2.value()) if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.last_stream_id for f in goaways], [2**31 - 1])

        self.reactor.advance(DRAIN_TIMEOUT - 0.5)
        self.assertFalse(http1.lost)
        self.assertFalse(http2.lost)
        self.assertEqual(fired, [])

        self.reactor.advance(0.5)
        self.assertTrue(http1.lost)
        self.assertTrue(http2.lost)
        self.reactor.advance(0)
        self.assertEqual(fired, [None])
        self.assertEqual(self.factory.connections, set())

    def test_stop_completes_once_in_flight_work_is_done(self) -> None:
        """Work that finishes inside the drain period is answered in full (HTTP/1.1
        with connection: close); the stop completes then, not at the period's end."""
        http1 = self.start_http1()
        http2, _ = self.start_http2()
        fired = self.stop()
        self.reactor.advance(DRAIN_TIMEOUT / 2)
        self.assertEqual(fired, [])

        self.answer_upstreams()
        response = http1.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertIn(b"connection: close\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\ndone"), response)
        # Parsed frame by frame: an h2 client stops reading at the GOAWAY.
        frames = parse_frames(http2.value())
        # The two-step GOAWAY: the largest stream id first, then the last one served.
        self.assertEqual(
            [f.last_stream_id for f in frames if isinstance(f, GoAwayFrame)], [2**31 - 1, 1]
        )
        heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == 1]
        self.assertEqual(dict(Decoder().decode(heads[0].data, raw=True))[b":status"], b"200")
        data = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == 1]
        self.assertEqual(b"".join(f.data for f in data), b"done")
        self.assertIn("END_STREAM", data[-1].flags)
        self.assertTrue(http1.lost and not http1.aborted)
        self.assertTrue(http2.lost and not http2.aborted)
        self.assertEqual(fired, [None])
        self.assertEqual(self.reactor.seconds(), DRAIN_TIMEOUT / 2)

    def test_drain_period_is_a_constructor_argument(self) -> None:
        """The drain period defaults to http2.DRAIN_TIMEOUT and can be given instead."""
        self.assertEqual(self.service.drain_timeout, DRAIN_TIMEOUT)
        fired = self.stop()
        self.reactor.advance(0)
        self.assertEqual(fired, [None])
        service = GatewayService(
            service_config(self.mktemp()), self.reactor, drain_timeout=3.0
        )
        service.startService()
        http1 = self.connect_to(service, b"GET /api/slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        stopped: list[object] = []
        service.stopService().addBoth(stopped.append)
        self.reactor.advance(2.9)
        self.assertFalse(http1.lost)
        self.reactor.advance(0.1)
        self.reactor.advance(0)
        self.assertTrue(http1.aborted)
        self.assertEqual(stopped, [None])

    def connect_to(self, service: GatewayService, data: bytes) -> ClosingTransport:
        self.factory = service.factories[1]
        return self.connect(data)
