# -*- test-case-name: tests.test_websocket -*-
"""WebSockets through ``/api``: each session relayed to the Master API over a
connection of its own.

Shell module.  :class:`WebSocketRelay` is the target the gateway hands every
WebSocket request under ``/api`` -- an HTTP/1.1 ``Upgrade: websocket`` or an HTTP/2
extended CONNECT (RFC 8441) -- and each becomes a :class:`_Session`:

1. a new TCP (or TLS, for ``https://``) connection to ``master_api.http`` (not the
   ``/api`` pool's: a WebSocket holds its connection for its whole life);
2. an HTTP/1.1 upgrade request with the same forwarding headers as any ``/api``
   request (:func:`~eventgw.api.wsframes.upstream_handshake_headers`);
3. the Master API's ``101`` becomes the client's ``101`` (HTTP/1.1) or ``200``
   (HTTP/2); any other answer (401, 404...) is passed on as it is, and a failed
   connection is a 502 (504 for a connect timeout) in the gateway's error shape;
4. then bytes both ways, as the exchange's body in each direction, through a
   :class:`~eventgw.api.wsframes.FrameScanner` each, which stops a message larger
   than ``limits.max_request_body`` (both sides get Close 1009).

Back-pressure: the session is the client writer's producer (a client that reads
slowly pauses the reading of the upstream connection), and the upstream connection's
producer (an upstream that reads slowly pauses the client's request body), so the
gateway holds at most what the transports buffer.  A session with no byte in either
direction for ``limits.idle_timeout`` seconds is closed (Close 1001 to both sides when
they are between frames).  Either side closing closes the other: the client's
end or disconnect closes the upstream connection; the upstream's close ends the
client's response (HTTP/1.1: the connection closes; HTTP/2: END_STREAM).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._reactor import default_reactor
from eventgw.admin.metrics import websocket_closed, websocket_opened
from eventgw.api.wsframes import (
    CLOSE_GOING_AWAY,
    FrameScanner,
    close_frame,
    downstream_accept_headers,
    handshake_problem,
    new_key,
    upstream_handshake_headers,
)
from eventgw.config import ApiUpstream, Limits
from eventgw.errors import ResponseError
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.headers import response_headers_for_downstream
from eventgw.upstream.address import UpstreamAddress
from eventgw.upstream.h1client import (
    MAX_RESPONSE_HEAD,
    NEED_DATA,
    ClientConnection,
    Data,
    Ended,
    ResponseHead,
)
from eventgw.upstream.httppool import UpstreamPool, upstream_endpoint

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint

    from eventgw.upstream.cluster import Cluster, Host


__all__ = ["PENDING_HIGH", "WebSocketRelay"]

# Client bytes held before the Master API accepted (an HTTP/2 client may send DATA
# right after its CONNECT); past this the client's body is paused.
PENDING_HIGH: Final = 64 * 1024


class _Phase(enum.Enum):
    CONNECTING = "connecting"  # no upstream connection yet
    HANDSHAKE = "handshake"  # upgrade request sent, waiting for the answer
    OPEN = "open"  # 101 received: bytes both ways
    PASSING = "passing"  # the Master API refused: its answer is passed on
    DONE = "done"


class WebSocketRelay:
    """The WebSocket target: one :class:`_Session` per accepted request.

    :ivar sessions: the sessions in progress (a reload waits for them).
    :ivar max_message: the largest message (all frames of it) relayed either way.
    :ivar idle_timeout: seconds without a byte after which a session is closed.
    """

    log = Logger()

    def __init__(
        self,
        upstream: ApiUpstream,
        limits: Limits,
        *,
        reactor: Any = None,
        endpoint: IStreamClientEndpoint | None = None,
        cluster: Cluster[UpstreamPool] | None = None,
    ) -> None:
        self.reactor = default_reactor(reactor)
        self.upstream = upstream
        # With the /api proxy's cluster, each session goes to the host it picks (and
        # counts there); without one, to ``endpoint`` or the configured address.
        self.cluster = cluster
        self.endpoint = endpoint or (None if cluster else upstream_endpoint(upstream, self.reactor))
        self.max_message = limits.max_request_body
        self.idle_timeout = limits.idle_timeout
        address = UpstreamAddress.for_http(upstream.scheme, upstream.host, upstream.port)
        self.host_header = address.authority
        self.sessions: set[_Session] = set()

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        fields = head.log_fields
        fields["route"] = "api"
        fields["upstream"] = self.upstream.url
        fields["websocket"] = "refused"
        problem = handshake_problem(head)
        if problem is not None:
            send_error(writer, 400, problem)
            return StaticReply()
        session = _Session(self, head, writer)
        session.begin()
        return session

    def clusters(self) -> list[Cluster[Any]]:
        """None of its own: sessions use the ``/api`` proxy's cluster."""
        return []

    def busy(self) -> bool:
        """Whether a session is in progress."""
        return bool(self.sessions)

    def close(self) -> defer.Deferred[None]:
        """End every session (the gateway is going away)."""
        for session in list(self.sessions):
            session.shut("gateway closing")
        return defer.succeed(None)


class _Upstream(protocol.Protocol):
    """The connection to the Master API; everything it sees goes to its session."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.lost = False

    def connectionMade(self) -> None:
        transport: Any = self.transport
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)  # small frames (chat, pings) must not wait for an ACK
        transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        self.session.upstream_received(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost = True
        self.session.upstream_lost(reason)

    # IPushProducer for the transport's send buffer: the Master API reads slowly.
    def pauseProducing(self) -> None:
        self.session.upstream_write_paused()

    def resumeProducing(self) -> None:
        self.session.upstream_write_resumed()

    def stopProducing(self) -> None:
        pass


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, session: _Session) -> None:
        self.session = session

    def buildProtocol(self, addr: object) -> _Upstream:
        return _Upstream(self.session)


class _Session:
    """One WebSocket: the client's handler and producer, and the upstream's listener.

    Invariant: once ``phase`` is DONE both sides have been told to close (or were
    gone) and the session is out of ``relay.sessions``.
    """

    def __init__(self, relay: WebSocketRelay, head: RequestHead, writer: ResponseWriter) -> None:
        self.relay = relay
        self.head = head
        self.writer = writer
        self.http2 = head.protocol == "HTTP/2"
        # HTTP/2 clients send no key (RFC 8441): the gateway makes one and checks it.
        self.key = new_key() if self.http2 else None
        self.phase = _Phase.CONNECTING
        self.conn: _Upstream | None = None
        self.codec = ClientConnection(max_head_bytes=MAX_RESPONSE_HEAD)
        self.attempt: defer.Deferred[Any] | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.up = FrameScanner(relay.max_message)  # client -> Master API
        self.down = FrameScanner(relay.max_message)  # Master API -> client
        self.bytes_up = 0
        self.bytes_down = 0
        self.opened_at = 0.0
        self.last_activity = 0.0
        self.timer: IDelayedCall | None = None
        self.client_paused = False  # we paused the client's request body
        self.reading_paused = False  # we paused reading the upstream
        self.host: Host[UpstreamPool] | None = None  # the cluster's host, when balanced
        self.host_header = relay.host_header
        self.connect_failed = False

    # -- start --------------------------------------------------------------------

    def begin(self) -> None:
        relay = self.relay
        relay.sessions.add(self)
        self.writer.register_producer(self)
        endpoint = relay.endpoint
        if relay.cluster is not None:
            host = relay.cluster.pick()
            if host is None:
                self._refuse(502, "no upstream host is available")
                return
            self.host = host
            relay.cluster.started(host)
            self.head.log_fields["upstream_host"] = host.key
            pool = host.pool.upstream
            self.host_header = UpstreamAddress.for_http(
                pool.scheme, pool.host, pool.port
            ).authority
            endpoint = host.pool.endpoint
        assert endpoint is not None
        attempt = endpoint.connect(_Factory(self))
        attempt.addTimeout(relay.upstream.connect_timeout, relay.reactor)
        self.attempt = attempt
        attempt.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, conn: _Upstream) -> None:
        self.attempt = None
        if self.phase is not _Phase.CONNECTING:
            if conn.transport is not None:
                conn.transport.loseConnection()
            return
        self.conn = conn
        try:
            data = self.codec.send_request(
                b"GET",
                self.head.target,
                self.host_header,
                upstream_handshake_headers(self.head, self.key),
                content_length=0,
                upgrade=True,
            )
        except Exception:
            self._refuse(400, "invalid request header")
            return
        self.phase = _Phase.HANDSHAKE
        self._write_upstream(data)

    def _connect_failed(self, failure: Failure) -> None:
        self.attempt = None
        if self.phase is not _Phase.CONNECTING:
            return
        self.connect_failed = True
        self.relay.log.warn(
            "WebSocket {path}: cannot connect to {upstream}: {reason}",
            path=self.head.path.decode("latin-1"),
            upstream=self.relay.upstream.url,
            reason=failure.getErrorMessage(),
        )
        if failure.check(defer.TimeoutError, error.TimeoutError):
            self._refuse(504, "timed out connecting to the upstream")
        else:
            self._refuse(502, "cannot connect to the upstream")

    # -- the client (RequestHandler) ------------------------------------------------

    def body_received(self, data: bytes) -> None:
        if self.phase is _Phase.OPEN:
            self._to_upstream(data)
        elif self.phase in (_Phase.CONNECTING, _Phase.HANDSHAKE):
            self.pending.append(data)
            self.pending_size += len(data)
            if self.pending_size > PENDING_HIGH and not self.client_paused:
                self.client_paused = True
                self.writer.pause_request_body()

    def body_ended(self, trailers: Headers) -> None:
        # HTTP/1.1: the handshake has no body, so this comes right after the head;
        # once open (HTTP/2 END_STREAM) the client is done sending.
        if self.phase is _Phase.OPEN:
            self._close_upstream()

    def connection_lost(self, reason: str) -> None:
        self.head.log_fields["websocket"] = "client closed"
        self._finish()
        self._close_upstream()

    # -- the client's reading pace (Producer) ------------------------------------------

    def pause_producing(self) -> None:
        self.reading_paused = True
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.lost:
            conn.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_producing(self) -> None:
        self.reading_paused = False
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.lost:
            conn.transport.resumeProducing()  # type: ignore[attr-defined]

    # -- the upstream -------------------------------------------------------------------

    def upstream_received(self, data: bytes) -> None:
        if self.phase is _Phase.OPEN:
            self._to_client(data)
            return
        if self.phase not in (_Phase.HANDSHAKE, _Phase.PASSING):
            return
        codec = self.codec
        codec.receive_data(data)
        self._read_codec()

    def _read_codec(self) -> None:
        codec = self.codec
        try:
            while self.phase in (_Phase.HANDSHAKE, _Phase.PASSING, _Phase.OPEN):
                event = codec.next_event()
                if event is NEED_DATA:
                    return
                if isinstance(event, ResponseHead):
                    self._answered(event)
                elif isinstance(event, Data):
                    if self.phase is _Phase.OPEN:
                        self._to_client(event.data)
                    else:
                        self.writer.write_body(event.data)
                elif isinstance(event, Ended):
                    if self.phase is _Phase.PASSING:
                        self.writer.end()
                        self._finish()
                        self._close_upstream()
                    return
        except ResponseError as failure:
            self._bad_upstream(str(failure))

    def _answered(self, response: ResponseHead) -> None:
        if response.status != 101:
            # Refused by the Master API (401, 404, 426...): its answer, as it is.
            self.phase = _Phase.PASSING
            self.head.log_fields["websocket"] = "refused by upstream"
            self.writer.write_head(
                response.status,
                response_headers_for_downstream(response.headers),
                end=not response.has_body,
            )
            if not response.has_body:
                self._finish()
                self._close_upstream()
            return
        accepted = downstream_accept_headers(response.headers, http2=self.http2, key=self.key)
        if isinstance(accepted, str):
            self._bad_upstream(accepted)
            return
        self.phase = _Phase.OPEN
        self.head.log_fields["websocket"] = "open"
        now = self.relay.reactor.seconds()
        self.opened_at = self.last_activity = now
        websocket_opened(self.head.protocol)
        self.writer.write_head(200 if self.http2 else 101, accepted)
        self._arm_idle(self.relay.idle_timeout)
        pending, self.pending, self.pending_size = self.pending, [], 0
        for data in pending:
            self._to_upstream(data)
        if self.client_paused and self.phase is _Phase.OPEN:
            conn = self.conn
            if conn is None or not getattr(conn, "write_paused", False):
                self.client_paused = False
                self.writer.resume_request_body()

    def upstream_lost(self, reason: Failure) -> None:
        phase = self.phase
        if phase is _Phase.OPEN:
            self.head.log_fields["websocket"] = "upstream closed"
            self._finish()
            self.writer.end()
        elif phase is _Phase.HANDSHAKE:
            self.codec.receive_data(b"")
            self._read_codec()
            if self.phase is _Phase.HANDSHAKE:
                self._bad_upstream("upstream closed the connection")
        elif phase is _Phase.PASSING:
            self.codec.receive_data(b"")
            self._read_codec()
            if self.phase is _Phase.PASSING:
                self._finish()
                self.writer.abort()

    def upstream_write_paused(self) -> None:
        if self.phase is _Phase.OPEN and not self.client_paused:
            self.client_paused = True
            self.writer.pause_request_body()

    def upstream_write_resumed(self) -> None:
        if self.client_paused and self.pending_size <= PENDING_HIGH:
            self.client_paused = False
            self.writer.resume_request_body()

    # -- relaying --------------------------------------------------------------------------

    def _to_upstream(self, data: bytes) -> None:
        passed = self.up.feed(data)
        if passed:
            self.bytes_up += len(passed)
            self.last_activity = self.relay.reactor.seconds()
            self._write_upstream(passed)
        if self.up.violation is not None:
            self._violated(self.up.violation)

    def _to_client(self, data: bytes) -> None:
        passed = self.down.feed(data)
        if passed:
            self.bytes_down += len(passed)
            self.last_activity = self.relay.reactor.seconds()
            self.writer.write_body(passed)
        if self.down.violation is not None:
            self._violated(self.down.violation)

    def _violated(self, violation: tuple[int, str]) -> None:
        code, reason = violation
        self.head.log_fields["websocket"] = reason
        self._close_both(code, reason)

    def _close_both(self, code: int, reason: str) -> None:
        """Close frames where each direction is between frames, then close."""
        if self.phase is not _Phase.OPEN:
            return
        if self.down.at_boundary:
            self.writer.write_body(close_frame(code, reason, masked=False))
        if self.up.at_boundary:
            self._write_upstream(close_frame(code, reason, masked=True))
        self._finish()
        self.writer.end()
        self._close_upstream()

    def _write_upstream(self, data: bytes) -> None:
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.lost:
            conn.transport.write(data)

    # -- time --------------------------------------------------------------------------

    def _arm_idle(self, delay: float) -> None:
        self.timer = self.relay.reactor.callLater(delay, self._idle_check)

    def _idle_check(self) -> None:
        self.timer = None
        if self.phase is not _Phase.OPEN:
            return
        idle = self.relay.idle_timeout
        left = self.last_activity + idle - self.relay.reactor.seconds()
        if left > 0:
            self._arm_idle(left)
            return
        self.head.log_fields["websocket"] = "idle timeout"
        self._close_both(CLOSE_GOING_AWAY, "idle timeout")

    # -- the end -------------------------------------------------------------------------

    def shut(self, reason: str) -> None:
        """End the session from the gateway's side (shutdown)."""
        if self.phase is _Phase.OPEN:
            self.head.log_fields["websocket"] = reason
            self._close_both(CLOSE_GOING_AWAY, reason)
            return
        if self.phase is not _Phase.DONE:
            self._refuse(503, "the gateway is shutting down")

    def _refuse(self, status: int, message: str) -> None:
        self._finish()
        send_error(self.writer, status, message)
        self._close_upstream()

    def _bad_upstream(self, message: str) -> None:
        self.relay.log.warn(
            "WebSocket {path}: invalid answer from {upstream}: {reason}",
            path=self.head.path.decode("latin-1"), upstream=self.relay.upstream.url,
            reason=message,
        )
        self.head.log_fields["websocket"] = "bad upstream answer"
        if self.phase is _Phase.OPEN:
            self._finish()
            self.writer.abort()
        else:
            self._finish()
            send_error(self.writer, 502, "invalid WebSocket answer from the upstream")
        self._close_upstream()

    def _close_upstream(self) -> None:
        attempt = self.attempt
        if attempt is not None:
            self.attempt = None
            attempt.cancel()
        conn = self.conn
        if conn is not None and conn.transport is not None and not conn.lost:
            transport: Any = conn.transport
            transport.unregisterProducer()  # a TLS transport waits for producers
            if self.reading_paused:
                transport.resumeProducing()
            transport.loseConnection()

    def _finish(self) -> None:
        if self.phase is _Phase.DONE:
            return
        was_open = self.phase is _Phase.OPEN
        self.phase = _Phase.DONE
        self.relay.sessions.discard(self)
        host, self.host = self.host, None
        if host is not None and self.relay.cluster is not None:
            self.relay.cluster.finished(host, failed=self.connect_failed)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.writer.unregister_producer()
        if self.client_paused:
            self.client_paused = False
            self.writer.resume_request_body()
        if was_open:
            now = self.relay.reactor.seconds()
            self.head.log_fields["ws_bytes_up"] = self.bytes_up
            self.head.log_fields["ws_bytes_down"] = self.bytes_down
            websocket_closed(now - self.opened_at, self.bytes_up, self.bytes_down)
