# -*- test-case-name: tests.test_grpc_relay -*-
"""One HTTP/2 client connection to a gRPC upstream, and the streams on it.

Shell module: a Twisted protocol around an ``h2`` client connection.  It knows nothing
about gRPC beyond HTTP/2, and nothing about connecting: :mod:`eventgw.upstream.h2pool`
makes the connections, decides which one a new stream goes to, and hears from each
(through :class:`ConnectionOwner`) when it is ready, has room for another stream,
drains or is gone.

* :class:`UpstreamStream` is one request: the relay (or the HTTP/2 broker client)
  sends request bytes on it and hears back, through its :class:`StreamListener`,
  headers, DATA, trailers, resets and failures.  Bytes sent before it has a
  connection, or beyond the peer's flow-control window, are queued on it and reported
  through :meth:`StreamListener.upstream_buffered`.
* :class:`H2ClientConnection` is ready once the server's SETTINGS arrived.  On GOAWAY
  the in-flight streams the server accepted finish and the others are reset as
  REFUSED_STREAM (UNAVAILABLE for the client).
* Late frames: a stream the gateway reset (a deadline, a cancelled client) or that
  closed may still get HEADERS, DATA, WINDOW_UPDATE or RST_STREAM the server sent
  before it heard of the end.  RFC 9113 section 5.1 says to ignore them, and so does
  :class:`_GracefulH2Connection` (header blocks still decoded, DATA still credited to
  the connection window); h2 alone would take a late HEADERS for a stream it already
  forgot as the server opening a stream, and kill the whole connection.
* Deadlines: a stream opened with a ``deadline`` (the reactor's clock) goes upstream
  with ``grpc-timeout`` set to what is left of it when its HEADERS are written -- the
  wait for a connection slot and the connect are deducted; with nothing left it is
  never sent and its listener hears :meth:`StreamListener.upstream_deadline_exceeded`.
* Keepalive, after gRPC's client-side keepalive rules (gRFC A8) and the ping policy
  gRPC servers enforce: a PING when nothing was received for the keepalive interval,
  only while a stream is open (unless the pool permits it without calls), and never
  twice within ``min_ping_interval_without_data`` unless response HEADERS or DATA
  arrived in between (a gRPC server counts such a PING as a strike, and past two
  strikes answers GOAWAY ENHANCE_YOUR_CALM "too_many_pings").  No answer within
  another interval aborts the connection.  A "too_many_pings" GOAWAY doubles the
  pool's keepalive interval for the connections it opens next, as grpc-core does.
* Flow control: response DATA is acknowledged only when the listener's owner says so
  (:meth:`UpstreamStream.acknowledge`).
* ``data_to_send`` is flushed once per ``dataReceived`` and once per call from the
  relay.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from h2.config import H2Configuration
from h2.connection import ConnectionInputs, _decode_headers
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw.config import GrpcUpstream
from eventgw.exchange import Headers
from eventgw.grpcwire import format_grpc_timeout
from eventgw.http2 import WRITES, LeanDataFrame, LeanH2Connection

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "CLIENT_CONNECTION_WINDOW",
    "CLIENT_STREAM_WINDOW",
    "MIN_PING_INTERVAL_WITHOUT_DATA",
    "ConnectionOwner",
    "H2ClientConnection",
    "StreamListener",
    "UpstreamStream",
]

# The window each upstream stream gets.  It is what a stalled client can make the
# gateway hold per stream on the response side (the relay stops acknowledging once
# the client stops reading), so it is the memory bound; 256 KiB still moves 4 MiB
# messages at loopback speed.
CLIENT_STREAM_WINDOW: Final = 256 * 1024
# The connection window, shared by all streams: large, so one stalled stream never
# starves the others (64 stalled streams fit before it closes).
CLIENT_CONNECTION_WINDOW: Final = 16 * 1024 * 1024
# Response header blocks (and trailers) the Master API may send: gRPC's own default
# limit for metadata is 8 KiB; 64 KiB leaves room for large -bin details.
MAX_RESPONSE_HEADER_BYTES: Final = 64 * 1024
# How long a connection being shut down may take to close cleanly (TLS close_notify
# included) before it is aborted.
SHUTDOWN_GRACE: Final = 2.0
# The opaque payload of keepalive PINGs (8 bytes, RFC 9113 section 6.7).
_PING_DATA: Final = b"eventgw!"
# grpc-core servers' default ``grpc.http2.min_ping_interval_without_data_ms``: a PING
# sooner than this after the previous one, with no HEADERS or DATA sent in between,
# is a strike.  The gateway's keepalive never pings that often without data.
MIN_PING_INTERVAL_WITHOUT_DATA: Final = 300.0
# The GOAWAY debug data of a gRPC server whose ping policy was violated (gRFC A8).
TOO_MANY_PINGS: Final = b"too_many_pings"
# Frames on a stream that may arrive after it was reset or closed, and the connection
# state machine input each one is.
_LATE_FRAMES: Final[dict[type, ConnectionInputs]] = {
    HeadersFrame: ConnectionInputs.RECV_HEADERS,
    DataFrame: ConnectionInputs.RECV_DATA,
    LeanDataFrame: ConnectionInputs.RECV_DATA,
    WindowUpdateFrame: ConnectionInputs.RECV_WINDOW_UPDATE,
    RstStreamFrame: ConnectionInputs.RECV_RST_STREAM,
}


class ConnectionOwner(Protocol):
    """What connections and streams report to: the pool
    (:class:`eventgw.upstream.h2pool.GrpcConnectionPool`).

    :ivar address: the upstream's ``host:port``, for logs.
    :ivar config: the upstream's settings (``tls``).
    :ivar keepalive_interval: the keepalive interval for connections (it starts at
        ``config.keepalive_interval`` and doubles on each "too_many_pings").
    :ivar keepalive_without_calls: whether to ping connections with no stream open.
    :ivar min_ping_interval_without_data: the least time between two PINGs with no
        response HEADERS or DATA received in between.
    """

    @property
    def address(self) -> str: ...

    @property
    def config(self) -> GrpcUpstream: ...

    @property
    def keepalive_interval(self) -> float: ...

    @property
    def keepalive_without_calls(self) -> bool: ...

    @property
    def min_ping_interval_without_data(self) -> float: ...

    def pings_too_frequent(self, connection: H2ClientConnection) -> None:
        """The server answered GOAWAY "too_many_pings": ping less often."""

    def forget(self, stream: UpstreamStream) -> None:
        """A stream that never had a connection was cancelled."""

    def connection_ready(self, connection: H2ClientConnection) -> None:
        """The server's SETTINGS arrived: the connection takes streams."""

    def capacity_freed(self, connection: H2ClientConnection) -> None:
        """A stream closed, or the server allows more: room for a waiting stream."""

    def connection_draining(self, connection: H2ClientConnection) -> None:
        """The server sent GOAWAY: no new streams on this connection."""

    def connection_lost(
        self, connection: H2ClientConnection, reason: Failure | None
    ) -> None:
        """The connection closed (its streams have been failed)."""


class _GracefulH2Connection(LeanH2Connection):
    """An h2 client connection that survives a GOAWAY from the server, and frames
    that cross the gateway's own RST_STREAM.

    h2 moves the whole connection to CLOSED when it receives GOAWAY and drops its
    outbound buffer, so the frames of streams the server still finishes -- often in the
    same read as the GOAWAY -- raise ProtocolError (python-hyper/h2 #1181).  RFC 9113
    section 6.8 lets streams up to the last stream id complete; the pool opens no new
    streams on a connection after GOAWAY, so only the event is kept.

    Late frames: an odd stream id no higher than the highest one we opened is one of
    ours, never a stream the server opens.  Once h2 cleaned such a stream up (it does
    whenever another stream is opened), h2 would treat a HEADERS on it as a new
    inbound stream -- checked against our SETTINGS_MAX_CONCURRENT_STREAMS of 0, a
    connection error -- and a RST_STREAM on it as a frame on a closed stream, answered
    with RST_STREAM or GOAWAY.  RFC 9113 section 5.1: frames received on a stream
    after one sent RST_STREAM are ignored, except for what they change in the
    connection (HPACK state, the connection's flow-control window).  So HEADERS,
    DATA, WINDOW_UPDATE and RST_STREAM on such a stream, closed or forgotten, are
    dropped here: a header block is still decoded, DATA is still counted against the
    connection window and credited straight back, and nothing is sent in answer but
    that WINDOW_UPDATE.
    """

    def _receive_frame(self, frame: Frame) -> list[Event]:
        stream_id = frame.stream_id
        if stream_id & 1 and stream_id <= self.highest_outbound_stream_id:
            connection_input = _LATE_FRAMES.get(type(frame))
            if connection_input is not None:
                stream = self.streams.get(stream_id)
                if stream is None or stream.closed:
                    return self._receive_late_frame(frame, connection_input)
        return super()._receive_frame(frame)

    def _receive_late_frame(
        self, frame: Frame | LeanDataFrame, connection_input: ConnectionInputs
    ) -> list[Event]:
        """Drop a frame for a stream of ours that is over, keeping the connection's
        state (HPACK, flow control) as if it had been processed."""
        events: list[Event] = self.state_machine.process_input(connection_input)
        if isinstance(frame, HeadersFrame):
            _decode_headers(self.decoder, frame.data)
        elif isinstance(frame, (DataFrame, LeanDataFrame)):
            size = frame.flow_controlled_length
            manager = self._inbound_flow_control_window_manager
            manager.window_consumed(size)
            increment = manager.process_bytes(size)
            if increment:
                update = WindowUpdateFrame(0)
                update.window_increment = increment
                self._prepare_for_sending([update])
        return events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[Event]]:
        event = ConnectionTerminated()
        event.error_code = _error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


def _error_code(value: int) -> ErrorCodes | int:
    try:
        return ErrorCodes(value)
    except ValueError:
        return value


class StreamListener(Protocol):
    """What an :class:`UpstreamStream` reports to (the relay's per-call object)."""

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None: ...

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None: ...

    def upstream_trailers(self, trailers: Headers) -> None: ...

    def upstream_reset(self, error_code: int) -> None: ...

    def upstream_failed(self, reason: str) -> None: ...

    def upstream_buffered(self, queued: int) -> None: ...

    def upstream_deadline_exceeded(self) -> None:
        """The deadline passed before the request could be sent (nothing was)."""


class UpstreamStream:
    """One request to the Master API, before and after it has a connection.

    Invariant: it reports exactly one ending to its listener (trailers, END_STREAM,
    reset or failure) unless the relay reset it first, and nothing after that.

    :ivar queued: request bytes accepted but not yet written to a connection.
    """

    __slots__ = (
        "_connection",
        "_end_queued",
        "_pending",
        "closed",
        "deadline",
        "headers",
        "listener",
        "local_ended",
        "pool",
        "queued",
        "stream_id",
        "unsent",
    )

    def __init__(
        self,
        pool: ConnectionOwner,
        headers: Headers,
        listener: StreamListener,
        deadline: float | None = None,
    ) -> None:
        self.pool = pool
        self.headers = headers
        self.listener = listener
        self.deadline = deadline
        self._connection: H2ClientConnection | None = None
        self.stream_id = 0
        self._pending: deque[bytes] = deque()
        self._end_queued = False
        self.local_ended = False
        self.queued = 0
        self.closed = False
        # When it failed before it had a connection: what it would have sent (nothing
        # of it reached the upstream, so the request may go elsewhere).
        self.unsent: tuple[list[bytes], bool] | None = None

    def send(self, data: bytes, end: bool = False) -> int:
        """Queue request bytes (and the end of the request); return what is queued."""
        if self.closed or self._end_queued:
            return self.queued
        if data:
            self._pending.append(data)
            self.queued += len(data)
        if end:
            self._end_queued = True
        connection = self._connection
        if connection is not None:
            connection.write_pending(self)
            connection.flush_soon()
        return self.queued

    def reset(self, error_code: int) -> None:
        """Cancel the request (RST_STREAM when it is on a connection)."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self.queued = 0
        connection = self._connection
        if connection is None:
            self.pool.forget(self)
        else:
            connection.reset_stream(self, error_code)

    def acknowledge(self, size: int) -> None:
        """The relay passed ``size`` flow-controlled response bytes on: reopen the window."""
        connection = self._connection
        if connection is not None and size:
            connection.acknowledge(self, size)

    # -- called by the connection ----------------------------------------------------

    def attach(self, connection: H2ClientConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id

    def take_pending(self, window: int) -> tuple[list[bytes], bool]:
        """Up to ``window`` queued bytes, and whether the request ends after them."""
        chunks: list[bytes] = []
        pending = self._pending
        while pending and window > 0:
            data = pending[0]
            if len(data) <= window:
                pending.popleft()
            else:
                pending[0] = data[window:]
                data = data[:window]
            chunks.append(data)
            window -= len(data)
            self.queued -= len(data)
        return chunks, self._end_queued and not pending and not self.local_ended

    @property
    def has_pending(self) -> bool:
        return bool(self._pending) or (self._end_queued and not self.local_ended)

    def fail(self, reason: str) -> None:
        """The connection or the connect attempt failed."""
        if self.closed:
            return
        self.closed = True
        if self._connection is None:
            self.unsent = (list(self._pending), self._end_queued)
        self._pending.clear()
        self.queued = 0
        self.listener.upstream_failed(reason)

    def expire(self) -> None:
        """The deadline passed before the HEADERS went out: never send them."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self.queued = 0
        self.listener.upstream_deadline_exceeded()

    def headers_at(self, now: float) -> Headers | None:
        """The HEADERS to send at ``now``: ``grpc-timeout`` says what is left of the
        deadline (in place, or appended); ``None`` when nothing is left."""
        deadline = self.deadline
        if deadline is None:
            return self.headers
        left = deadline - now
        if left <= 0:
            return None
        timeout = (b"grpc-timeout", format_grpc_timeout(left))
        headers: Headers = []
        replaced = False
        for header in self.headers:
            if header[0] == b"grpc-timeout":
                if not replaced:
                    headers.append(timeout)
                    replaced = True
            else:
                headers.append(header)
        if not replaced:
            headers.append(timeout)
        return headers


class H2ClientConnection(TwistedProtocol):
    """One HTTP/2 client connection to the Master API.

    Invariant: ``streams`` holds exactly the h2 streams that are not closed, so its
    length is what counts against the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    """

    log = Logger()

    def __init__(self, pool: ConnectionOwner, reactor: IReactorTime) -> None:
        self.pool = pool
        self.reactor = reactor
        self.h2 = _GracefulH2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                # The relay builds request headers from a validated downstream head,
                # and filters what comes back: h2 need not check them twice.
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
            )
        )
        self.streams: dict[int, UpstreamStream] = {}
        self.ready = False
        self.draining = False
        self.lost = False
        self._receiving = False
        self._blocked: set[UpstreamStream] = set()
        self._last_received = 0.0
        self._ping_outstanding = False
        self._last_ping_sent: float | None = None
        self._data_since_ping = False
        self._keepalive: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self.closed: Deferred[None] = Deferred()

    # -- Twisted -------------------------------------------------------------------

    def connectionMade(self) -> None:
        # gRPC frames are small and latency-bound (a lone RST_STREAM or WINDOW_UPDATE
        # must not wait for a delayed ACK): disable Nagle, as grpcio itself does.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        h2 = self.h2
        h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_CONCURRENT_STREAMS: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: CLIENT_STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEADER_BYTES,
            },
        )
        h2.initiate_connection()
        h2.increment_flow_control_window(CLIENT_CONNECTION_WINDOW - 65535)
        self._last_received = self.reactor.seconds()
        self.flush()
        self._schedule_keepalive()

    def dataReceived(self, data: bytes) -> None:
        self._last_received = self.reactor.seconds()
        self._ping_outstanding = False
        self._receiving = True
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self.log.warn(
                "{upstream} protocol error: {error}", upstream=self.pool.address, error=e
            )
            self._receiving = False
            self.flush()
            if self.transport is not None:
                self.transport.loseConnection()
            return
        # The client connections this read writes on flush once, at its end.
        WRITES.hold()
        try:
            for event in events:
                self._dispatch(event)
        finally:
            self._receiving = False
            self.flush()
            WRITES.release()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        for timer in (self._keepalive, self._abort_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._keepalive = self._abort_timer = None
        streams = list(self.streams.values())
        self.streams.clear()
        message = "connection lost" if self.ready else "connection failed"
        for stream in streams:
            stream.fail(message)
        self.pool.connection_lost(self, reason)
        self.closed.callback(None)

    # -- used by UpstreamStream --------------------------------------------------------

    def flush(self) -> None:
        """Write what h2 has queued (deferred to the end of ``dataReceived``)."""
        if self._receiving or self.transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def flush_soon(self) -> None:
        """Flush now, or at the end of the read being processed on any HTTP/2
        connection (:class:`~eventgw.http2.WriteCoalescer`): a downstream read
        carrying many calls then costs one write here."""
        if not self._receiving and not WRITES.defer(self.flush):
            self.flush()

    def has_capacity(self) -> bool:
        return (
            self.ready
            and not self.draining
            and not self.lost
            and len(self.streams) < self.h2.remote_settings.max_concurrent_streams
        )

    def start_stream(self, stream: UpstreamStream) -> None:
        """Open ``stream`` on this connection and send what it has queued; a stream
        whose deadline has passed is not sent but expired."""
        headers = stream.headers_at(self.reactor.seconds())
        if headers is None:
            stream.expire()
            return
        stream_id = self.h2.get_next_available_stream_id()
        stream.attach(self, stream_id)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, headers)
        self.write_pending(stream)

    def write_pending(self, stream: UpstreamStream) -> None:
        """Send as much of ``stream``'s queue as the windows allow."""
        if not stream.has_pending or stream.closed:
            return
        h2 = self.h2
        stream_id = stream.stream_id
        before = stream.queued
        try:
            window = h2.local_flow_control_window(stream_id)
            frame = h2.max_outbound_frame_size
            chunks, end = stream.take_pending(window)
            for index, chunk in enumerate(chunks):
                last = end and index == len(chunks) - 1
                for start in range(0, len(chunk), frame):
                    piece = chunk[start : start + frame]
                    h2.send_data(
                        stream_id, piece, end_stream=last and start + frame >= len(chunk)
                    )
            if end and not chunks:
                h2.end_stream(stream_id)
                stream.local_ended = True
            elif end:
                stream.local_ended = True
        except H2Error:
            # The stream closed under us (the peer reset it); the reset event tells
            # the relay.
            return
        if stream.has_pending:
            self._blocked.add(stream)
        else:
            self._blocked.discard(stream)
        if stream.queued != before:
            stream.listener.upstream_buffered(stream.queued)

    def reset_stream(self, stream: UpstreamStream, error_code: int) -> None:
        self._blocked.discard(stream)
        if self.streams.pop(stream.stream_id, None) is not None:
            try:
                self.h2.reset_stream(stream.stream_id, error_code)
            except H2Error:
                pass
        self.flush_soon()
        self.pool.capacity_freed(self)

    def acknowledge(self, stream: UpstreamStream, size: int) -> None:
        self.h2.acknowledge_received_data(size, stream.stream_id)
        self.flush_soon()

    def shut_down(self) -> None:
        """Close for good: GOAWAY, then drop the connection (abort it if the peer
        does not let it close within :data:`SHUTDOWN_GRACE`)."""
        self.draining = True
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None
        if self.transport is None or self.lost:
            return
        try:
            self.h2.close_connection()
        except H2Error:
            pass
        self.flush()
        transport = self.transport
        if self.pool.config.tls:
            # The GOAWAY already says goodbye; waiting for the peer's TLS close_notify
            # (which gRPC servers do not always send) would only stall shutdown, so
            # close the TCP connection under TLS once the bytes are written.
            transport = getattr(transport, "transport", None) or transport
        transport.loseConnection()
        self._abort_timer = self.reactor.callLater(SHUTDOWN_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_timer = None
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    # -- h2 events ---------------------------------------------------------------------

    def _dispatch(self, event: object) -> None:
        if isinstance(event, DataReceived):
            self._data_since_ping = True
            stream = self.streams.get(event.stream_id)
            if stream is None:
                # A stream the relay already let go: give the window back.
                self.h2.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                return
            stream.listener.upstream_data(
                event.data, event.flow_controlled_length, event.stream_ended is not None
            )
        elif isinstance(event, ResponseReceived):
            self._data_since_ping = True
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.listener.upstream_headers(
                    event.headers,
                    event.stream_ended is not None,
                )
        elif isinstance(event, TrailersReceived):
            self._data_since_ping = True
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.listener.upstream_trailers(event.headers)
        elif isinstance(event, StreamEnded):
            self._remote_ended(event.stream_id)
        elif isinstance(event, StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                error_code = int(event.error_code or 0)
                if error_code == ErrorCodes.STREAM_CLOSED:
                    # PROTOCOL-HTTP2.md "Errors": no status to map, implementations
                    # log it.  The server holds a stream the gateway thinks open as
                    # closed: something went wrong between the two.
                    self.log.warn(
                        "{upstream} reset stream {stream_id} with STREAM_CLOSED",
                        upstream=self.pool.address,
                        stream_id=event.stream_id,
                    )
                self._blocked.discard(stream)
                stream.closed = True
                stream.listener.upstream_reset(error_code)
                self.pool.capacity_freed(self)
        elif isinstance(event, WindowUpdated):
            self._window_opened(event.stream_id)
        elif isinstance(event, RemoteSettingsChanged):
            if not self.ready:
                self.ready = True
                self.pool.connection_ready(self)
            elif SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_opened(0)
            if SettingCodes.MAX_CONCURRENT_STREAMS in event.changed_settings:
                self.pool.capacity_freed(self)
        elif isinstance(event, ConnectionTerminated):
            self._goaway(event.last_stream_id, event.error_code, event.additional_data)
        elif isinstance(event, PingAckReceived):
            self._ping_outstanding = False

    def _remote_ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if not stream.local_ended:
            # The response finished before the request did (an early error): end
            # our side too, so the stream closes and frees its slot.
            stream.closed = True
            stream.local_ended = True
            self._blocked.discard(stream)
            try:
                self.h2.end_stream(stream_id)
            except H2Error:
                pass
        del self.streams[stream_id]
        self.pool.capacity_freed(self)

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream in self._blocked:
                self.write_pending(stream)
            return
        for stream in list(self._blocked):
            self.write_pending(stream)

    def _goaway(
        self, last_stream_id: int | None, error_code: object, debug_data: bytes | None
    ) -> None:
        self.draining = True
        self.log.info(
            "{upstream} sent GOAWAY ({error_code}, last stream {last_stream_id})",
            upstream=self.pool.address,
            error_code=error_code,
            last_stream_id=last_stream_id,
        )
        if error_code == ErrorCodes.ENHANCE_YOUR_CALM and debug_data == TOO_MANY_PINGS:
            self.pool.pings_too_frequent(self)
        last = last_stream_id if last_stream_id is not None else 2**31
        for stream_id in [sid for sid in self.streams if sid > last]:
            stream = self.streams.pop(stream_id)
            self._blocked.discard(stream)
            stream.closed = True
            # Never processed by the server: tell the client it may retry.
            stream.listener.upstream_reset(ErrorCodes.REFUSED_STREAM)
        self.pool.connection_draining(self)
        if not self.streams and self.transport is not None:
            self.transport.loseConnection()

    # -- keepalive ------------------------------------------------------------------------

    def _schedule_keepalive(self, delay: float | None = None) -> None:
        if delay is None:
            delay = self.pool.keepalive_interval
        self._keepalive = self.reactor.callLater(delay, self._keepalive_due)

    def _keepalive_due(self) -> None:
        self._keepalive = None
        if self.lost or self.draining or self.transport is None:
            return
        pool = self.pool
        interval = pool.keepalive_interval
        now = self.reactor.seconds()
        if self._ping_outstanding:
            # Nothing at all arrived since the PING (any read clears this).
            assert self._last_ping_sent is not None
            waited = now - self._last_ping_sent
            if waited < interval:
                self._schedule_keepalive(interval - waited)
                return
            self.log.warn(
                "{upstream} did not answer a keepalive PING; closing",
                upstream=pool.address,
            )
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        idle = now - self._last_received
        if idle < interval:
            self._schedule_keepalive(interval - idle)
            return
        if not self.streams and not pool.keepalive_without_calls:
            # No call to keep alive: a gRPC server would count the PING as a strike.
            self._schedule_keepalive()
            return
        if self._last_ping_sent is not None and not self._data_since_ping:
            allowed = self._last_ping_sent + pool.min_ping_interval_without_data
            if now < allowed:
                self._schedule_keepalive(allowed - now)
                return
        self._ping_outstanding = True
        self._last_ping_sent = now
        self._data_since_ping = False
        self.h2.ping(_PING_DATA)
        self.flush()
        self._schedule_keepalive()
