# -*- test-case-name: tests.test_gateway -*-
"""The router: every exchange from either protocol goes to one of the three flows.

Shell module.  :class:`Gateway` is the :class:`~eventgw.exchange.RequestTarget`
both downstream protocols hand their exchanges to.  It asks :mod:`eventgw.routing`
which flow serves the request and passes the exchange on.  It is given the three targets
(:meth:`Gateway.from_config` builds them from the configuration) and closes them at
shutdown, or when a reload has replaced it and the work it started is done
(:meth:`Gateway.busy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, DeferredList

from eventgw.api.target import ApiProxy
from eventgw.api.websocket import WebSocketRelay
from eventgw.config import GatewayConfig
from eventgw.events.target import EventsEndpoint
from eventgw.exchange import (
    RequestHandler,
    RequestHead,
    RequestTarget,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.grpc.target import GrpcRelay
from eventgw.grpc.web import GrpcWebAdapter
from eventgw.routing import MethodPolicy, Route, route_for
from eventgw.upstream.cluster import Cluster

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["ClosableTarget", "Gateway"]


class ClosableTarget(RequestTarget, Protocol):
    """A flow's target: takes exchanges, says whether work is in flight upstream, and
    closes its upstream pools and channels."""

    def busy(self) -> bool: ...

    def close(self) -> Deferred[None]: ...


def _clusters(target: object) -> list[Cluster[Any]]:
    """The host clusters a flow's target balances over."""
    if isinstance(target, ApiProxy):
        return [target.cluster]
    if isinstance(target, GrpcRelay):
        return [] if target.cluster is None else [target.cluster]
    if isinstance(target, EventsEndpoint):
        cluster = getattr(target.client, "cluster", None)
        return [cluster] if isinstance(cluster, Cluster) else []
    return []


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
    ) -> None:
        self.api = api
        self.events = events
        self.grpc = grpc
        self.grpc_web = GrpcWebAdapter(grpc)
        self.websocket = websocket

    @classmethod
    def from_config(
        cls, config: GatewayConfig, reactor: IReactorTime, previous: Gateway | None = None
    ) -> Gateway:
        """The three flows' targets built from ``config``, and the router over them.

        ``previous``: the router a reload replaces; upstream hosts both configurations
        name keep their pools (and connections), handed over to the new targets.
        """
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
                for cluster in _clusters(target):
                    cluster.give_back()
                target.close()
            raise
        return cls(api=api, events=events, grpc=grpc, websocket=websocket)

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
            for cluster in _clusters(target):
                found[cluster.name] = cluster.snapshot()
        return found

    def close(self) -> Deferred[object]:
        """Close every upstream pool and channel."""
        targets = [
            t for t in (self.api, self.events, self.grpc, self.websocket) if t is not None
        ]
        return DeferredList([t.close() for t in targets], consumeErrors=True)  # type: ignore[return-value]
