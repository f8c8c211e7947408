# -*- test-case-name: tests.test_webproxy -*-
"""The ``/api`` reverse proxy target: one exchange in, one upstream HTTP/1.1 request out.

Shell module.  :class:`ApiProxy` is a :class:`~eventgw.exchange.RequestTarget`; each
exchange becomes an :class:`ApiExchange` that takes a pooled connection from
:class:`~eventgw.upstream.httppool.UpstreamPool`, sends the request head (and the body bytes
already received) in one write, streams the rest of the body, and streams the
response's status, headers, body and trailers back through the
:class:`~eventgw.exchange.ResponseWriter`.

Back-pressure both ways, so memory stays bounded whatever the sizes:

* request body: while no connection is ready, at most :data:`PENDING_BODY_HIGH` bytes
  are held before the client is paused; afterwards the upstream transport's own
  producer calls pause the client (``pause_request_body``) and resume it;
* response body: the exchange is the writer's producer; when the client falls behind
  it stops reading the upstream connection.

Errors, the way nginx answers them: a refused or failed connection or an invalid
response is 502, a connect or response timeout 504 -- each a JSON
``google.rpc.Status`` body via :func:`~eventgw.exchange.send_error` while the head is
unsent, an abort of the client's response once it went out.  The response timeout
counts from the request to the response head and then between any two upstream reads
or request-body writes (nginx's ``proxy_read_timeout``); it stands still while the
client itself holds the response back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._reactor import default_reactor
from eventgw.config import ApiUpstream, Limits
from eventgw.errors import (
    GatewayError,
    PayloadTooLarge,
    ResponseError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from eventgw.exchange import (
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.headers import Headers, request_headers_for_upstream, response_headers_for_downstream
from eventgw.upstream.address import UpstreamAddress
from eventgw.upstream.cluster import Cluster, Host, same_pools
from eventgw.upstream.h1client import LocalProtocolError, ResponseHead
from eventgw.upstream.httppool import (
    Reactor,
    UpstreamConnection,
    UpstreamPool,
    upstream_endpoint,
)
from eventgw.upstream.trust import load_trust

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["PENDING_BODY_HIGH", "ApiExchange", "ApiProxy"]


# Request body held while the upstream connection is being set up; past this the
# client is paused.  64 KiB covers almost every API request body in one write.
PENDING_BODY_HIGH: Final = 64 * 1024

# Request bytes small enough to be copied into the head's single write.
_COALESCE_MAX: Final = 16 * 1024

# RFC 9110 section 9.2.2: these may be retried after a failure on a stale connection.
_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Upstream answers that count as the host failing, for ejection.
_FAILURE_STATUSES: Final = frozenset({502, 503, 504})

# Trailer fields that describe framing or routing and must not travel as trailers
# (RFC 9110 section 6.5.1); hop-by-hop ones are dropped by headers.py.
_FORBIDDEN_TRAILERS: Final = frozenset(
    {b"content-length", b"content-type", b"host", b"authorization", b"set-cookie"}
)


class ApiProxy:
    """The ``/api`` target: forwards each exchange to one of ``upstream``'s hosts.

    :param upstream: ``master_api.http`` from the config (one URL or several hosts).
    :param limits: ``max_request_body`` bounds the request body (413 beyond it).
    :param reactor: ``IReactorTime`` + ``IReactorTCP``; the global one by default.
    :param pool: an existing pool to use for the (single) host instead of a new one
        (tests, sharing).
    :param previous: the proxy a reload replaces: its pools of hosts both name are
        taken over.
    :ivar cluster: the hosts, a pool each, and the choice among them.
    """

    log = Logger()

    def __init__(
        self,
        upstream: ApiUpstream,
        limits: Limits,
        *,
        reactor: Reactor | None = None,
        pool: UpstreamPool | None = None,
        previous: ApiProxy | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self.upstream = upstream
        self.reactor = reactor
        self.max_body = limits.max_request_body
        self.response_timeout = upstream.response_timeout
        self.deadlines = _Deadlines(reactor, upstream.response_timeout)
        # Read (and checked) once, when the gateway is built; every host shares it.
        trust = (
            load_trust(upstream.ca_file, "master_api.ca_file")
            if upstream.scheme == "https" and pool is None
            else None
        )
        given = pool

        def make_pool(name: str, address: str, port: int) -> UpstreamPool:
            if given is not None:
                return given
            # nginx's `proxy_set_header Host $proxy_host` default: the host's own name.
            authority = UpstreamAddress.for_http(upstream.scheme, name, port).authority
            config = replace(
                upstream, host=name, port=port,
                url=f"{upstream.scheme}://{authority.decode('ascii')}",
            )
            endpoint = upstream_endpoint(
                config, reactor, connect_to=None if address == name else address, trust=trust
            )
            return UpstreamPool(config, reactor=reactor, endpoint=endpoint)

        health = upstream.balancing.health_check

        def probe(host: Host[UpstreamPool]) -> defer.Deferred[bool]:
            assert health is not None
            return host.pool.probe(health.path, _host_header(host.pool))

        self.cluster: Cluster[UpstreamPool] = Cluster(
            "master_api_http",
            upstream.entries,
            upstream.balancing,
            make_pool=make_pool,
            close_pool=lambda p: p.close(),
            probe=probe if health is not None else None,
            reactor=reactor,
        )
        if previous is not None and same_pools(previous.upstream, upstream):
            # A reload: hosts both configurations name keep their connections.
            self.cluster.take_over(previous.cluster)
        self.cluster.start()

    @property
    def host_header(self) -> bytes:
        """The first host's ``Host`` (each host's requests carry its own name)."""
        return _host_header(self.pool)

    @property
    def pool(self) -> UpstreamPool:
        """The first host's pool (the only one with a single address)."""
        return next(iter(self.cluster.hosts.values())).pool

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        """Forward one exchange; a declared body over the limit is refused at once."""
        fields = head.log_fields
        fields["route"] = "api"
        fields["upstream"] = self.upstream.url
        if head.content_length is not None and head.content_length > self.max_body:
            send_error(writer, 413, f"request body larger than {self.max_body} bytes")
            return StaticReply()
        host = self.cluster.pick()
        if host is None:
            # Every host failed its health checks: at once, no connect attempt.
            fields["upstream_closed"] = "no host available"
            send_error(writer, 502, "no upstream host is available")
            return StaticReply()
        return ApiExchange(self, head, writer, host)

    def clusters(self) -> list[Cluster[Any]]:
        """The Master API hosts this proxy balances over."""
        return [self.cluster]

    def busy(self) -> bool:
        """Whether a request is in flight on any host."""
        return self.cluster.busy()

    def close(self) -> defer.Deferred[None]:
        """Close the pooled connections (in-flight requests are cut)."""
        closed = self.cluster.close()
        self.deadlines.stop()
        return closed.addCallback(lambda _: None)


def _host_header(pool: UpstreamPool) -> bytes:
    config = pool.upstream
    return UpstreamAddress.for_http(config.scheme, config.host, config.port).authority


class _Deadlines:
    """The response timeouts of all exchanges of one proxy, checked by one timer.

    A ``callLater`` plus ``cancel`` per request would cost more than the rest of the
    bookkeeping; instead exchanges stamp their last activity and a single timer,
    running while any exchange is watched, times out those idle for ``timeout``
    seconds.  A timeout fires up to one tick late (a tenth of it, at most a second).

    Invariant: ``_call`` is pending whenever ``_watched`` is not empty.
    """

    def __init__(self, reactor: Reactor, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout
        self._tick = min(1.0, timeout / 10)
        self._watched: dict[ApiExchange, None] = {}
        self._call: IDelayedCall | None = None
        self._stopped = False

    def watch(self, exchange: ApiExchange) -> None:
        self._watched[exchange] = None
        if self._call is None and not self._stopped:
            self._call = self._reactor.callLater(self._tick, self._check)

    def unwatch(self, exchange: ApiExchange) -> None:
        self._watched.pop(exchange, None)

    def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        now = self._reactor.seconds()
        limit = now - self._timeout
        expired = []
        for exchange in self._watched:
            if exchange.held_by_client:
                exchange.touch()
            elif exchange.idle_since <= limit:
                expired.append(exchange)
        for exchange in expired:
            self._watched.pop(exchange, None)
            exchange.timed_out()
        # Keep ticking while anything is watched; stop when idle (a later watch()
        # starts it again).
        if self._watched and not self._stopped:
            self._call = self._reactor.callLater(self._tick, self._check)


class ApiExchange:
    """One proxied exchange.  It is the request's handler, the response's producer and
    the upstream connection's sink.

    Invariant: once ``_finished`` is set, the connection has been released or
    discarded, the timer is cancelled and nothing more is written anywhere.
    """

    log = Logger()

    __slots__ = (
        "_acquiring",
        "_activity",
        "_body_done",
        "_body_received",
        "_body_streamed",
        "_client_paused",
        "_conn",
        "_failed",
        "_finished",
        "_head_only",
        "_host",
        "_host_header",
        "_paused_for_pending",
        "_paused_for_upstream",
        "_pending",
        "_pending_size",
        "_pool",
        "_proxy",
        "_retried",
        "_trailers",
        "_tried",
        "_upstream_headers",
        "_watched",
        "head",
        "writer",
    )

    def __init__(
        self,
        proxy: ApiProxy,
        head: RequestHead,
        writer: ResponseWriter,
        host: Host[UpstreamPool],
    ) -> None:
        self._proxy = proxy
        self.head = head
        self.writer = writer
        self._conn: UpstreamConnection | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._body_received = 0
        self._body_done = not head.body_expected
        self._body_streamed = False
        self._trailers: Headers = []
        self._finished = False
        self._retried = False
        self._head_only = False
        self._client_paused = False
        self._paused_for_pending = False
        self._paused_for_upstream = False
        self._watched = False
        self._activity = 0.0
        self._upstream_headers: Headers | None = None
        self._acquiring: defer.Deferred[UpstreamConnection] | None = None
        self._failed = False
        self._tried: list[str] = []
        self._host: Host[UpstreamPool] | None = None
        self._use(host)
        # The response timeout also bounds the wait for a pooled connection.
        self._touch()
        self._start_timer()
        conn = self._pool.take_idle()
        if conn is not None:
            # The common case, without a Deferred: a warm connection is waiting.
            self._acquiring = None
            self._connected(conn)
        else:
            self._acquire(fresh=False)

    # --- getting a connection ------------------------------------------------------

    def _use(self, host: Host[UpstreamPool]) -> None:
        self._host = host
        self._pool = host.pool
        self._host_header = _host_header(host.pool)
        self._tried.append(host.key)
        self._proxy.cluster.started(host)
        self.head.log_fields["upstream_host"] = host.key

    def _release_host(self) -> None:
        host = self._host
        if host is not None:
            self._host = None
            self._proxy.cluster.finished(host, failed=self._failed)

    def _acquire(self, *, fresh: bool) -> None:
        attempt = self._pool.acquire(fresh=fresh)
        self._acquiring = attempt
        attempt.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn: UpstreamConnection) -> None:
        self._acquiring = None
        if self._finished:
            self._pool.release(conn)
            return
        self._conn = conn
        conn.sink = self
        head = self.head
        headers = self._upstream_headers
        if headers is None:
            headers = self._upstream_headers = request_headers_for_upstream(
                head.headers, peer=head.peer, authority=head.authority, scheme=head.scheme
            )
        if not head.body_expected:
            length: int | None = 0
        elif self._body_done and not self._trailers:
            # The whole body is here already (typical for HTTP/2 without
            # content-length): send it with a length instead of chunked.
            length = self._pending_size
        else:
            length = head.content_length
        codec = conn.codec
        try:
            parts = [codec.send_request(head.method, head.target, self._host_header,
                                        headers, content_length=length)]
            for piece in self._pending:
                parts.append(codec.send_body(piece))
            if self._body_done:
                parts.append(codec.send_end(self._trailers))
        except LocalProtocolError as e:
            self._fail(502, f"cannot forward the request: {e}")
            return
        if self._pending:
            self._body_streamed = True
        self._pending = []
        self._pending_size = 0
        if len(parts) == 1:
            conn.write(parts[0])
        elif sum(map(len, parts)) <= _COALESCE_MAX:
            conn.write(b"".join(parts))  # one write, one TLS record, one segment
        else:
            for part in parts:
                conn.write(part)
        self._touch()
        if self._paused_for_pending:
            self._paused_for_pending = False
            if not conn.write_paused:
                self.writer.resume_request_body()
        if conn.write_paused:
            self.upstream_paused()

    def _connect_failed(self, failure: Failure) -> None:
        self._acquiring = None
        if self._finished or failure.check(defer.CancelledError):
            return
        reason = failure.value
        if isinstance(reason, UpstreamUnavailable) and len(self._tried) < 2:
            # Nothing reached the host (refused, does not resolve): once, elsewhere.
            other = self._proxy.cluster.pick(self._tried)
            if other is not None:
                self._failed = True
                self._release_host()
                self._failed = False
                self.head.log_fields["upstream_retried"] = True
                self._use(other)
                self._acquire(fresh=False)
                return
        if isinstance(reason, GatewayError):
            self._fail(reason.http_status, reason.message)
        else:
            self.log.failure("unexpected error while connecting upstream", failure)
            self._fail(502, "cannot connect to the upstream")

    # --- RequestHandler: the client's side ------------------------------------------

    def body_received(self, data: bytes) -> None:
        if self._finished:
            return
        self._body_received += len(data)
        if self._body_received > self._proxy.max_body:
            self._too_large()
            return
        conn = self._conn
        if conn is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > PENDING_BODY_HIGH and not self._paused_for_pending:
                self._paused_for_pending = True
                self.writer.pause_request_body()
            return
        try:
            conn.write(conn.codec.send_body(data))
        except LocalProtocolError as e:
            self._fail(502, f"cannot forward the request body: {e}")
            return
        self._body_streamed = True
        self._touch()

    def body_ended(self, trailers: Headers) -> None:
        if self._finished:
            return
        self._body_done = True
        self._trailers = trailers
        conn = self._conn
        if conn is None:
            return
        try:
            conn.write(conn.codec.send_end(trailers))
        except LocalProtocolError as e:
            self._fail(502, f"cannot forward the request body: {e}")
            return
        self._touch()

    def connection_lost(self, reason: str) -> None:
        if self._finished:
            return
        self.head.log_fields["upstream_closed"] = "client gone"
        self._finish(reusable=False)

    # --- Producer: the client's pace for the response ----------------------------------

    def pause_producing(self) -> None:
        self._client_paused = True
        if self._conn is not None:
            self._conn.pause_reading()

    def resume_producing(self) -> None:
        self._client_paused = False
        self._touch()
        if self._conn is not None:
            self._conn.resume_reading()

    # --- ResponseSink: the upstream's side ---------------------------------------------

    def response_head(self, head: ResponseHead) -> None:
        self._touch()
        if head.status in _FAILURE_STATUSES:
            self._failed = True
        headers = response_headers_for_downstream(head.headers)
        if head.has_body:
            self.writer.register_producer(self)
            self.writer.write_head(head.status, headers)
        else:
            self._head_only = True
            self.writer.write_head(head.status, headers, end=True)

    def response_data(self, data: bytes) -> None:
        self._touch()
        self.writer.write_body(data)

    def response_ended(self, trailers: Headers) -> None:
        if self._head_only:
            self._finish(reusable=True)
            return
        self.writer.unregister_producer()
        if trailers:
            trailers = [
                item
                for item in response_headers_for_downstream(trailers)
                if item[0] not in _FORBIDDEN_TRAILERS
            ]
        self._finish(reusable=True)
        self.writer.end(trailers or None)

    def upstream_failed(self, reason: Exception) -> None:
        if self._finished:
            return
        conn = self._conn
        if (
            isinstance(reason, ResponseError | UpstreamUnavailable)
            and conn is not None
            and conn.reused
            and not conn.codec.received_any
            and not self._body_streamed
            and not self._retried
            and self.head.method in _IDEMPOTENT
        ):
            # RFC 9112 section 9.3.1: the upstream closed a kept-alive connection just
            # as we used it.  Nothing was answered and nothing non-repeatable was sent.
            self._retried = True
            self._conn = None
            self._pool.discard(conn)
            if self._paused_for_upstream:
                # That connection's send buffer no longer matters.
                self._paused_for_upstream = False
                if not self._paused_for_pending:
                    self.writer.resume_request_body()
            self._acquire(fresh=True)
            return
        if isinstance(reason, GatewayError):
            self._fail(reason.http_status, reason.message)
        else:
            self._fail(502, "upstream connection failed")

    def upstream_paused(self) -> None:
        if not self._paused_for_upstream and not self._finished:
            self._paused_for_upstream = True
            if not self._paused_for_pending:
                self.writer.pause_request_body()

    def upstream_resumed(self) -> None:
        if self._paused_for_upstream and not self._finished:
            self._paused_for_upstream = False
            self._touch()
            if not self._paused_for_pending:
                self.writer.resume_request_body()

    # --- time ------------------------------------------------------------------------

    def _touch(self) -> None:
        self._activity = self._proxy.reactor.seconds()

    def _start_timer(self) -> None:
        self._watched = True
        self._proxy.deadlines.watch(self)

    def _cancel_timer(self) -> None:
        if self._watched:
            self._watched = False
            self._proxy.deadlines.unwatch(self)

    def timed_out(self) -> None:
        """The response timeout passed without activity (called by the deadlines)."""
        self._watched = False
        error = UpstreamTimeout("the upstream did not answer in time")
        self._fail(error.http_status, error.message)

    @property
    def idle_since(self) -> float:
        """``reactor.seconds()`` of the last upstream activity (the timeout's start)."""
        return self._activity

    @property
    def held_by_client(self) -> bool:
        """Whether the client paused the response (no timeout runs meanwhile)."""
        return self._client_paused

    def touch(self) -> None:
        """Restart the inactivity clock."""
        self._touch()

    # --- endings ---------------------------------------------------------------------

    def _too_large(self) -> None:
        error = PayloadTooLarge(f"request body larger than {self._proxy.max_body} bytes")
        self._fail(error.http_status, error.message)

    def _fail(self, status: int, message: str) -> None:
        """Answer with a JSON error (or abort the response) and drop the connection."""
        if self._finished:
            return
        self.log.warn(
            "{method} {path} -> {status}: {reason}",
            method=self.head.method.decode("latin-1"),
            path=self.head.path.decode("latin-1"),  # no query: it may hold secrets
            status=status,
            reason=message,
            upstream=self._host.key if self._host is not None else self._proxy.upstream.url,
        )
        if status in (502, 504):
            # Unreachable, reset, invalid or too slow (a full pool's 503 is ours).
            self._failed = True
        self._finish(reusable=False)
        self.writer.unregister_producer()
        send_error(self.writer, status, message)

    def _finish(self, *, reusable: bool) -> None:
        self._finished = True
        self._cancel_timer()
        self._release_host()
        attempt = self._acquiring
        if attempt is not None:
            self._acquiring = None
            attempt.cancel()
        conn = self._conn
        if conn is not None:
            self._conn = None
            if reusable:
                self._pool.release(conn)
            else:
                self._pool.discard(conn)
        self._pending = []
        if self._paused_for_pending or self._paused_for_upstream:
            # Let the protocol read (and drop) the rest of the body.
            self._paused_for_pending = self._paused_for_upstream = False
            self.writer.resume_request_body()
