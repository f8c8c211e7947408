# -*- test-case-name: tests.test_events -*-
"""The ``/events`` target: CloudEvents over HTTP in, Event Broker gRPC calls out.

Shell module: Twisted (Deferreds, logging) and a broker client; the parsing and
transcoding are the core's (:mod:`eventgw.events.cloudevents`, :mod:`eventgw.events.transcode`).

The broker is called through the :class:`eventgw.events.client.BrokerClient` interface;
``client=`` chooses the implementation: ``"grpcio"`` (the default) or ``"h2"`` (unary
calls over the gateway's own HTTP/2 connections, on the reactor thread).

Per exchange (:class:`EventExchange`):

1. at the head: the route comes from the transcoder's table (404 / 405 with ``Allow``),
   ``OPTIONS`` answers the CloudEvents webhook handshake, a declared body over the
   event size limit is a 413 at once;
2. the body is collected up to the limit (413 as soon as it is passed);
3. at the end of the body the request message is built (400 naming the attribute or
   field; nothing is sent to the broker), the broker is called with the caller's trace
   headers and an ``x-request-id`` as metadata;
4. the answer: ``202 Accepted`` with the broker's response as proto3 JSON for event
   routes (200 for other annotated methods), or ``google.rpc.Status`` JSON with the
   status from the gRPC code table.  Every response carries ``x-request-id``.

A client that goes away cancels its broker call.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.admin.metrics import record_event
from eventgw.config import BROKER_CLIENTS, MIN_EVENT_SIZE, BrokerUpstream, Limits
from eventgw.errors import BrokerCallFailed, GatewayError, GrpcStatus, MethodNotAllowed
from eventgw.events.client import (
    FORWARDED_HEADERS,
    BrokerClient,
    call_metadata,
    new_broker_client,
)
from eventgw.events.h2broker import H2BrokerClient
from eventgw.events.transcode import (
    BodyKind,
    RouteMatch,
    RouteTable,
    build_request,
    mapping_summary,
    path_of,
    query_of,
    response_body,
    status_body,
)
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)

if TYPE_CHECKING:
    from eventgw.upstream.cluster import Cluster

__all__ = ["BROKER_CLIENTS", "DEFAULT_CLIENT", "EVENT_BROKER_SERVICE", "EventExchange",
           "EventsEndpoint"]

EVENT_BROKER_SERVICE: Final = eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"]

# The broker client implementations (config key event_broker.client): grpcio, or
# unary calls over the gateway's own HTTP/2 connections (eventgw.events.h2broker),
# one thread instead of grpcio's pool.
DEFAULT_CLIENT: Final = "grpcio"
# CloudEvents HTTP webhook spec, section 4.2: the rate a sender may use ("*": unlimited;
# the broker pushes back with RESOURCE_EXHAUSTED -> 429 instead).
_WEBHOOK_ALLOWED_RATE: Final = b"*"
_EVENT_KINDS: Final = (BodyKind.CLOUDEVENT, BodyKind.CLOUDEVENT_BATCH)
_DEFAULT_AUTH_CHALLENGE: Final = b'Bearer realm="eventgw"'


class EventsEndpoint:
    """The RequestTarget for ``/events``: routes from the broker's proto annotations.

    :ivar routes: the HTTP route table read from the service descriptors at start.
    :ivar client: the broker client, or ``None`` when no broker is configured (503).
    :ivar running: the calls in flight, so that :meth:`close` can wait for them.
    """

    log = Logger()

    def __init__(
        self,
        broker: BrokerUpstream | None,
        limits: Limits,
        *,
        reactor: IReactorTime | IReactorFromThreads | None = None,
        services: Sequence[ServiceDescriptor] = (EVENT_BROKER_SERVICE,),
        client: str = DEFAULT_CLIENT,
        previous: EventsEndpoint | None = None,
        claim_headers: Iterable[bytes] = (),
    ) -> None:
        # What reaches the broker as metadata: trace context, the request id, the
        # caller's identity and the claim headers the JWT providers forward.
        self.forwarded = frozenset(FORWARDED_HEADERS) | frozenset(claim_headers)
        self.routes = RouteTable.from_services(services)
        for route, grpc_path in mapping_summary(self.routes).items():
            self.log.info("events route {route} -> {method}", route=route, method=grpc_path)
        if client not in BROKER_CLIENTS:
            raise ValueError(f"unknown broker client {client!r} (one of {BROKER_CLIENTS})")
        self.client_kind = client
        self.client: BrokerClient | None = None
        if broker is not None:
            self.client = new_broker_client(
                broker, client, reactor=reactor,
                previous=previous.client if previous is not None else None,
            )
        # CloudEvents intermediaries must pass events of 64 KiB, whatever the config says.
        self.max_event_size = max(limits.max_event_size, MIN_EVENT_SIZE)
        self.running: set[Deferred[Message]] = set()
        self._closing = False

    @property
    def upstream(self) -> str:
        """The broker's address for logs (``-`` when none)."""
        return "-" if self.client is None else self.client.target

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        head.log_fields["route"] = "events"
        head.log_fields["upstream"] = self.upstream
        metadata, request_id = call_metadata(head.headers, self.forwarded)
        extra = [(b"x-request-id", request_id)]
        path = path_of(head.target)
        method = head.method.decode("latin-1")
        if method == "OPTIONS":
            self._webhook_handshake(head, writer, path, extra)
            return StaticReply()
        try:
            match = self.routes.match(method, path, head.header(b"content-type"))
        except MethodNotAllowed as e:
            allow = ", ".join([*e.allowed, "OPTIONS"]).encode()
            send_error(writer, e.http_status, e.message, grpc_code=e.grpc_status,
                       headers=[*extra, (b"allow", allow)])
            return StaticReply()
        except GatewayError as e:
            send_error(writer, e.http_status, e.message, grpc_code=e.grpc_status, headers=extra)
            return StaticReply()
        if self.client is None or self._closing:
            reason = "no event broker configured" if self.client is None else "shutting down"
            send_error(writer, 503, reason, grpc_code=GrpcStatus.UNAVAILABLE, headers=extra)
            return StaticReply()
        if head.content_length is not None and head.content_length > self.max_event_size:
            send_error(writer, 413, self.too_large_message(), headers=extra)
            return StaticReply()
        return EventExchange(self, head, writer, match, metadata, extra)

    def too_large_message(self) -> str:
        """The 413 message, naming the limit."""
        return f"request body larger than the event size limit ({self.max_event_size} bytes)"

    def _webhook_handshake(
        self, head: RequestHead, writer: ResponseWriter, path: str, extra: Headers
    ) -> None:
        allowed = self.routes.allowed_methods(path)
        if not allowed:
            send_error(writer, 404, f"no route for {path}", headers=extra)
            return
        headers = [
            (b"allow", ", ".join([*allowed, "OPTIONS"]).encode()),
            (b"content-length", b"0"),
            *extra,
        ]
        origin = head.header(b"webhook-request-origin")
        if origin is not None:
            headers.append((b"webhook-allowed-origin", origin))
            headers.append((b"webhook-allowed-rate", _WEBHOOK_ALLOWED_RATE))
        writer.write_head(200, headers, end=True)

    def clusters(self) -> list[Cluster[Any]]:
        """The brokers the h2 client balances over (grpcio balances by itself)."""
        client = self.client
        return [client.cluster] if isinstance(client, H2BrokerClient) else []

    def busy(self) -> bool:
        """Whether a broker call is in flight."""
        return bool(self.running)

    def close(self) -> Deferred[None]:
        """Answer new exchanges with 503, let running calls finish, close the channel."""
        self._closing = True
        client = self.client
        if client is None:
            return succeed(None)
        waiting = DeferredList(list(self.running), consumeErrors=True)
        done: Deferred[None] = Deferred()

        def close_channel(_: object) -> None:
            client.close().chainDeferred(done)

        waiting.addBoth(close_channel)
        return done


class EventExchange:
    """One ``/events`` exchange: collects the body, calls the broker, answers.

    Invariant: exactly one response (or abort) is written; after that, or after the
    client went away, every further input is ignored.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: EventsEndpoint,
        head: RequestHead,
        writer: ResponseWriter,
        match: RouteMatch,
        metadata: Headers,
        extra_headers: Headers,
    ) -> None:
        self._endpoint = endpoint
        self._head = head
        self._writer = writer
        self._match = match
        self._metadata = metadata
        self._extra = extra_headers
        self._chunks: list[bytes] = []
        self._size = 0
        self._finished = False
        self._call: Deferred[Message] | None = None
        # The mode label of eventgw_events_total (None: not an event route, or counted).
        self._mode = _event_mode(match, head)

    def _count(self, outcome: str) -> None:
        mode = self._mode
        if mode is not None:
            self._mode = None
            record_event(mode, outcome)

    def body_received(self, data: bytes) -> None:
        if self._finished:
            return
        self._size += len(data)
        if self._size > self._endpoint.max_event_size:
            self._chunks.clear()
            self._fail(413, self._endpoint.too_large_message())
            return
        self._chunks.append(data)

    def body_ended(self, trailers: Headers) -> None:
        if self._finished:
            return
        body = b"".join(self._chunks)
        self._chunks.clear()
        route = self._match.route
        try:
            request = build_request(self._match, query_of(self._head.target),
                                    self._head.headers, body)
        except GatewayError as e:
            self._fail(e.http_status, e.message, e.grpc_status)
            return
        assert self._endpoint.client is not None
        call = self._endpoint.client.call(route, request, self._metadata)
        self._call = call
        # One callback, not a chain: the running set, the answer and the last-resort
        # errback in one place (each link of a Deferred chain costs a few microseconds).
        self._endpoint.running.add(call)
        call.addBoth(self._settled)

    def connection_lost(self, reason: str) -> None:
        self._finished = True
        self._chunks.clear()
        if self._call is not None and not self._call.called:
            self._call.cancel()

    # --- answers ---------------------------------------------------------------------

    def _settled(self, result: Message | Failure) -> None:
        if self._call is not None:
            self._endpoint.running.discard(self._call)
        try:
            if isinstance(result, Failure):
                self._failed(result)
            else:
                self._answered(result)
        except Exception:
            self._bug(Failure())

    def _answered(self, response: Message) -> None:
        self._head.log_fields["grpc_status"] = int(GrpcStatus.OK)
        self._count("accepted")
        if self._finished:
            return
        self._finished = True
        route = self._match.route
        body = response_body(route, response)
        status = 202 if route.body_kind in _EVENT_KINDS else 200
        self._writer.write_head(status, [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            *self._extra,
        ])
        self._writer.write_body(body)
        self._writer.end()

    def _failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            self._head.log_fields["grpc_status"] = int(GrpcStatus.CANCELLED)
            self._count("cancelled")
            return  # the client went away and cancelled the call
        error = failure.value
        if not isinstance(error, BrokerCallFailed):
            failure.raiseException()
        assert isinstance(error, BrokerCallFailed)
        self._head.log_fields["grpc_status"] = int(error.code)
        self._count("failed")
        if self._finished:
            return
        self._finished = True
        if self._writer.head_sent:
            self._writer.abort()
            return
        details, details_bin = error.details, error.details_bin
        if error.code == GrpcStatus.UNAVAILABLE:
            # The details name the broker's address ("ipv4:10.0.0.5:50051: Failed to
            # connect"): they stay in the log, the client hears the kind.
            self.log.warn(
                "{path}: event broker unavailable: {details} (request_id={request_id})",
                path=self._head.target.decode("latin-1"), details=details,
                request_id=self._head.log_fields.get("request_id", "-"),
            )
            details, details_bin = "event broker unavailable", None
        body = status_body(error.code, details, details_bin)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *self._extra,
        ]
        if error.code == GrpcStatus.UNAUTHENTICATED:
            challenge = error.trailer("www-authenticate")
            headers.append((
                b"www-authenticate",
                challenge.encode("latin-1") if challenge else _DEFAULT_AUTH_CHALLENGE,
            ))
        self._writer.write_head(error.http_status, headers)
        self._writer.write_body(body)
        self._writer.end()

    def _bug(self, failure: Failure) -> None:
        self.log.failure("{route} exchange failed: {path}", failure,
                         route="events", path=self._head.target.decode("latin-1"))
        if not self._finished:
            self._fail(500, "internal error")

    def _fail(self, status: int, message: str, grpc_code: int | None = None) -> None:
        self._finished = True
        self._count("rejected")
        send_error(self._writer, status, message, grpc_code=grpc_code, headers=self._extra)


def _event_mode(match: RouteMatch, head: RequestHead) -> str | None:
    """``batch``, ``structured`` or ``binary`` for an event route, else None."""
    kind = match.route.body_kind
    if kind is BodyKind.CLOUDEVENT_BATCH:
        return "batch"
    if kind is BodyKind.CLOUDEVENT:
        content_type = head.header(b"content-type") or b""
        return "structured" if content_type.startswith(b"application/cloudevents") else "binary"
    return None
