# -*- test-case-name: tests.test_grpc_relay -*-
"""Pooled HTTP/2 client connections to a gRPC upstream (the Master API, or the broker).

Shell module: connecting, TLS and the choice of connection; the HTTP/2 of each
connection (frames, streams, flow control, GOAWAY, keepalive) is
:mod:`eventgw.upstream.h2client`.  The relay (:mod:`eventgw.grpc.target`) opens an
:class:`~eventgw.upstream.h2client.UpstreamStream` with a header list and a
:class:`~eventgw.upstream.h2client.StreamListener` and never sees a connection.

* One or more connections per address (h2c, or TLS with ALPN ``h2`` for
  ``grpcs://``, verified with service-identity against every certificate of
  ``ca_file`` or the platform's trust store -- :mod:`eventgw.upstream.trust`, read
  once when the pool is built); streams are multiplexed, the peer's
  SETTINGS_MAX_CONCURRENT_STREAMS is respected by opening another connection (up to
  ``max_connections``) or queueing (bounded by :data:`MAX_WAITING_STREAMS`).
* A connection counts as ready only once the server's SETTINGS arrived, all within
  ``connect_timeout``; until then streams wait, and if it fails they fail with it.
* After a failed connect, new calls fail at once until the back-off delay has passed
  (doubling up to :data:`MAX_BACKOFF`), so a down Master API costs a client one
  connect timeout at most, not one per call.
* A connection that received GOAWAY drains: its accepted streams finish, new streams
  go to a new connection.
* Keepalive (see :mod:`eventgw.upstream.h2client`): ``config.keepalive_interval``,
  doubled after each GOAWAY "too_many_pings"; PINGs on connections without calls only
  when ``keepalive_without_calls`` says so.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Final, cast

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._reactor import default_reactor
from eventgw.config import GrpcUpstream
from eventgw.exchange import Headers
from eventgw.grpcwire import frame_message
from eventgw.upstream.address import UpstreamAddress
from eventgw.upstream.cluster import Cluster, Host
from eventgw.upstream.h2client import (
    MIN_PING_INTERVAL_WITHOUT_DATA,
    H2ClientConnection,
    StreamListener,
    UpstreamStream,
)
from eventgw.upstream.trust import UpstreamTrust, client_tls_options, load_trust

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IAddress,
        IDelayedCall,
        IOpenSSLClientConnectionCreator,
        IReactorTime,
        IStreamClientEndpoint,
    )

__all__ = [
    "INITIAL_BACKOFF",
    "MAX_BACKOFF",
    "MAX_WAITING_STREAMS",
    "GrpcConnectionPool",
    "grpc_cluster",
]

# Streams waiting for a connection slot; beyond it calls fail (UNAVAILABLE) rather
# than pile up without bound.
MAX_WAITING_STREAMS: Final = 1000
# Back-off after a failed connect: the first retry waits INITIAL_BACKOFF, then the
# delay doubles up to MAX_BACKOFF.  Short, because a waiting client holds a call.
INITIAL_BACKOFF: Final = 0.1
MAX_BACKOFF: Final = 5.0


class _HealthCheck:
    """The listener of one grpc.health.v1 Check: SERVING or not."""

    def __init__(self) -> None:
        self.done: Deferred[bool] = Deferred()
        self.stream: UpstreamStream | None = None
        self.body = b""

    def _end(self, passed: bool) -> None:
        if not self.done.called:
            self.done.callback(passed)

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        if end_stream:
            self.upstream_trailers(headers)

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self.body += data[:1024]
        if self.stream is not None:
            self.stream.acknowledge(flow_length)
        if end_stream:
            self._end(False)

    def upstream_trailers(self, trailers: Headers) -> None:
        from google.protobuf.message import DecodeError
        from grpc_health.v1 import health_pb2

        status = dict(trailers).get(b"grpc-status")
        if status != b"0" or len(self.body) < 5:
            self._end(False)
            return
        try:
            answer = health_pb2.HealthCheckResponse.FromString(self.body[5:])
        except DecodeError:
            self._end(False)
            return
        self._end(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def upstream_reset(self, error_code: int) -> None:
        self._end(False)

    def upstream_failed(self, reason: str) -> None:
        self._end(False)

    def upstream_buffered(self, queued: int) -> None:
        pass

    def upstream_deadline_exceeded(self) -> None:
        self._end(False)


class _ConnectionFactory(Factory):
    noisy = False  # one per connection: "Starting factory" lines would be noise

    def __init__(self, pool: GrpcConnectionPool, reactor: IReactorTime) -> None:
        self.pool = pool
        self.reactor = reactor

    def buildProtocol(self, addr: IAddress | None) -> H2ClientConnection:
        return H2ClientConnection(self.pool, self.reactor)


class GrpcConnectionPool:
    """The HTTP/2 connections to one gRPC upstream address.

    :ivar address: ``host:port`` (for logs).
    :ivar authority: the ``:authority`` sent upstream.
    :ivar scheme: ``b"http"`` or ``b"https"``.
    :param trust: the CAs a ``grpcs://`` upstream is verified against; by default
        ``config.ca_file`` (read now, a bad file being a ``ConfigError`` naming
        ``master_api.ca_file``), or the platform's store without one.
    :param keepalive_without_calls: also ping connections with no stream open (gRPC's
        ``keepalive_permit_without_calls``; the server must permit it too).
    :param min_ping_interval_without_data: the least time between two keepalive
        PINGs with no response data in between: the server's
        ``grpc.http2.min_ping_interval_without_data_ms`` (5 minutes by default).
    """

    log = Logger()

    def __init__(
        self,
        config: GrpcUpstream,
        *,
        reactor: IReactorTime | None = None,
        initial_backoff: float = INITIAL_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        trust: UpstreamTrust | None = None,
        keepalive_without_calls: bool = False,
        min_ping_interval_without_data: float = MIN_PING_INTERVAL_WITHOUT_DATA,
        connect_to: str | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        # An address ``config.host`` resolved to (the name stays the TLS server name
        # and the :authority).
        self.connect_to = connect_to
        self.reactor = reactor
        self.config = config
        self.keepalive_interval = config.keepalive_interval
        self.keepalive_without_calls = keepalive_without_calls
        self.min_ping_interval_without_data = min_ping_interval_without_data
        self.address = config.address
        address = UpstreamAddress(config.host, config.port)
        self.authority = address.authority
        self.scheme = b"https" if config.tls else b"http"
        # Built once, so the CA file is read (and checked) now, not per connection.
        self._tls: IOpenSSLClientConnectionCreator | None = None
        if config.tls:
            if trust is None:
                trust = load_trust(config.ca_file, "master_api.ca_file")
            self._tls = client_tls_options(address, trust, [b"h2"])
        self._connections: list[H2ClientConnection] = []
        self._draining: list[H2ClientConnection] = []
        self._connecting = 0
        self._waiting: deque[UpstreamStream] = deque()
        self._backoff = initial_backoff
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._retry_at = 0.0
        self._last_error = ""
        self._closing = False
        self._pending_connects: list[Deferred[H2ClientConnection]] = []
        self._handshaking: dict[H2ClientConnection, IDelayedCall] = {}

    # -- the relay's side -------------------------------------------------------------

    def open_stream(
        self, headers: Headers, listener: StreamListener, deadline: float | None = None
    ) -> UpstreamStream:
        """A new request; it starts at once or when a connection slot is free.

        ``deadline`` (on this pool's reactor clock) is the call's: ``grpc-timeout``
        goes upstream as what is left of it when the HEADERS are sent.
        """
        stream = UpstreamStream(self, headers, listener, deadline)
        for connection in self._connections:
            if connection.has_capacity():
                connection.start_stream(stream)
                connection.flush_soon()
                return stream
        self._enqueue(stream)
        return stream

    def forget(self, stream: UpstreamStream) -> None:
        """A waiting stream was cancelled before it got a connection."""
        try:
            self._waiting.remove(stream)
        except ValueError:
            pass

    def close(self) -> Deferred[None]:
        """Fail waiting streams, close every connection; fires when all are gone."""
        self._closing = True
        for attempt in self._pending_connects:
            attempt.cancel()
        self._fail_waiting("the gateway is shutting down")
        connections = self._connections + self._draining
        closed = [connection.closed for connection in connections]
        for connection in connections:
            connection.shut_down()
        if not closed:
            return succeed(None)
        done: Deferred[None] = DeferredList(closed).addCallback(lambda _: None)
        return done

    def probe(self, service: str, timeout: float) -> Deferred[bool]:
        """An active health check: ``grpc.health.v1.Health/Check`` for ``service`` on
        this pool's connections; fires ``True`` when the answer is SERVING."""
        from grpc_health.v1 import health_pb2

        check = _HealthCheck()
        headers: Headers = [
            (b":method", b"POST"),
            (b":scheme", self.scheme),
            (b":path", b"/grpc.health.v1.Health/Check"),
            (b":authority", self.authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"eventgw-health-check"),
        ]
        request = health_pb2.HealthCheckRequest(service=service).SerializeToString()
        check.stream = self.open_stream(headers, check, self.reactor.seconds() + timeout)
        check.stream.send(frame_message(request), end=True)
        return check.done

    @property
    def connection_count(self) -> int:
        return len(self._connections) + len(self._draining)

    # -- connections' side ------------------------------------------------------------

    def connection_ready(self, connection: H2ClientConnection) -> None:
        self._handshake_over(connection)
        self._backoff = self._initial_backoff
        self._retry_at = 0.0
        if self._closing:
            connection.shut_down()
            return
        self._connections.append(connection)
        self.log.debug("{upstream} connected", upstream=self.address)
        self._drain_waiting()

    def pings_too_frequent(self, connection: H2ClientConnection) -> None:
        self.keepalive_interval *= 2
        self.log.warn(
            "{upstream} answered keepalive PINGs with GOAWAY too_many_pings; keepalive "
            "interval now {interval}s",
            upstream=self.address,
            interval=self.keepalive_interval,
        )

    def capacity_freed(self, connection: H2ClientConnection) -> None:
        if self._waiting:
            self._drain_waiting()
        if connection.draining and not connection.streams and connection.transport:
            connection.transport.loseConnection()

    def connection_draining(self, connection: H2ClientConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
            self._draining.append(connection)
        if self._waiting:
            self._drain_waiting()

    def connection_lost(
        self, connection: H2ClientConnection, reason: Failure | None
    ) -> None:
        if self._handshake_over(connection) and not self._closing:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self._connect_failed("connection closed before HTTP/2 SETTINGS: " + why)
        for group in (self._connections, self._draining):
            if connection in group:
                group.remove(connection)
        if self._waiting and not self._closing:
            self._drain_waiting()

    # -- internals ----------------------------------------------------------------------

    def _enqueue(self, stream: UpstreamStream) -> None:
        if self._closing:
            stream.fail("the gateway is shutting down")
            return
        if len(self._waiting) >= MAX_WAITING_STREAMS:
            stream.fail("too many calls waiting for a connection")
            return
        self._waiting.append(stream)
        self._drain_waiting()

    def _drain_waiting(self) -> None:
        waiting = self._waiting
        touched: set[H2ClientConnection] = set()
        for connection in self._connections:
            while waiting and connection.has_capacity():
                stream = waiting.popleft()
                connection.start_stream(stream)
                touched.add(connection)
        for connection in touched:
            connection.flush_soon()
        if not waiting or self._connecting or self._closing:
            return
        if len(self._connections) >= self.config.max_connections:
            # Every allowed connection is busy: wait for a slot (bounded queue).
            # Draining connections do not count: they are on their way out.
            return
        if self.reactor.seconds() < self._retry_at:
            self._fail_waiting(
                f"{self._last_error} (next attempt in "
                f"{self._retry_at - self.reactor.seconds():.1f}s)"
            )
            return
        self._connect()

    def _fail_waiting(self, reason: str) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        for stream in waiting:
            stream.fail(reason)

    def _endpoint(self) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        endpoint = HostnameEndpoint(
            self.reactor,
            (self.connect_to or self.config.host).encode("idna"),
            self.config.port,
            timeout=self.config.connect_timeout,
        )
        if self._tls is None:
            return endpoint
        return wrapClientTLS(self._tls, endpoint)

    def _connect(self) -> None:
        self._connecting += 1
        attempt = cast(
            "Deferred[H2ClientConnection]",
            self._endpoint().connect(_ConnectionFactory(self, self.reactor)),
        )
        self._pending_connects.append(attempt)

        def connected(connection: H2ClientConnection) -> None:
            self._pending_connects.remove(attempt)
            if connection.ready or connection.lost:
                self._connecting -= 1
                if connection.lost and not connection.ready and not self._closing:
                    self._connect_failed("connection lost during the handshake")
                return
            # Connected is not enough: the connection is ready when the server's
            # SETTINGS arrived, all within the connect timeout.
            self._handshaking[connection] = self.reactor.callLater(
                self.config.connect_timeout, self._handshake_timeout, connection
            )

        def failed(failure: Failure) -> None:
            if attempt in self._pending_connects:
                self._pending_connects.remove(attempt)
            self._connecting -= 1
            if self._closing:
                return
            self._connect_failed(failure.getErrorMessage() or repr(failure.value))

        attempt.addCallbacks(connected, failed)

    def _handshake_timeout(self, connection: H2ClientConnection) -> None:
        self._handshaking.pop(connection, None)
        self._connecting -= 1
        self._connect_failed("no HTTP/2 SETTINGS within the connect timeout")
        if connection.transport is not None:
            connection.transport.abortConnection()  # type: ignore[attr-defined]

    def _handshake_over(self, connection: H2ClientConnection) -> bool:
        """Settle a connection's handshake; ``True`` if it was still pending."""
        timer = self._handshaking.pop(connection, None)
        if timer is None:
            return False
        if timer.active():
            timer.cancel()
        self._connecting -= 1
        return True

    def _connect_failed(self, reason: str) -> None:
        self._last_error = f"cannot reach {self.address}: {reason}"
        self.log.warn("{upstream} connect failed: {reason}", upstream=self.address,
                      reason=reason)
        self._retry_at = self.reactor.seconds() + self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)
        self._fail_waiting(self._last_error)


def grpc_cluster(
    name: str,
    upstream: GrpcUpstream,
    reactor: IReactorTime,
    *,
    trust_key: str = "master_api.ca_file",
    pool: GrpcConnectionPool | None = None,
) -> Cluster[GrpcConnectionPool]:
    """The hosts of a gRPC upstream, an HTTP/2 pool each (``pool``: the single host's,
    given by a test), checked with grpc.health.v1 when ``health_check`` is set."""
    trust = load_trust(upstream.ca_file, trust_key) if upstream.tls and pool is None else None

    def make_pool(host: str, address: str, port: int) -> GrpcConnectionPool:
        if pool is not None:
            return pool
        config = replace(
            upstream, host=host, port=port,
            address=UpstreamAddress(host, port).authority.decode("ascii"),
        )
        return GrpcConnectionPool(
            config, reactor=reactor, trust=trust,
            connect_to=None if address == host else address,
        )

    health = upstream.balancing.health_check

    def probe(host: Host[GrpcConnectionPool]) -> Deferred[bool]:
        assert health is not None
        return host.pool.probe(health.grpc_service, health.timeout)

    return Cluster(
        name,
        upstream.entries,
        upstream.balancing,
        make_pool=make_pool,
        close_pool=lambda p: p.close(),
        probe=probe if health is not None else None,
        reactor=reactor,
    )
