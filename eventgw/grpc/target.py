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

from typing import TYPE_CHECKING, Any, Final

from h2.errors import ErrorCodes
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
from eventgw.upstream.cluster import Cluster, Host, same_pools
from eventgw.upstream.h2client import UpstreamStream
from eventgw.upstream.h2pool import GrpcConnectionPool, grpc_cluster

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["REPLAY_LIMIT", "GrpcRelay"]

#: Request bytes a call keeps for sending again when the Master API refuses its stream
#: unprocessed (REFUSED_STREAM); a larger request is not retried.
REPLAY_LIMIT: Final = 64 * 1024


class GrpcRelay:
    """Relays allowed gRPC calls to the Master API.

    :ivar cluster: the Master API's hosts (an HTTP/2 pool each), or ``None`` when no
        upstream is configured; each call picks its host, and stays on it.
    :ivar pool: the first host's pool (the only one with a single address).
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
        previous: GrpcRelay | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        self.reactor = reactor
        self.policy = policy
        self.cluster: Cluster[GrpcConnectionPool] | None = None
        if upstream is None and pool is not None:
            upstream = pool.config
        self.upstream = upstream
        if upstream is not None:
            self.cluster = grpc_cluster("master_api_grpc", upstream, reactor, pool=pool)
            old = previous.cluster if previous is not None else None
            if (
                previous is not None and old is not None
                and same_pools(previous.upstream, upstream)
            ):
                # A reload: hosts both configurations name keep their connections.
                self.cluster.take_over(old)
            self.cluster.start()
        self.calls: set[_RelayedCall] = set()
        self.peak_unacknowledged = 0
        self.peak_queued_upstream = 0

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        fields = head.log_fields
        fields["route"] = "grpc"
        fields["grpc_method"] = head.path.decode("utf-8", "replace")
        reason = refusal(head.path, self.policy)
        if reason is None and self.cluster is None:
            reason = "no Master API gRPC upstream is configured"
        if reason is not None:
            fields["grpc_status"] = int(GrpcStatus.UNIMPLEMENTED)
            writer.write_head(200, trailers_only(GrpcStatus.UNIMPLEMENTED, reason), end=True)
            return StaticReply()
        assert self.cluster is not None
        host = self.cluster.pick()
        if host is None:
            # Every host failed its health checks: at once, no connect attempt.
            fields["grpc_status"] = int(GrpcStatus.UNAVAILABLE)
            writer.write_head(
                200, trailers_only(GrpcStatus.UNAVAILABLE, "Master API unavailable"), end=True
            )
            return StaticReply()
        fields["upstream"] = host.pool.address
        call = _RelayedCall(self, host, head, writer)
        call.begin()
        return call

    @property
    def pool(self) -> GrpcConnectionPool | None:
        if self.cluster is None:
            return None
        return next(iter(self.cluster.hosts.values())).pool

    def clusters(self) -> list[Cluster[Any]]:
        """The Master API gRPC hosts this relay balances over (none unconfigured)."""
        return [] if self.cluster is None else [self.cluster]

    def busy(self) -> bool:
        """Whether a relayed call is in progress."""
        return bool(self.calls)

    def close(self) -> Deferred[None]:
        """Close the upstream connections; calls in flight end with UNAVAILABLE."""
        if self.cluster is None:
            return succeed(None)
        return self.cluster.close().addCallback(lambda _: None)

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
        "_answered", "_done", "_host_failed", "_open_failure", "_opening", "_sent",
        "_sent_end", "_sent_size", "_timer", "_tried", "head", "host", "pool", "relay",
        "state", "stream", "writer",
    )

    def __init__(
        self,
        relay: GrpcRelay,
        host: Host[GrpcConnectionPool],
        head: RequestHead,
        writer: ResponseWriter,
    ) -> None:
        self.relay = relay
        self.host: Host[GrpcConnectionPool] | None = host
        pool = self.pool = host.pool
        self._tried = [host.key]
        self._host_failed = False
        self._opening = False
        self._open_failure: str | None = None
        # The request bytes sent upstream, kept (up to REPLAY_LIMIT) until the Master
        # API answers: a stream it refuses unprocessed (REFUSED_STREAM, e.g. past a
        # GOAWAY) is sent once more, to another host.  None: too much, or answered.
        self._sent: list[bytes] | None = []
        self._sent_size = 0
        self._sent_end = False
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
        assert self.host is not None
        self._cluster.started(self.host)
        self._open(self.state.request_headers, deadline, ([], False))
        if self.stream is not None:
            self._run(self.state.start())

    @property
    def _cluster(self) -> Cluster[GrpcConnectionPool]:
        cluster = self.relay.cluster
        assert cluster is not None
        return cluster

    def _open(
        self, headers: Headers, deadline: float | None, unsent: tuple[list[bytes], bool]
    ) -> None:
        """Open the upstream stream on the call's host, with what an earlier attempt
        never sent.  A pool may fail the stream inside ``open_stream`` (its connect
        back-off): that failure is handled once the stream is known."""
        self._opening = True
        self._open_failure = None
        stream = self.pool.open_stream(headers, self, deadline)
        self.stream = stream
        chunks, end = unsent
        for chunk in chunks:
            stream.send(chunk)
        if end:
            stream.send(b"", True)
        self._opening = False
        failure, self._open_failure = self._open_failure, None
        if failure is not None:
            self.upstream_failed(failure)
        elif stream.queued != self.state.queued_upstream:
            self._run(self.state.upstream_buffered(stream.queued))

    def _retry_elsewhere(self, refused: bool = False) -> bool:
        """The stream failed before it reached its host, or the host refused it
        unprocessed (``refused``): once, on another host."""
        stream = self.stream
        if stream is None or len(self._tried) >= 2:
            return False
        if refused:
            if self._sent is None or self._answered:
                return False
            unsent = (self._sent, self._sent_end)
        elif stream.unsent is None:
            return False
        else:
            unsent = stream.unsent
        other = self._cluster.pick(self._tried)
        if other is None or self.host is None:
            return False
        self._cluster.finished(self.host, failed=True)
        self.host = other
        self.pool = other.pool
        self._tried.append(other.key)
        self._cluster.started(other)
        self.head.log_fields["upstream"] = other.pool.address
        self.head.log_fields["upstream_retried"] = True
        if refused:
            self._sent, self._sent_size, self._sent_end = [], 0, False
        self._open(stream.headers, stream.deadline, unsent)
        return True

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
        self._sent = None
        self._run(self.state.upstream_headers(headers, end_stream))

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        self._run(self.state.upstream_data(data, flow_length, end_stream))

    def upstream_trailers(self, trailers: Headers) -> None:
        self._run(self.state.upstream_trailers(trailers))

    def upstream_reset(self, error_code: int) -> None:
        if error_code == ErrorCodes.REFUSED_STREAM and self._retry_elsewhere(refused=True):
            return
        self._host_failed = True
        self._run(self.state.upstream_reset(error_code))

    def upstream_failed(self, reason: str) -> None:
        if self._opening:
            self._open_failure = reason
            return
        if self._retry_elsewhere():
            return
        self._host_failed = True
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
                self._keep_sent(action.data, action.end)
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

    def _keep_sent(self, data: bytes, end: bool) -> None:
        sent = self._sent
        if sent is None:
            return
        if self._sent_size + len(data) > REPLAY_LIMIT:
            self._sent = None
            return
        if data:
            sent.append(data)
            self._sent_size += len(data)
        self._sent_end = self._sent_end or end

    def _learn_method(self) -> None:
        """A method the Master API answered (not UNIMPLEMENTED) gets its own label."""
        path = self.head.log_fields.get("grpc_method")
        if self._answered and isinstance(path, str):
            grpc_answered(path, self.state.grpc_status)

    def _finish(self) -> None:
        self._done = True
        host, self.host = self.host, None
        if host is not None:
            failed = self._host_failed or (
                self._answered and self.state.grpc_status == GrpcStatus.UNAVAILABLE
            )
            self._cluster.finished(host, failed=failed)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.head.log_fields["grpc_status"] = self.state.grpc_status
        self._learn_method()
        self.writer.unregister_producer()
        self.relay.call_finished(self)
