# -*- test-case-name: tests.test_listener -*-
"""The per-connection protocol of both listening ports: decide, then step aside.

Shell module.  A new connection starts as a :class:`ProtocolSniffer`.  On the TLS
port the ALPN result (known by the first ``dataReceived``) picks HTTP/2 or HTTP/1.1;
on the cleartext port the first bytes do (:mod:`eventgw.downstream.sniff`).  The sniffer then
builds the chosen protocol, connects it to the same transport, replays the bytes it
has seen verbatim (preface included), and rebinds its own ``dataReceived`` and
``connectionLost`` to the chosen protocol's, so after the first read it costs nothing.
This is ``twisted.web.http._GenericHTTPChannelProtocol``'s shape, plus h2c detection.

On the TLS port the sniffer also looks at the connection's first bytes before TLS
does: a client speaking plain HTTP to it (``curl http://host:443/``) would otherwise
get a TLS alert its HTTP parser shows as an empty reply.  Such a connection is read up
to the end of its request head (at most the header limit, at most the header timeout)
and answered, in cleartext, with a ``400`` saying the port speaks TLS, as nginx does,
then closed.

At shutdown :meth:`GatewayFactory.drain` asks every open connection to finish what is
in flight and close, with the same drain period for HTTP/2 (GOAWAY, then the open
streams may finish) and HTTP/1.1 (the request in flight is answered with
``connection: close``).  When the period is over,
:meth:`GatewayFactory.expire_connections` ends what is left (HTTP/2: gRPC calls with
UNAVAILABLE, then GOAWAY and close; HTTP/1.1: cut), and
:meth:`GatewayFactory.abort_connections` cuts whatever still has not gone.

``limits.max_connections`` caps the open connections of each port's factory: one
more is closed as soon as it is accepted (before any TLS handshake) and counted, while
the open ones keep working.

A reload changes what the factory gives *new* connections (``limits``,
``access_log``); the ``target`` every connection routes through is the service's
current router, so a new request on an old connection already uses the new routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw.admin.metrics import connections_gauge, connections_refused_counter
from eventgw.config import Limits
from eventgw.downstream import sniff
from eventgw.downstream.accesslog import log_protocol_error
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.downstream.http1frame import serialize_error_response
from eventgw.downstream.http1server import Http1ServerProtocol
from eventgw.downstream.stamp import stamp
from eventgw.exchange import RequestTarget

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

__all__ = ["PLAIN_HTTP_MESSAGE", "GatewayFactory", "ProtocolSniffer"]

PLAIN_HTTP_MESSAGE = "this port speaks TLS: the plain HTTP request was sent to an HTTPS port"


class ProtocolSniffer(Protocol):
    """Buffers the first bytes until the protocol is known, then hands over.

    :ivar chosen: the HTTP/1.1 or HTTP/2 protocol once decided, else ``None``.
    """

    log = Logger()

    def __init__(self, factory: GatewayFactory) -> None:
        self.gateway_factory = factory
        self.chosen: Protocol | None = None
        self._buffer = b""
        self._timer: IDelayedCall | None = None
        self._plain: Any = None  # the TCP transport under TLS, once plain HTTP is seen

    def connectionMade(self) -> None:
        if not self.gateway_factory.connection_made(self):
            self._refuse_connection()
            return
        if self.gateway_factory.tls:
            self._guard_plain_http()
        # Responses are written whole per reactor turn; Nagle would only hold back the
        # last small segment (a gRPC trailer frame, an HTTP/1.1 tail) for a delayed ACK.
        transport = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is None:  # TLS: the TCP transport is one level down
            set_no_delay = getattr(getattr(transport, "transport", None), "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        # A client that connects and says nothing is dropped after the header timeout.
        self._timer = self.gateway_factory.reactor.callLater(
            self.gateway_factory.limits.header_timeout, self._silent
        )

    def _refuse_connection(self) -> None:
        """Over ``limits.max_connections``: close at once, before any TLS handshake."""
        transport: Any = self.transport
        tcp = getattr(transport, "transport", None) if self.gateway_factory.tls else None
        (tcp if tcp is not None else transport).abortConnection()

    def _silent(self) -> None:
        self._timer = None
        if self._plain is not None:
            self._refuse_plain_http()
        elif self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- plain HTTP on the TLS port ----------------------------------------------------

    def _guard_plain_http(self) -> None:
        """Look at the first bytes the TCP connection delivers before TLS does."""
        tls: Any = self.transport
        tcp = getattr(tls, "transport", None)
        if tcp is None or not hasattr(tls, "dataReceived"):
            return

        def first_read(data: bytes) -> None:
            if not data:
                return
            if sniff.is_plain_http(data):
                self._plain = tcp
                tls.dataReceived = self._plain_received
                self._plain_received(data)
            else:
                del tls.dataReceived  # TLS reads the connection from now on
                tls.dataReceived(data)

        # The TCP transport looks its protocol's dataReceived up on every read.
        tls.dataReceived = first_read

    def _plain_received(self, data: bytes) -> None:
        if self._plain is None or self._plain.disconnecting:
            return
        self._buffer += data
        head_ended = b"\r\n\r\n" in self._buffer or b"\n\n" in self._buffer
        if head_ended or len(self._buffer) > self.gateway_factory.limits.max_header_bytes:
            self._refuse_plain_http()

    def _refuse_plain_http(self) -> None:
        tcp = self._plain
        self._buffer = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if tcp is None or tcp.disconnecting:
            return
        peer = getattr(tcp.getPeer(), "host", "-")
        log_protocol_error(peer, "TLS", "plain HTTP request on the TLS port")
        tcp.write(serialize_error_response(400, PLAIN_HTTP_MESSAGE, stamp([], None)))
        tcp.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        factory = self.gateway_factory
        if factory.tls:
            negotiated = getattr(self.transport, "negotiatedProtocol", None)
            choice = sniff.by_alpn(negotiated)
        else:
            self._buffer += data
            data = self._buffer
            choice = sniff.by_first_bytes(data)
            if choice is sniff.Protocol.NEED_MORE:
                return
        self._buffer = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        chosen = factory.build_protocol(choice is sniff.Protocol.H2)
        self.chosen = chosen
        # From now on the transport's calls go straight to the chosen protocol.
        self.dataReceived = chosen.dataReceived  # type: ignore[method-assign]
        self.connectionLost = self._chosen_connection_lost  # type: ignore[method-assign]
        chosen.makeConnection(self.transport)
        chosen.dataReceived(data)

    def _chosen_connection_lost(self, reason: Failure | None = None) -> None:
        self.gateway_factory.connection_closed(self)
        assert self.chosen is not None
        self.chosen.connectionLost(reason if reason is not None else Failure(ConnectionDone()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gateway_factory.connection_closed(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def drain(self, timeout: float) -> None:
        """Ask the connection to finish what it is doing and close (shutdown); an
        HTTP/2 connection cuts the streams still open after ``timeout`` seconds."""
        chosen = self.chosen
        if isinstance(chosen, H2ServerProtocol):
            chosen.drain(timeout)
        elif isinstance(chosen, Http1ServerProtocol):
            chosen.drain()
        elif self.transport is not None:
            self.transport.loseConnection()

    def expire(self) -> None:
        """The drain period is over: HTTP/2 ends its gRPC calls with UNAVAILABLE and
        closes; any other connection is cut."""
        chosen = self.chosen
        if isinstance(chosen, H2ServerProtocol):
            chosen.expire()
        else:
            self.abort()

    def abort(self) -> None:
        """Close the connection now, whatever is in flight."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class GatewayFactory(Factory):
    """Builds a :class:`ProtocolSniffer` per connection of one listening port.

    :ivar tls: whether this port is the TLS one (ALPN decides) or cleartext (bytes do).
    :ivar connections: the open connections, for draining at shutdown.
    :ivar listener: the ``listener`` label of ``eventgw_connections_open``: ``tls``,
        ``cleartext`` or ``admin``.
    """

    def __init__(
        self,
        target: RequestTarget,
        limits: Limits,
        *,
        tls: bool,
        reactor: IReactorTime,
        access_log: bool = True,
        listener: str | None = None,
    ) -> None:
        self.target = target
        self.limits = limits
        self.tls = tls
        self.scheme = b"https" if tls else b"http"
        self.reactor = reactor
        self.access_log = access_log
        self.connections: set[ProtocolSniffer] = set()
        self.noisy = False
        self._closed_waiters: list[Deferred[None]] = []
        self.listener = listener or ("tls" if tls else "cleartext")
        self._open_gauge = connections_gauge(self.listener)
        self._refused_counter = connections_refused_counter(self.listener)
        #: Connections closed at once because ``limits.max_connections`` were open.
        self.refused = 0

    def connection_made(self, connection: ProtocolSniffer) -> bool:
        """``connection`` is open (counted in ``eventgw_connections_open``); ``False``
        when ``limits.max_connections`` are open already (it must close at once; counted
        in ``eventgw_connections_refused_total``)."""
        if connection in self.connections:
            return True
        if len(self.connections) >= self.limits.max_connections:
            self.refused += 1
            self._refused_counter.inc()
            return False
        self.connections.add(connection)
        self._open_gauge.inc()
        return True

    def connection_closed(self, connection: ProtocolSniffer) -> None:
        """``connection`` is gone; the last one to go fires :meth:`when_closed`."""
        if connection in self.connections:
            self.connections.discard(connection)
            self._open_gauge.dec()
        if not self.connections and self._closed_waiters:
            waiters, self._closed_waiters = self._closed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once no connection of this port is open (at once if none is)."""
        waiter: Deferred[None] = Deferred()
        if self.connections:
            self._closed_waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def drain(self, timeout: float) -> Deferred[None]:
        """Ask every open connection to finish and close; fires when all are closed.

        :param timeout: the drain period, passed on to the protocols that enforce one
            themselves (HTTP/2); the caller cuts what is left after it
            (:meth:`abort_connections`).
        """
        for connection in list(self.connections):
            connection.drain(timeout)
        return self.when_closed()

    def expire_connections(self) -> None:
        """The drain period is over: end what is in flight (:meth:`ProtocolSniffer.expire`)."""
        for connection in list(self.connections):
            connection.expire()

    def abort_connections(self) -> None:
        """Close every open connection now (the drain period is over)."""
        for connection in list(self.connections):
            connection.abort()

    def buildProtocol(self, addr: IAddress | None) -> ProtocolSniffer:
        return ProtocolSniffer(self)

    def build_protocol(self, http2: bool) -> Protocol:
        """The protocol for a connection whose protocol is now known."""
        protocol = H2ServerProtocol if http2 else Http1ServerProtocol
        return protocol(
            self.target,
            self.limits,
            scheme=self.scheme,
            reactor=self.reactor,
            access_log=self.access_log,
        )
