# -*- test-case-name: tests.test_webproxy -*-
"""Pooled keep-alive HTTP/1.1 connections (cleartext or verified TLS) to the Master API.

Shell module: moves bytes and time for :mod:`eventgw.upstream.h1client`, which does all the
HTTP.  One :class:`UpstreamPool` per :class:`~eventgw.config.ApiUpstream`:

* at most ``max_connections`` connections (connected plus connecting); requests beyond
  that wait in a bounded queue (:data:`MAX_WAITING`), and beyond the queue fail at once
  with :class:`PoolExhausted` (503) instead of piling up;
* connection attempts are not tied to the request that caused them: whichever request
  waits longest gets the next connection, and a connection nobody waits for any more
  becomes idle, so a cancelled request never wastes a handshake;
* idle connections (at most :data:`MAX_IDLE`, newest reused first) keep reading, so an
  upstream that closes one is noticed at once and the connection is never handed out;
  one timer closes those idle longer than :data:`IDLE_TIMEOUT`;
* a refused or failed connect is :class:`UpstreamUnavailable` (502); a connect that
  takes longer than ``connect_timeout`` is :class:`UpstreamTimeout` (504) -- nginx's
  mapping;
* ``https://`` upstreams are verified with service-identity
  (``optionsForClientTLS``) against every certificate of ``ca_file`` when configured,
  else the platform's trust store (:mod:`eventgw.upstream.trust`; the file is read
  once, when the pool is built, and a bad one is a ``ConfigError`` then).

The request that uses a connection attaches itself as the connection's
:class:`ResponseSink` and gets the parsed response events; back-pressure runs through
:meth:`UpstreamConnection.pause_reading` (the client reads slowly) and
:meth:`ResponseSink.upstream_paused` (the upstream reads slowly).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from twisted.internet import defer, error, protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._reactor import default_reactor
from eventgw.config import ApiUpstream
from eventgw.errors import (
    GatewayError,
    PoolExhausted,
    ResponseError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from eventgw.headers import Headers
from eventgw.http2 import WRITES
from eventgw.upstream.address import UpstreamAddress
from eventgw.upstream.h1client import (
    MAX_RESPONSE_HEAD,
    NEED_DATA,
    ClientConnection,
    Data,
    Ended,
    ResponseHead,
)
from eventgw.upstream.trust import UpstreamTrust, client_tls_options, load_trust

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_IDLE",
    "MAX_WAITING",
    "ResponseSink",
    "UpstreamConnection",
    "UpstreamPool",
    "upstream_endpoint",
]


# The reactor must provide IReactorTime and IReactorTCP (and, for upstream host names,
# IReactorPluggableNameResolver); typing cannot spell the intersection.
Reactor = Any

# Idle keep-alive connections kept per upstream: enough for a burst to find warm
# connections, few enough not to hog the upstream's connection slots.
MAX_IDLE: Final = 32

# Close a connection idle this long.  Shorter than the keep-alive timeout of most
# servers (nginx 75 s, Twisted 60 s+) so we usually close first; when the upstream
# closes first anyway, the idle connection sees the FIN and drops out of the pool.
IDLE_TIMEOUT: Final = 30.0

# Requests allowed to wait for a connection when max_connections are all busy; more
# fail fast with 503 instead of holding client connections and memory.
MAX_WAITING: Final = 256


class ResponseSink(Protocol):
    """Whoever currently uses an :class:`UpstreamConnection` (one request at a time)."""

    def response_head(self, head: ResponseHead) -> None:
        """The final status line and headers arrived."""

    def response_data(self, data: bytes) -> None:
        """A piece of the response body arrived."""

    def response_ended(self, trailers: Headers) -> None:
        """The response is complete; the sink must release the connection."""

    def upstream_failed(self, reason: Exception) -> None:
        """The connection failed or the response was invalid; it is closed."""

    def upstream_paused(self) -> None:
        """The upstream's send buffer is full: stop sending request body."""

    def upstream_resumed(self) -> None:
        """Request body may flow again."""


class UpstreamConnection(protocol.Protocol):
    """One TCP (or TLS) connection to the upstream, with its codec.

    Invariant: ``sink`` is set exactly while a request uses the connection; an idle
    connection that receives bytes is broken and gets closed.  It is the transport's
    streaming producer, so a full send buffer reaches the sink as ``upstream_paused``.

    :ivar codec: the HTTP/1.1 state of this connection.
    :ivar reused: whether the current request is not the connection's first.
    :ivar lost: whether the connection has closed.
    :ivar idle_since: ``reactor.seconds()`` when it last became idle.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.codec = ClientConnection(max_head_bytes=MAX_RESPONSE_HEAD)
        self.sink: ResponseSink | None = None
        self.reused = False
        self.lost = False
        self.idle_since = 0.0
        self._reading_paused = False
        self._write_paused = False
        self._aborted = False

    # --- called by Twisted ---------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            # The head goes out in one write; body pieces must not wait for an ACK.
            set_no_delay(True)
        transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # Bytes on an idle connection (a 408, or garbage): it cannot be reused.
            self.abort()
            return
        self.codec.receive_data(data)
        # The HTTP/2 client connections this read writes on flush once, at its end (a
        # small answer then leaves as HEADERS + DATA with END_STREAM).
        WRITES.hold()
        try:
            self._deliver(sink)
        finally:
            WRITES.release()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        sink = self.sink
        if sink is not None:
            self.codec.receive_data(b"")
            if self._deliver(sink) and self.sink is sink:
                self.sink = None
                sink.upstream_failed(UpstreamUnavailable("upstream connection lost"))
        self.pool._connection_lost(self)

    # IPushProducer, for the transport's send buffer.
    def pauseProducing(self) -> None:
        self._write_paused = True
        if self.sink is not None:
            self.sink.upstream_paused()

    def resumeProducing(self) -> None:
        self._write_paused = False
        if self.sink is not None:
            self.sink.upstream_resumed()

    def stopProducing(self) -> None:
        pass

    # --- called by the request using the connection ----------------------------------

    @property
    def write_paused(self) -> bool:
        """Whether the transport asked us to stop writing."""
        return self._write_paused

    def write(self, data: bytes) -> None:
        """Send bytes to the upstream."""
        if data and self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        """Stop reading the response (the client is slow)."""
        if not self._reading_paused and not self.lost:
            self._reading_paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        """Read the response again."""
        if self._reading_paused and not self.lost:
            self._reading_paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]

    def close(self) -> None:
        """Close a connection between requests (a FIN, or close_notify for TLS)."""
        if self.lost or self.transport is None:
            return
        # A TLS transport postpones loseConnection while a producer is registered.
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once (RST), without a graceful close."""
        if not self.lost and not self._aborted and self.transport is not None:
            self._aborted = True
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _deliver(self, sink: ResponseSink) -> bool:
        """Hand parsed events to ``sink``; return whether the response is unfinished."""
        codec = self.codec
        try:
            while self.sink is sink:
                event = codec.next_event()
                if event is NEED_DATA:
                    return True
                kind = type(event)
                if kind is Data:
                    sink.response_data(event.data)  # type: ignore[union-attr]
                elif kind is ResponseHead:
                    sink.response_head(event)  # type: ignore[arg-type]
                elif kind is Ended:
                    sink.response_ended(event.trailers)  # type: ignore[union-attr]
                    return False
        except ResponseError as e:
            if self.sink is sink:
                self.sink = None
                self.abort()
                sink.upstream_failed(e)
            return False
        return False


class _Discard(protocol.Protocol):
    """Takes a health check's response body and drops the connection at once."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()


class _ConnectionFactory(protocol.Factory):
    noisy = False  # "Starting factory" lines per pool would be noise

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        return UpstreamConnection(self.pool)


def upstream_endpoint(
    upstream: ApiUpstream,
    reactor: Reactor,
    *,
    connect_to: str | None = None,
    trust: UpstreamTrust | None = None,
) -> IStreamClientEndpoint:
    """The endpoint of ``upstream``'s host: connecting to ``connect_to`` (an address
    the host name resolved to) when given, TLS verified against the name either way."""
    name = upstream.host
    host = connect_to or name
    # The endpoint's own timeout is a backstop; UpstreamPool applies connect_timeout to
    # the whole attempt (name resolution included).
    timeout = upstream.connect_timeout + 1.0
    endpoint: IStreamClientEndpoint
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, upstream.port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, upstream.port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, upstream.port, timeout=timeout)
    if upstream.scheme == "https":
        # Read (and checked) here, when the gateway is built; connections share it.
        if trust is None:
            trust = load_trust(upstream.ca_file, "master_api.ca_file")
        address = UpstreamAddress.for_http(upstream.scheme, name, upstream.port)
        endpoint = wrapClientTLS(client_tls_options(address, trust, [b"http/1.1"]), endpoint)
    return endpoint


def _connect_timed_out(result: object, timeout: float) -> Failure:
    # Endpoints fail a cancelled attempt with ConnectingCancelledError, which
    # addTimeout does not recognise as its own cancellation: say what happened.
    return Failure(UpstreamTimeout(f"timed out connecting to the upstream after {timeout:g}s"))


def _connect_error(failure: Failure) -> GatewayError:
    if isinstance(failure.value, GatewayError):
        return failure.value
    if failure.check(defer.TimeoutError, error.TimeoutError):
        return UpstreamTimeout("timed out connecting to the upstream")
    if failure.check(error.ConnectionRefusedError):
        return UpstreamUnavailable("the upstream refused the connection")
    if failure.check(error.DNSLookupError):
        return UpstreamUnavailable("the upstream's host name does not resolve")
    return UpstreamUnavailable("cannot connect to the upstream")


class UpstreamPool:
    """Keep-alive connections to one upstream.

    Invariant: ``len(_connections) + len(_connecting) <= max_connections``; every
    connection in ``_idle`` is also in ``_connections``, has no sink and is reading.
    """

    log = Logger()

    def __init__(
        self,
        upstream: ApiUpstream,
        *,
        reactor: Reactor | None = None,
        max_idle: int = MAX_IDLE,
        idle_timeout: float = IDLE_TIMEOUT,
        max_waiting: int = MAX_WAITING,
        endpoint: IStreamClientEndpoint | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self.upstream = upstream
        self._reactor = reactor
        self._endpoint = endpoint or upstream_endpoint(upstream, reactor)
        self._factory = _ConnectionFactory(self)
        self._max_connections = upstream.max_connections
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._max_waiting = max_waiting
        self._idle: list[UpstreamConnection] = []
        # Counted against max_connections:
        self._connections: set[UpstreamConnection] = set()
        # Every connection not yet lost, retired ones included (close() waits for them):
        self._open: set[UpstreamConnection] = set()
        self._connecting: set[Deferred[UpstreamConnection]] = set()
        self._waiters: deque[Deferred[UpstreamConnection]] = deque()
        self._reaper: IDelayedCall | None = None
        self._closed = False
        self._close_waiters: list[Deferred[None]] = []
        self.connections_made = 0

    # --- the public API ----------------------------------------------------------

    def acquire(self, *, fresh: bool = False) -> Deferred[UpstreamConnection]:
        """A connection for one request, idle or new; ``fresh`` skips the idle ones.

        Cancelling the Deferred gives up the place in the queue.  Fails with
        :class:`UpstreamUnavailable`, :class:`UpstreamTimeout` or :class:`PoolExhausted`.
        """
        if self._closed:
            return defer.fail(UpstreamUnavailable("the gateway is shutting down"))
        idle = self._idle
        if idle and not fresh:
            conn = idle.pop()
            conn.reused = True
            return defer.succeed(conn)
        if fresh and idle and self._free_slots() <= 0:
            # Make room: the oldest idle connection is the most likely to be stale.
            self._retire(idle.pop(0))
        if self._free_slots() <= 0 and len(self._waiters) >= self._max_waiting:
            return defer.fail(PoolExhausted("all upstream connections are busy"))
        waiter: Deferred[UpstreamConnection] = Deferred(self._cancel_waiter)
        self._waiters.append(waiter)
        self._connect_for_waiters()
        return waiter

    def take_idle(self) -> UpstreamConnection | None:
        """An idle connection, if one is waiting: :meth:`acquire` without a Deferred."""
        if self._idle and not self._closed:
            conn = self._idle.pop()
            conn.reused = True
            return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        """Give back a connection whose request is over (completely or not)."""
        conn.sink = None
        codec = conn.codec
        if self._closed or conn.lost or not (codec.reusable or codec.idle):
            self._retire(conn)
            self._connect_for_waiters()
            return
        if codec.reusable:
            codec.start_next_cycle()
        conn.resume_reading()
        if self._waiters:
            conn.reused = True
            self._waiters.popleft().callback(conn)
            return
        if len(self._idle) >= self._max_idle:
            self._retire(conn)
            return
        conn.idle_since = self._reactor.seconds()
        self._idle.append(conn)
        if self._reaper is None:
            self._reaper = self._reactor.callLater(self._idle_timeout, self._reap)

    def discard(self, conn: UpstreamConnection) -> None:
        """Close a connection in use without a graceful end (client gone, timeout)."""
        conn.sink = None
        self._connections.discard(conn)
        conn.abort()
        self._connect_for_waiters()

    def close(self) -> Deferred[None]:
        """Close every connection; fires when all of them are gone."""
        self._closed = True
        if self._reaper is not None and self._reaper.active():
            self._reaper.cancel()
        self._reaper = None
        while self._waiters:
            self._waiters.popleft().errback(
                UpstreamUnavailable("the gateway is shutting down")
            )
        for attempt in list(self._connecting):
            attempt.cancel()
        for conn in list(self._open):
            if conn.sink is None:
                conn.close()
            else:
                conn.abort()
        self._idle.clear()
        self._connections.clear()
        if not self._open:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()
        self._close_waiters.append(done)
        return done

    def probe(self, path: str, host_header: bytes) -> Deferred[bool]:
        """An active health check: ``GET path`` on a connection of its own (not one of
        the pool's); fires ``True`` for a 2xx answer, ``False`` for any other, errbacks
        when the host cannot be reached."""
        from twisted.web.client import Agent
        from twisted.web.http_headers import Headers as WebHeaders

        endpoint = self._endpoint

        class _Endpoints:
            def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
                return endpoint

        agent = Agent.usingEndpointFactory(self._reactor, _Endpoints())
        scheme = self.upstream.scheme.encode("ascii")
        answer = agent.request(
            b"GET", scheme + b"://" + host_header + path.encode("ascii"),
            WebHeaders({b"user-agent": [b"eventgw-health-check"]}),
        )

        def answered(response: Any) -> bool:
            # Nothing of the body is needed: close the connection now.
            if response.length != 0:
                response.deliverBody(_Discard())
            code: int = response.code
            return 200 <= code < 300

        return cast("Deferred[bool]", answer.addCallback(answered))

    @property
    def idle_count(self) -> int:
        """Connections waiting in the pool for a request."""
        return len(self._idle)

    @property
    def open_count(self) -> int:
        """Connections open (idle or in use) or being opened."""
        return len(self._connections) + len(self._connecting)

    # --- internals -----------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._max_connections - len(self._connections) - len(self._connecting)

    def _connect_for_waiters(self) -> None:
        while (
            not self._closed
            and len(self._connecting) < len(self._waiters)
            and self._free_slots() > 0
        ):
            self._connect()

    def _connect(self) -> None:
        attempt = cast("Deferred[UpstreamConnection]", self._endpoint.connect(self._factory))
        attempt.addTimeout(
            self.upstream.connect_timeout, self._reactor, onTimeoutCancel=_connect_timed_out
        )
        self._connecting.add(attempt)
        attempt.addCallbacks(
            self._connected,
            self._connect_failed,
            callbackArgs=(attempt,),
            errbackArgs=(attempt,),
        )

    def _connected(
        self, conn: UpstreamConnection, attempt: Deferred[UpstreamConnection]
    ) -> None:
        self._connecting.discard(attempt)
        if conn.lost:
            return
        if self._closed:
            self._open.add(conn)
            conn.abort()
            return
        self.connections_made += 1
        self._connections.add(conn)
        self._open.add(conn)
        if self._waiters:
            self._waiters.popleft().callback(conn)
        else:
            self.release(conn)

    def _connect_failed(self, failure: Failure, attempt: Deferred[UpstreamConnection]) -> None:
        self._connecting.discard(attempt)
        if self._closed:
            return
        reason = _connect_error(failure)
        self.log.warn(
            "cannot connect to {upstream}: {reason}",
            upstream=self.upstream.url,
            reason=failure.getErrorMessage(),
        )
        if self._waiters:
            self._waiters.popleft().errback(reason)
            # The others get an attempt of their own (and their own answer).
            self._connect_for_waiters()

    def _cancel_waiter(self, waiter: Deferred[UpstreamConnection]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _retire(self, conn: UpstreamConnection) -> None:
        """Close a connection that will not be used again."""
        conn.sink = None
        self._connections.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.lost or conn.transport is None:
            return
        if conn.codec.idle or (conn.codec.response_complete and conn.codec.request_complete):
            conn.close()
        else:
            conn.abort()

    def _reap(self) -> None:
        self._reaper = None
        deadline = self._reactor.seconds() - self._idle_timeout
        idle = self._idle
        while idle and idle[0].idle_since <= deadline:
            self._retire(idle[0])
        if idle:
            delay = idle[0].idle_since - deadline
            self._reaper = self._reactor.callLater(delay, self._reap)

    def _connection_lost(self, conn: UpstreamConnection) -> None:
        self._connections.discard(conn)
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if self._closed:
            if not self._open and self._close_waiters:
                waiters, self._close_waiters = self._close_waiters, []
                for done in waiters:
                    done.callback(None)
            return
        self._connect_for_waiters()
