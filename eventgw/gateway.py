# -*- test-case-name: tests.test_gateway -*-
"""The router: every exchange from either protocol goes to one of the three flows.

Shell module.  :class:`Gateway` is the :class:`~eventgw.exchange.RequestTarget`
both downstream protocols hand their exchanges to.  It asks :mod:`eventgw.routing`
which flow serves the request and passes the exchange on.  It is given the three targets
(:meth:`Gateway.from_config` builds them from the configuration) and closes them at
shutdown, or when a reload has replaced it and the work it started is done
(:meth:`Gateway.busy`).

Before a flow sees a request, the gateway runs the access checks in this order
(:mod:`eventgw.auth`): a CORS preflight is answered (204); the credentials and the
access rules decide (:class:`~eventgw.auth.guard.Guard`: 401, 403, 503), and the head's
headers are rewritten to what the flow forwards (credentials out, ``x-eventgw-client``
in); the rate limit takes a token (429; a refused request takes none).  A refusal is
the one error shape (gRPC: the trailers-only answer of :func:`eventgw.grpcwire.trailers_only`),
so no upstream and no broker is ever called for it, and the downstream protocol reads
and drops (or closes on) a refused request's body as for any early answer.  The
headers CORS and the rate limit add to a response go through :class:`_HeadersWriter`,
made only for requests that have some.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred, DeferredList

from eventgw._reactor import default_reactor
from eventgw.admin.metrics import record_auth_denied, record_ratelimited
from eventgw.api.target import ApiProxy
from eventgw.api.websocket import WebSocketRelay
from eventgw.auth.cors import CorsPolicy
from eventgw.auth.guard import Denied, Guard, without_client_header
from eventgw.auth.jwks import JwtAuth
from eventgw.auth.ratelimit import Limited, RateLimiter
from eventgw.config import AccessConfig, AuthConfig, GatewayConfig
from eventgw.errors import grpc_code_for_http
from eventgw.events.target import EventsEndpoint
from eventgw.exchange import (
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
    RequestTarget,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.grpc.target import GrpcRelay
from eventgw.grpc.web import GrpcWebAdapter, GrpcWebWriter
from eventgw.grpc.webcodec import Flavour, flavour_of
from eventgw.grpcwire import trailers_only
from eventgw.routing import MethodPolicy, Route, route_for
from eventgw.upstream.cluster import Cluster

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# The ``route`` label of a request refused before its flow.
_ROUTE_LABELS = {
    Route.API: "api", Route.EVENTS: "events", Route.GRPC: "grpc", Route.GRPC_WEB: "grpc",
    Route.WEBSOCKET: "api",
}

__all__ = ["ClosableTarget", "Gateway"]


class ClosableTarget(RequestTarget, Protocol):
    """A flow's target: takes exchanges, says whether work is in flight upstream and
    which host clusters it balances over, and closes its upstream pools and channels."""

    def busy(self) -> bool: ...

    def clusters(self) -> list[Cluster[Any]]: ...

    def close(self) -> Deferred[None]: ...


class Gateway:
    """Routes exchanges to the ``/api`` proxy, the ``/events`` endpoint or the gRPC relay.

    :ivar api: the reverse proxy, or ``None`` when ``master_api.http`` is not configured.
    :ivar events: the events endpoint (it answers 503 itself when no broker is configured).
    :ivar grpc: the gRPC relay (it answers UNIMPLEMENTED/UNAVAILABLE itself).
    """

    def __init__(
        self,
        *,
        api: ClosableTarget | None,
        events: ClosableTarget,
        grpc: ClosableTarget,
        websocket: ClosableTarget | None = None,
        guard: Guard | None = None,
        limiter: RateLimiter | None = None,
        cors: CorsPolicy | None = None,
        reactor: IReactorTime | None = None,
        jwt: JwtAuth | None = None,
    ) -> None:
        self.api = api
        self.events = events
        self.grpc = grpc
        self.grpc_web = GrpcWebAdapter(grpc)
        self.websocket = websocket
        self.guard = guard if guard is not None else Guard(AuthConfig(), AccessConfig())
        self.limiter = limiter if limiter is not None and limiter.limits else None
        self.cors = cors if cors else None
        self.reactor = default_reactor(reactor)
        #: The JWT providers' key sources (started here, stopped by :meth:`close`).
        self.jwt = jwt
        # Whether any check beyond stripping a spoofed identity header runs.
        self._checks = not self.guard.open or self.limiter is not None or self.cors is not None

    @classmethod
    def from_config(
        cls, config: GatewayConfig, reactor: IReactorTime, previous: Gateway | None = None
    ) -> Gateway:
        """The three flows' targets built from ``config``, and the router over them.

        ``previous``: the router a reload replaces; upstream hosts both configurations
        name keep their pools (and connections), handed over to the new targets; rate
        limits whose rule is unchanged keep their buckets, JWT providers of the same
        JWKS URL their keys.
        """
        jwt = None
        if config.auth.jwt:
            # A JWKS file that cannot be read raises ConfigError (the start stops, a
            # reload keeps the old configuration) before any pool exists.
            jwt = JwtAuth.from_config(
                config.auth, reactor, previous.jwt if previous is not None else None
            )
        old_api = previous.api if previous is not None else None
        old_events = previous.events if previous is not None else None
        old_grpc = previous.grpc if previous is not None else None
        built: list[ClosableTarget] = []
        try:
            api = (
                None
                if config.master_api_http is None
                else ApiProxy(
                    config.master_api_http, config.limits, reactor=reactor,
                    previous=old_api if isinstance(old_api, ApiProxy) else None,
                )
            )
            if api is not None:
                built.append(api)
            events = EventsEndpoint(
                config.event_broker,
                config.limits,
                reactor=reactor,
                client=config.event_broker.client if config.event_broker else "grpcio",
                previous=old_events if isinstance(old_events, EventsEndpoint) else None,
                claim_headers=[
                    header.encode("ascii")
                    for provider in config.auth.jwt
                    for _, header in provider.forward_claims
                ],
            )
            built.append(events)
            grpc = GrpcRelay(
                config.master_api_grpc,
                MethodPolicy.from_lists(config.grpc_allow, config.grpc_deny),
                reactor=reactor,
                previous=old_grpc if isinstance(old_grpc, GrpcRelay) else None,
            )
            built.append(grpc)
            websocket = (
                None
                if config.master_api_http is None
                else WebSocketRelay(
                    config.master_api_http, config.limits, reactor=reactor,
                    cluster=api.cluster if api is not None else None,
                )
            )
        except BaseException:
            # The old router keeps serving with every pool it had.
            for target in built:
                for cluster in target.clusters():
                    cluster.give_back()
                target.close()
            if jwt is not None:
                jwt.stop()
            raise
        gateway = cls(
            api=api,
            events=events,
            grpc=grpc,
            websocket=websocket,
            guard=Guard(config.auth, config.access, jwt),
            limiter=RateLimiter(
                config.rate_limits, previous.limiter if previous is not None else None
            ),
            cors=CorsPolicy(config.cors),
            reactor=reactor,
            jwt=jwt,
        )
        if jwt is not None:
            jwt.start()
        return gateway

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        http2 = head.protocol == "HTTP/2"
        content_type = None
        # gRPC (HTTP/2 only) and gRPC-Web (POST, either protocol) are told by the
        # content type; other HTTP/1.1 requests need no look at their headers.
        if http2 or head.method == b"POST":
            for name, value in head.headers:
                if name == b"content-type":
                    content_type = value
                    break
        route = route_for(head.target, content_type, http2, head.upgrade)
        if not self._checks:
            # Nothing configured: only a client's own x-eventgw-client is dropped.
            head.headers = without_client_header(head.headers)
        else:
            checked = self._check(route, head, writer)
            if checked is None:
                return StaticReply()
            writer = checked
        if route is Route.GRPC:
            return self.grpc.start_exchange(head, writer)
        if route is Route.GRPC_WEB:
            return self.grpc_web.start_exchange(head, writer)
        if route is Route.WEBSOCKET:
            if self.websocket is not None:
                return self.websocket.start_exchange(head, writer)
            head.log_fields["route"] = "api"
            send_error(writer, 503, "no Master API HTTP upstream is configured")
            return StaticReply()
        if route is Route.UPGRADE_REFUSED:
            head.log_fields["route"] = "none"
            send_error(writer, 400, "WebSocket connections are relayed only under /api")
            return StaticReply()
        if route is Route.API:
            if self.api is not None:
                return self.api.start_exchange(head, writer)
            head.log_fields["route"] = "api"
            send_error(writer, 503, "no Master API HTTP upstream is configured")
            return StaticReply()
        if route is Route.EVENTS:
            return self.events.start_exchange(head, writer)
        head.log_fields["route"] = "none"
        path = head.path.decode("latin-1")
        send_error(writer, 404, f"no route for {path}")
        return StaticReply()

    def _check(
        self, route: Route, head: RequestHead, writer: ResponseWriter
    ) -> ResponseWriter | None:
        """CORS preflight, access, rate limit; the writer the flow writes to, or ``None``
        when the request was answered here."""
        fields = head.log_fields
        extra: Headers = []
        cors = self.cors
        if cors is not None:
            preflight = cors.preflight(head)
            if preflight is not None:
                fields["route"] = _ROUTE_LABELS.get(route, "none")
                fields["decision"] = "preflight" if preflight.allowed else "preflight_refused"
                writer.write_head(204, preflight.headers, end=True)
                return None
            extra += cors.response_headers(head) or ()
        now = self.reactor.seconds()
        outcome = self.guard.check(head, now)
        if isinstance(outcome, Denied):
            label = _ROUTE_LABELS.get(route, "none")
            fields["route"] = label
            fields["principal"] = "-"
            fields["decision"] = "denied"
            record_auth_denied(label, outcome.reason)
            self._refuse(route, head, writer, outcome.status, outcome.message,
                         [*outcome.headers, *extra])
            return None
        head.headers = outcome.headers
        principal = outcome.principal
        fields["principal"] = principal or "-"
        limiter = self.limiter
        if limiter is not None:
            taken = limiter.check(head.path.decode("latin-1"), principal, head.peer, now)
            if isinstance(taken, Limited):
                label = _ROUTE_LABELS.get(route, "none")
                fields["route"] = label
                fields["decision"] = "ratelimited"
                record_ratelimited(label)
                retry = [(b"retry-after", b"%d" % taken.retry_after), *taken.headers]
                self._refuse(route, head, writer, 429, "rate limit exceeded",
                             [*retry, *extra])
                return None
            if taken is not None:
                extra += taken.headers
        fields["decision"] = "allowed"
        return _HeadersWriter(writer, extra) if extra else writer

    @staticmethod
    def _refuse(
        route: Route,
        head: RequestHead,
        writer: ResponseWriter,
        status: int,
        message: str,
        headers: Headers,
    ) -> None:
        """The one error shape: JSON, or for a gRPC call a trailers-only answer (in the
        gRPC-Web form for a gRPC-Web call)."""
        code = grpc_code_for_http(status)
        if route is Route.GRPC or route is Route.GRPC_WEB:
            head.log_fields["grpc_status"] = int(code)
            if route is Route.GRPC_WEB:
                flavour = flavour_of(head.header(b"content-type") or b"") or Flavour.BINARY
                cors = head.header(b"origin") is not None
                writer = GrpcWebWriter(writer, flavour, cors=cors)
            writer.write_head(200, [*trailers_only(code, message), *headers], end=True)
        else:
            send_error(writer, status, message, grpc_code=code, headers=headers)

    def busy(self) -> bool:
        """Whether exchanges this router started are still in flight upstream: an
        ``/api`` request holding a pooled connection, a broker call, a relayed gRPC
        call.  A router a reload replaced is closed once this is false."""
        targets = (self.api, self.events, self.grpc, self.websocket)
        return any(t.busy() for t in targets if t is not None)

    def upstreams(self) -> dict[str, object]:
        """Every balanced upstream's hosts and their state (the admin page)."""
        found: dict[str, object] = {}
        for target in (self.api, self.grpc, self.events):
            for cluster in target.clusters() if target is not None else ():
                found[cluster.name] = cluster.snapshot()
        return found

    def close(self) -> Deferred[object]:
        """Close every upstream pool and channel."""
        targets = [
            t for t in (self.api, self.events, self.grpc, self.websocket, self.jwt)
            if t is not None
        ]
        return DeferredList([t.close() for t in targets], consumeErrors=True)  # type: ignore[return-value]


class _HeadersWriter:
    """A writer that adds ``extra`` headers to the response head (CORS, RateLimit)."""

    __slots__ = ("_extra", "_writer")

    def __init__(self, writer: ResponseWriter, extra: Headers) -> None:
        self._writer = writer
        self._extra = extra

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        self._writer.write_head(status, [*headers, *self._extra], end=end)

    def write_body(self, data: bytes) -> None:
        self._writer.write_body(data)

    def end(self, trailers: Headers | None = None) -> None:
        self._writer.end(trailers)

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        self._writer.abort(error_code)

    def pause_request_body(self) -> None:
        self._writer.pause_request_body()

    def resume_request_body(self) -> None:
        self._writer.resume_request_body()

    def register_producer(self, producer: Producer) -> None:
        self._writer.register_producer(producer)

    def unregister_producer(self) -> None:
        self._writer.unregister_producer()

    @property
    def head_sent(self) -> bool:
        return self._writer.head_sent
