"""The per-connection sniffer: ALPN or first bytes pick the protocol, bytes replayed."""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import Limits
from eventgw.downstream.listener import GatewayFactory, ProtocolSniffer
from eventgw.downstream.sniff import PREFACE
from tests.support import EchoTarget


class RecordingProtocol(Protocol):
    def __init__(self, http2: bool) -> None:
        self.http2 = http2
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True


class RecordingFactory(GatewayFactory):
    def __init__(self, *, tls: bool) -> None:
        self.clock = Clock()
        super().__init__(EchoTarget(), Limits(header_timeout=5.0), tls=tls, reactor=self.clock)
        self.built: list[RecordingProtocol] = []

    def build_protocol(self, http2: bool) -> Protocol:
        proto = RecordingProtocol(http2)
        self.built.append(proto)
        return proto


class TLSTransport(StringTransport):
    negotiatedProtocol: bytes | None = None


def connect(factory: RecordingFactory, transport: StringTransport) -> ProtocolSniffer:
    sniffer = factory.buildProtocol(None)  # type: ignore[arg-type]
    sniffer.makeConnection(transport)
    return sniffer


class CleartextSniffingTests(SynchronousTestCase):
    def test_preface_byte_by_byte_selects_h2(self) -> None:
        """The h2c preface fed one byte at a time selects HTTP/2 and is replayed whole."""
        factory = RecordingFactory(tls=False)
        sniffer = connect(factory, StringTransport())
        data = PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        for i in range(len(data)):
            sniffer.dataReceived(data[i : i + 1])
        self.assertEqual(len(factory.built), 1)
        self.assertTrue(factory.built[0].http2)
        self.assertEqual(factory.built[0].received, data)

    def test_http1_selected_on_first_byte(self) -> None:
        """An HTTP/1.1 request goes to the HTTP/1.1 protocol with every byte."""
        factory = RecordingFactory(tls=False)
        sniffer = connect(factory, StringTransport())
        sniffer.dataReceived(b"GET / HTTP/1.1\r\n")
        sniffer.dataReceived(b"Host: x\r\n\r\n")
        self.assertFalse(factory.built[0].http2)
        self.assertEqual(factory.built[0].received, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

    def test_connection_lost_reaches_chosen(self) -> None:
        """After the hand-over, connectionLost reaches the chosen protocol."""
        factory = RecordingFactory(tls=False)
        sniffer = connect(factory, StringTransport())
        sniffer.dataReceived(b"G")
        self.assertEqual(factory.connections, {sniffer})
        sniffer.connectionLost(Failure(ConnectionError()))
        self.assertTrue(factory.built[0].lost)
        self.assertEqual(factory.connections, set())

    def test_silent_client_dropped(self) -> None:
        """A client that sends nothing is disconnected after the header timeout."""
        factory = RecordingFactory(tls=False)
        transport = StringTransport()
        connect(factory, transport)
        factory.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        factory.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.built, [])

    def test_decided_client_not_dropped_by_sniffer(self) -> None:
        """Once decided, the sniffer's timer no longer applies."""
        factory = RecordingFactory(tls=False)
        transport = StringTransport()
        connect(factory, transport).dataReceived(b"GET")
        factory.clock.advance(60)
        self.assertFalse(transport.disconnecting)


class TLSSniffingTests(SynchronousTestCase):
    def test_alpn_h2(self) -> None:
        """ALPN h2 selects HTTP/2 on the first read."""
        factory = RecordingFactory(tls=True)
        transport = TLSTransport()
        transport.negotiatedProtocol = b"h2"
        connect(factory, transport).dataReceived(PREFACE[:3])
        self.assertTrue(factory.built[0].http2)
        self.assertEqual(factory.built[0].received, PREFACE[:3])

    def test_no_alpn_is_http1(self) -> None:
        """No ALPN (or http/1.1) selects HTTP/1.1 even for preface-looking bytes."""
        for negotiated in (None, b"http/1.1"):
            factory = RecordingFactory(tls=True)
            transport = TLSTransport()
            transport.negotiatedProtocol = negotiated
            connect(factory, transport).dataReceived(PREFACE)
            self.assertFalse(factory.built[0].http2)
