"""The server TLS wrapper: writes are encrypted and queued on TCP at once (real TLS)."""

from __future__ import annotations

import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor, ssl
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.protocols.tls import BufferingTLSTransport
from twisted.trial.unittest import TestCase

from eventgw.tls import ensure_dev_certificate, server_context_factory
from eventgw.tlsdirect import DirectTLSFactory

# Larger than a socket buffer on 127.0.0.1 and than one TLS record.
BIG = 4 * 1024 * 1024


class _Sender(protocol.Protocol):
    """On the first bytes received, writes the pieces, noting after each how many bytes
    the TCP transport below TLS holds, then closes."""

    def __init__(self, pieces: list[bytes], queued: list[int]) -> None:
        self.pieces = pieces
        self.queued = queued

    def dataReceived(self, data: bytes) -> None:
        tls: Any = self.transport
        for piece in self.pieces:
            tls.write(piece)
            tcp = tls.transport
            self.queued.append(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen)
        self.pieces = []
        tls.loseConnection()


class _Receiver(protocol.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"go")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.chunks))


class DirectTLSTests(TestCase):
    @defer.inlineCallbacks
    def _exchange(self, pieces: list[bytes]) -> defer.Generator[Any, Any, Any]:
        queued: list[int] = []
        servers: list[_Sender] = []

        class Factory(protocol.Factory):
            def buildProtocol(self, addr: Any) -> protocol.Protocol:
                proto = _Sender(list(pieces), queued)
                servers.append(proto)
                return proto

        dev = ensure_dev_certificate(tempfile.mkdtemp(prefix="eventgw-tlsdirect-"))
        factory = DirectTLSFactory(
            server_context_factory(dev.cert_path, dev.key_path), False, Factory()
        )
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        with open(dev.cert_path, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS("localhost", trustRoot=trust),
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
        )
        receiver = _Receiver()
        yield connectProtocol(endpoint, receiver)
        received = yield receiver.done
        return received, queued, servers[0]

    @defer.inlineCallbacks
    def test_write_reaches_tcp_at_once(self) -> defer.Generator[Any, Any, None]:
        """A small write is a TLS record in the TCP transport's queue on return (the
        buffering transport would hold it for a reactor turn), and arrives intact."""
        received, queued, server = yield self._exchange([b"hello ", b"world"])
        self.assertNotIsInstance(server.transport, BufferingTLSTransport)
        self.assertGreater(queued[0], len(b"hello "))  # record header and tag added
        self.assertGreater(queued[1], queued[0])
        self.assertEqual(received, b"hello world")

    @defer.inlineCallbacks
    def test_big_write_in_order(self) -> defer.Generator[Any, Any, None]:
        """A write larger than a record and than the socket buffer arrives whole and in
        order with the writes around it, before the close."""
        big = bytes(range(256)) * (BIG // 256)
        received, queued, _ = yield self._exchange([b"head:", big, b":tail"])
        self.assertGreater(queued[1], len(big))
        self.assertEqual(len(received), len(big) + 10)
        self.assertEqual(received, b"head:" + big + b":tail")
