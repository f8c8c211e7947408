"""The lean poll loop (eventgw.reactorloop) on a private epoll reactor with real sockets."""

from __future__ import annotations

import socket
import time

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from eventgw.reactorloop import install_lean_poll, lean_do_poll


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("handler failed")
        assert self.transport is not None
        self.transport.write(data.upper())


class LeanPollTests(TestCase):
    def setUp(self) -> None:
        self.reactor = EPollReactor()
        self.addCleanup(self._close_reactor)

    def _close_reactor(self) -> None:
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionError("test over")))
        self.reactor._poller.close()  # type: ignore[attr-defined]

    def _spin_until(self, done: object, limit: float = 10.0) -> None:
        deadline = time.monotonic() + limit
        while not done():  # type: ignore[operator]
            self.assertLess(time.monotonic(), deadline, "the loop made no progress")
            self.reactor.doIteration(0.05)
            self.reactor.runUntilCurrent()

    def _client(self, port: int) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", port))
        client.setblocking(False)
        self.addCleanup(client.close)
        return client

    def _read(self, client: socket.socket, size: int) -> bytes:
        got = bytearray()

        def ready() -> bool:
            try:
                chunk = client.recv(65536)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            got.extend(chunk)
            return len(got) >= size

        self._spin_until(ready)
        return bytes(got)

    def test_installed_once_on_the_stock_epoll_reactor(self) -> None:
        self.assertTrue(install_lean_poll(self.reactor))
        self.assertIs(self.reactor.doIteration.__func__, lean_do_poll)  # type: ignore[attr-defined]
        # A second call (or a loop someone else replaced) is left alone.
        self.assertFalse(install_lean_poll(self.reactor))

    def test_other_reactors_are_left_alone(self) -> None:
        self.assertFalse(install_lean_poll(Clock()))
        select = SelectReactor()
        self.addCleanup(select._internalReaders.clear)
        self.assertFalse(install_lean_poll(select))
        self.assertEqual(select.doIteration, select.doSelect)

    def test_reads_writes_and_handler_errors(self) -> None:
        """Real connections are served through the lean loop; a handler that raises
        loses its own connection, is logged, and the others carry on."""
        install_lean_poll(self.reactor)
        port = self.reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        number = port.getHost().port
        good, bad = self._client(number), self._client(number)
        good.send(b"hello")
        self.assertEqual(self._read(good, 5), b"HELLO")
        bad.send(b"boom")
        # The failing connection is closed: its client reads EOF.
        self.assertEqual(self._read(bad, 1), b"")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        good.send(b"again" * 2000)
        self.assertEqual(self._read(good, 10000), b"AGAIN" * 2000)
        port.stopListening()

    def test_peer_close_is_seen(self) -> None:
        install_lean_poll(self.reactor)
        lost: list[object] = []

        class Watch(Protocol):
            def connectionLost(self, reason: object = None) -> None:
                lost.append(reason)

        port = self.reactor.listenTCP(0, Factory.forProtocol(Watch), interface="127.0.0.1")
        client = self._client(port.getHost().port)
        self._spin_until(lambda: len(self.reactor.getReaders()) >= 3)
        client.close()
        self._spin_until(lambda: bool(lost))
        port.stopListening()
