# -*- test-case-name: tests.test_grpc_relay -*-
"""The gRPC relay target (flow 3): each downstream gRPC stream, relayed frame by frame
to the Master API over a pooled HTTP/2 connection.

Shell module.  :class:`GrpcRelay` is the :class:`~eventgw.exchange.RequestTarget` the
gateway hands every HTTP/2 stream with a gRPC content type.  It sees the client only
through the exchange interface (head, writer, handler); the decisions are made by
:class:`eventgw.grpc.relay.RelayStream`, and this module only carries its actions out --
on the writer, on the :class:`~eventgw.upstream.h2client.UpstreamStream` and on the
reactor's clock.

Refusals are trailers-only answers: a method outside ``grpc.allow`` or inside
``grpc.deny`` gets UNIMPLEMENTED (12), and so does every call when no
``master_api.grpc`` is configured (the gateway does not offer the method at all);
a configured but unreachable Master API gets UNAVAILABLE (14).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from eventgw._reactor import default_reactor
from eventgw.admin.metrics import grpc_answered
from eventgw.config import GrpcUpstream
from eventgw.errors import GrpcStatus
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
)
from eventgw.grpc.relay import (
    AbortResponse,
    Acknowledge,
    Action,
    CancelTimer,
    EndResponse,
    PauseRequestBody,
    RelayStream,
    ResetUpstream,
    ResumeRequestBody,
    SendUpstream,
    StartTimer,
    WriteBody,
    WriteHead,
    refusal,
)
from eventgw.grpcwire import trailers_only
from eventgw.routing import MethodPolicy
from eventgw.upstream.h2client import UpstreamStream
from eventgw.upstream.h2pool import GrpcConnectionPool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["GrpcRelay"]


class GrpcRelay:
    """Relays allowed gRPC calls to the Master API.

    :ivar pool: the upstream connections, or ``None`` when no upstream is configured.
    :ivar calls: the calls in progress.
    :ivar peak_unacknowledged: the most response bytes any call held unacknowledged
        to the Master API (bounded by the upstream stream window).
    :ivar peak_queued_upstream: the most request bytes any call queued towards the
        Master API (bounded by the high watermark plus one client window).
    """

    log = Logger()

    def __init__(
        self,
        upstream: GrpcUpstream | None,
        policy: MethodPolicy,
        *,
        reactor: IReactorTime | None = None,
        pool: GrpcConnectionPool | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self.reactor = reactor
        self.policy = policy
        if pool is None and upstream is not None:
            pool = GrpcConnectionPool(upstream, reactor=reactor)
        self.pool = pool
        self.calls: set[_RelayedCall] = set()
        self.peak_unacknowledged = 0
        self.peak_queued_upstream = 0

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        fields = head.log_fields
        fields["route"] = "grpc"
        fields["grpc_method"] = head.path.decode("utf-8", "replace")
        reason = refusal(head.path, self.policy)
        if reason is None and self.pool is None:
            reason = "no Master API gRPC upstream is configured"
        if reason is not None:
            fields["grpc_status"] = int(GrpcStatus.UNIMPLEMENTED)
            writer.write_head(200, trailers_only(GrpcStatus.UNIMPLEMENTED, reason), end=True)
            return StaticReply()
        assert self.pool is not None
        fields["upstream"] = self.pool.address
        call = _RelayedCall(self, self.pool, head, writer)
        call.begin()
        return call

    def busy(self) -> bool:
        """Whether a relayed call is in flight."""
        return bool(self.calls)

    def close(self) -> Deferred[None]:
        """Close the upstream connections; calls in flight end with UNAVAILABLE."""
        if self.pool is None:
            return succeed(None)
        return self.pool.close()

    def call_finished(self, call: _RelayedCall) -> None:
        self.calls.discard(call)
        state = call.state
        if state.peak_unacknowledged > self.peak_unacknowledged:
            self.peak_unacknowledged = state.peak_unacknowledged
        if state.peak_queued_upstream > self.peak_queued_upstream:
            self.peak_queued_upstream = state.peak_queued_upstream


class _RelayedCall:
    """One call: the downstream handler, the upstream listener and the response
    producer in one object, all of them feeding :class:`RelayStream`."""

    __slots__ = (
        "_answered", "_done", "_timer", "head", "pool", "relay", "state", "stream", "writer",
    )

    def __init__(
        self,
        relay: GrpcRelay,
        pool: GrpcConnectionPool,
        head: RequestHead,
        writer: ResponseWriter,
    ) -> None:
        self.relay = relay
        self.pool = pool
        self.head = head
        self.writer = writer
        self.state = RelayStream(head, pool.authority, pool.scheme)
        self.stream: UpstreamStream | None = None
        self._timer: IDelayedCall | None = None
        self._done = False
        # Whether the Master API sent a response head (for the method's metric label).
        self._answered = False

    def begin(self) -> None:
        self.relay.calls.add(self)
        self.writer.register_producer(self)
        timeout = self.state.timeout
        # Measured from here: the wait for a connection is deducted from the
        # grpc-timeout that goes upstream.
        deadline = None if timeout is None else self.relay.reactor.seconds() + timeout
        self.stream = self.pool.open_stream(self.state.request_headers, self, deadline)
        self._run(self.state.start())

    # -- RequestHandler (the client) ------------------------------------------------

    def body_received(self, data: bytes) -> None:
        self._run(self.state.request_data(data))

    def body_ended(self, trailers: Headers) -> None:
        self._run(self.state.request_ended_by_client())

    def connection_lost(self, reason: str) -> None:
        self._run(self.state.client_gone())

    # -- Producer (the client's reading pace) ----------------------------------------

    def pause_producing(self) -> None:
        self._run(self.state.response_paused())

    def resume_producing(self) -> None:
        self._run(self.state.response_resumed())

    # -- StreamListener (the Master API) ----------------------------------------------

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        self._answered = True
        self._run(self.state.upstream_headers(headers, end_stream))

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self._run(self.state.upstream_data(data, flow_length, end_stream))

    def upstream_trailers(self, trailers: Headers) -> None:
        self._run(self.state.upstream_trailers(trailers))

    def upstream_reset(self, error_code: int) -> None:
        self._run(self.state.upstream_reset(error_code))

    def upstream_failed(self, reason: str) -> None:
        # The address and the cause stay in the log; the client hears the kind.
        self.relay.log.warn(
            "{path}: Master API unavailable: {reason} (request_id={request_id})",
            path=self.head.target.decode("latin-1"), reason=reason,
            request_id=self.head.log_fields.get("request_id", "-"),
        )
        self._run(self.state.upstream_failed(reason))

    def upstream_buffered(self, queued: int) -> None:
        self._run(self.state.upstream_buffered(queued))

    def upstream_deadline_exceeded(self) -> None:
        self._run(self.state.deadline_expired())

    # -- the clock ----------------------------------------------------------------------

    def _deadline(self) -> None:
        self._timer = None
        self._run(self.state.deadline_expired())

    # -- carrying out actions -----------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        writer = self.writer
        if self.state.finished and not self._done:
            # Before the writer call that ends the response: the protocol emits the
            # access event (and counts the call) from inside it.
            self.head.log_fields["grpc_status"] = self.state.grpc_status
            self._learn_method()
        for action in actions:
            if isinstance(action, WriteBody):
                writer.write_body(action.data)
            elif isinstance(action, Acknowledge):
                if self.stream is not None:
                    self.stream.acknowledge(action.size)
            elif isinstance(action, SendUpstream):
                stream = self.stream
                if stream is not None:
                    queued = stream.send(action.data, action.end)
                    if queued != self.state.queued_upstream:
                        self._run(self.state.upstream_buffered(queued))
            elif isinstance(action, WriteHead):
                writer.write_head(action.status, action.headers, end=action.end)
            elif isinstance(action, EndResponse):
                writer.end(action.trailers)
            elif isinstance(action, ResetUpstream):
                if self.stream is not None:
                    self.stream.reset(action.error_code)
            elif isinstance(action, AbortResponse):
                writer.abort(action.error_code)
            elif isinstance(action, PauseRequestBody):
                writer.pause_request_body()
            elif isinstance(action, ResumeRequestBody):
                writer.resume_request_body()
            elif isinstance(action, StartTimer):
                self._timer = self.relay.reactor.callLater(action.seconds, self._deadline)
            elif isinstance(action, CancelTimer):
                if self._timer is not None and self._timer.active():
                    self._timer.cancel()
                self._timer = None
        if self.state.finished and not self._done:
            self._finish()

    def _learn_method(self) -> None:
        """A method the Master API answered (not UNIMPLEMENTED) gets its own label."""
        path = self.head.log_fields.get("grpc_method")
        if self._answered and isinstance(path, str):
            grpc_answered(path, self.state.grpc_status)

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.head.log_fields["grpc_status"] = self.state.grpc_status
        self._learn_method()
        self.writer.unregister_producer()
        self.relay.call_finished(self)
