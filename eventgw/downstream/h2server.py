# -*- test-case-name: tests.test_h2server -*-
"""The downstream HTTP/2 server: one ``h2`` connection, one exchange per stream.

Shell module (Twisted).  It owns the bytes and the time of a client's HTTP/2
connection: it feeds ``h2``, turns each request stream into a
:class:`~eventgw.exchange.RequestHead` handed to a
:class:`~eventgw.exchange.RequestTarget`, and offers that target an
:class:`H2Exchange` -- the stream's :class:`~eventgw.exchange.ResponseWriter`.

Theory of operation:

* The listener creates :class:`H2ServerProtocol` after sniffing (ALPN ``h2``, or the
  h2c preface on cleartext), calls ``makeConnection`` and then ``dataReceived`` with
  everything it buffered, preface included.  ``connectionMade`` sends our SETTINGS and
  opens the connection window; the first ``dataReceived`` checks the preface.
* Inbound: ``dataReceived`` -> ``H2Connection.receive_data`` -> one dispatch per event
  -> one flush of ``data_to_send()``.  Request DATA is credited back to the client
  (``acknowledge_received_data``, by ``flow_controlled_length``) only once the target
  has taken it; a target that calls ``pause_request_body`` gets its DATA queued, and
  the client gets no WINDOW_UPDATE for it, so the queue is bounded by the windows we
  advertised (:data:`~eventgw.http2.STREAM_WINDOW` per stream,
  :data:`~eventgw.http2.CONNECTION_WINDOW` per connection).
* Outbound: ``write_body`` sends what the stream's and the connection's send windows
  allow, in frames of at most the client's MAX_FRAME_SIZE, and buffers the rest per
  stream.  Past :data:`~eventgw.http2.HIGH_WATERMARK` buffered bytes the target's
  registered producer is paused; WINDOW_UPDATEs drain the buffer and resume it at
  :data:`~eventgw.http2.LOW_WATERMARK`.  While the transport has paused us (the
  client is not reading) no DATA is written at all and every producer is paused.
* Memory per connection is bounded: inbound, at most CONNECTION_WINDOW (4 MiB) of
  request body held for paused streams, plus h2's partial frame (16 KiB), one transport
  read and an unfinished header block (2 x max_header_bytes); outbound, per stream at
  most HIGH_WATERMARK (64 KiB) plus one producer write, times max_concurrent_streams
  (100 by default: 6.4 MiB if every stream stalls at once), plus what the transport
  buffers before it pauses us (about 64 KiB for TCP).  Targets that write without
  registering a producer are not bounded by us.
* Writer calls made while a ``dataReceived`` batch is running are flushed once at its
  end; calls made while an upstream connection's read is processed are flushed once
  at the end of that read (:data:`eventgw.http2.WRITES`); calls from elsewhere (a
  timer) flush at the end of the call.  So a read costs one ``transport.write`` per
  connection it touched, not one per frame.
* Errors: an h2 ``ProtocolError`` has already queued a GOAWAY with the right code; we
  flush it, tell every stream's handler ``connection_lost`` and close.  Abuse the
  library does not catch (rapid reset, control-frame floods, header blocks, idle and
  slow clients) gets the same treatment with our own GOAWAY.  Every such close logs one
  line through :func:`eventgw.downstream.accesslog.log_protocol_error`; every stream one access
  event through :func:`eventgw.downstream.accesslog.log_exchange`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame, SettingsFrame
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eventgw._reactor import default_reactor
from eventgw.config import Limits
from eventgw.downstream.accesslog import log_exchange, log_protocol_error
from eventgw.exchange import (
    INTERNAL_ERROR,
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
    RequestTarget,
    StaticReply,
    send_error,
)
from eventgw.headers import CONNECTION_SPECIFIC
from eventgw.http2 import (
    ABORT_TIMEOUT,
    CONNECTION_WINDOW,
    CONTROL_FRAME_BURST,
    CONTROL_FRAME_RATE,
    DRAIN_TIMEOUT,
    HEADER_LIST_HARD_FACTOR,
    MAX_FRAME_SIZE,
    MAX_PAUSED_OUTBOUND_BYTES,
    RESET_BURST,
    RESET_RATE,
    STREAM_BURST_SLACK,
    STREAM_WINDOW,
    WRITES,
    LeanH2Connection,
    TokenBucket,
    WatermarkBuffer,
)
from eventgw.routing import is_grpc

if TYPE_CHECKING:
    from collections.abc import Callable

    from h2.events import Event

__all__ = ["PROTOCOL", "H2Exchange", "H2ServerProtocol", "response_headers"]

PROTOCOL: Final = "HTTP/2"

# h2's default initial connection window (RFC 9113 section 6.9.2); we add to it.
_DEFAULT_WINDOW: Final = 65535

# The status codes as :status values, built once (hpack would encode them anyway).
_STATUS: Final = {code: str(code).encode("ascii") for code in range(100, 600)}

# h2's outbound header validation and normalisation cost about 12-15 us per response
# (HEADERS plus trailers), 10% of this server's share of a relayed unary gRPC call.  The
# exchange contract already promises lower-case names, the relay's headers come from an
# h2 connection that validated them, and response_headers() below drops what validation
# would reject that a target might plausibly pass on (connection-specific fields,
# pseudo-headers).  So both are off.
_CHECK_OUTBOUND: Final = False


def response_headers(headers: Headers) -> Headers:
    """``headers`` fit for an HTTP/2 response or trailers block.

    Drops connection-specific fields (``te`` is kept only as ``trailers``) and
    pseudo-headers (``:status`` is ours to set), so a target cannot make us send a
    malformed block.
    """
    return [
        (name, value)
        for name, value in headers
        if name
        and name not in CONNECTION_SPECIFIC
        and name[0] != 58  # b":"
        and (name != b"te" or value == b"trailers")
    ]


def _peer_host(transport: object) -> str:
    get_peer = getattr(transport, "getPeer", None)
    if get_peer is None:
        return "-"
    peer = get_peer()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else str(peer)


class H2Exchange:
    """One request stream and its response: the :class:`ResponseWriter` of that stream.

    Invariant: it sits in its protocol's exchange table from RequestReceived until the
    response is complete (END_STREAM sent) *and* the request side is over, or until the
    stream or connection is lost; after that ``closed`` is true and every writer call
    is ignored, as the ResponseWriter contract promises.
    """

    __slots__ = (
        "_protocol",
        "bytes_in",
        "bytes_out",
        "closed",
        "delivering",
        "end_pending",
        "handler",
        "head",
        "inbox",
        "inbox_ended",
        "lost_reason",
        "no_body",
        "out",
        "producer",
        "producer_paused",
        "remote_ended",
        "request_paused",
        "request_trailers",
        "response_done",
        "started",
        "status",
        "stream_id",
        "trailers_pending",
    )

    def __init__(
        self, protocol: H2ServerProtocol, stream_id: int, head: RequestHead, started: float
    ) -> None:
        self._protocol = protocol
        self.stream_id = stream_id
        self.head = head
        self.started = started
        self.handler: RequestHandler | None = None
        self.status: int | None = None
        self.no_body = head.method == b"HEAD"
        self.out = WatermarkBuffer()
        self.producer: Producer | None = None
        self.producer_paused = False
        self.end_pending = False
        self.trailers_pending: Headers | None = None
        self.response_done = False
        self.remote_ended = False
        self.request_paused = False
        self.inbox: list[tuple[bytes, int]] = []
        self.inbox_ended = False
        self.delivering = False
        self.request_trailers: Headers = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.lost_reason: str | None = None

    def __repr__(self) -> str:
        return f"<H2Exchange stream {self.stream_id} status={self.status} closed={self.closed}>"

    # --- ResponseWriter -------------------------------------------------------------

    @property
    def head_sent(self) -> bool:
        return self.status is not None

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        if self.closed or self.status is not None:
            return
        self.status = status
        if status in (204, 304) or status < 200:
            self.no_body = True
        fields = [(b":status", _STATUS.get(status) or str(status).encode("ascii"))]
        fields += response_headers(headers)
        protocol = self._protocol
        try:
            protocol.conn.send_headers(self.stream_id, fields, end_stream=end)
        except ProtocolError as exc:
            protocol.stream_failed(self, exc)
            return
        if end:
            self.response_done = True
            protocol.response_finished(self)
        protocol.written()

    def write_body(self, data: bytes) -> None:
        if (
            self.closed
            or self.status is None
            or self.no_body
            or self.end_pending
            or self.response_done
            or not data
        ):
            return
        self.bytes_out += len(data)
        protocol = self._protocol
        if not self.out and not protocol.transport_paused:
            try:
                data = protocol.send_now(self, data)
            except ProtocolError as exc:
                protocol.stream_failed(self, exc)
                return
        if data:
            protocol.buffer_body(self, data)
        protocol.written()

    def end(self, trailers: Headers | None = None) -> None:
        if self.closed or self.response_done or self.end_pending:
            return
        protocol = self._protocol
        if self.status is None:
            # Contract breach (end before write_head): there is no response to finish.
            self.abort(INTERNAL_ERROR)
            return
        if self.out:
            self.end_pending = True
            self.trailers_pending = trailers or None
            return
        protocol.send_end(self, trailers)
        protocol.written()

    def abort(self, error_code: int = INTERNAL_ERROR) -> None:
        if self.closed:
            return
        protocol = self._protocol
        try:
            protocol.conn.reset_stream(self.stream_id, error_code)
        except ProtocolError:
            pass  # h2 already closed the stream; its StreamReset is on the way.
        protocol.finish(self, "aborted")
        protocol.written()

    def pause_request_body(self) -> None:
        self.request_paused = True

    def resume_request_body(self) -> None:
        if not self.request_paused:
            return
        self.request_paused = False
        if not self.closed and (self.inbox or self.inbox_ended):
            self._protocol.deliver_queued(self)
            self._protocol.written()

    def register_producer(self, producer: Producer) -> None:
        if self.closed:
            return
        self.producer = producer
        self.producer_paused = False
        self._protocol.sync_producer(self)

    def unregister_producer(self) -> None:
        self.producer = None
        self.producer_paused = False


@implementer(IPushProducer)
class H2ServerProtocol(Protocol):
    """The server side of one HTTP/2 connection.

    Invariant: ``conn`` is only driven from this object; after ``_closing`` is set
    (GOAWAY queued or connection lost) no more input is read and every exchange has
    been told ``connection_lost``.
    """

    log = Logger()

    def __init__(
        self,
        target: RequestTarget,
        limits: Limits,
        *,
        scheme: bytes,
        reactor: IReactorTime | None = None,
        access_log: bool = True,
    ) -> None:
        reactor = default_reactor(reactor)
        self._target = target
        self._limits = limits
        self._scheme = scheme
        self._clock = reactor
        self._access_log = access_log
        self._max_streams = limits.max_concurrent_streams
        self._max_header_bytes = limits.max_header_bytes
        self._hard_header_bytes = limits.max_header_bytes * HEADER_LIST_HARD_FACTOR
        self.peer = "-"
        self.conn = LeanH2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,
                validate_outbound_headers=_CHECK_OUTBOUND,
                normalize_outbound_headers=_CHECK_OUTBOUND,
            )
        )
        self.exchanges: dict[int, H2Exchange] = {}
        self.transport_paused = False
        self._blocked: dict[int, H2Exchange] = {}
        self._in_batch = False
        self._window_opened = False
        self._unfinished: list[H2Exchange] = []
        self._paused_outbound = 0
        self._closing = False
        self._lost = False
        self._preface_done = False
        self._header_block_since: float | None = None
        self._connected_at = 0.0
        self._idle_since = 0.0
        self._registered = False
        self._timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._draining = False
        self._drain_last_id = 0
        self._drain_timer: IDelayedCall | None = None
        self._drain_waiters: list[Deferred[None]] = []
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, 0.0)
        self._control = TokenBucket(CONTROL_FRAME_BURST, CONTROL_FRAME_RATE, 0.0)
        self._dispatch: dict[type[Event], Callable[[Event], None]] = {
            RequestReceived: self._request_received,  # type: ignore[dict-item]
            DataReceived: self._data_received,  # type: ignore[dict-item]
            StreamEnded: self._stream_ended,  # type: ignore[dict-item]
            TrailersReceived: self._trailers_received,  # type: ignore[dict-item]
            StreamReset: self._stream_reset,  # type: ignore[dict-item]
            WindowUpdated: self._window_updated,  # type: ignore[dict-item]
            RemoteSettingsChanged: self._settings_changed,  # type: ignore[dict-item]
            PingReceived: self._control_frame,
            UnknownFrameReceived: self._control_frame,
            ConnectionTerminated: self._connection_terminated,  # type: ignore[dict-item]
        }

    # --- Protocol -------------------------------------------------------------------

    def connectionMade(self) -> None:
        now = self._clock.seconds()
        self._connected_at = self._idle_since = now
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, now)
        self._control = TokenBucket(CONTROL_FRAME_BURST, CONTROL_FRAME_RATE, now)
        self.peer = _peer_host(self.transport)
        conn = self.conn
        # h2 enforces these ceilings (its concurrent-stream check runs while it parses a
        # whole read; its header decoder must finish a block to keep HPACK in sync); the
        # SETTINGS frame below advertises the real limits, which we enforce per stream
        # with REFUSED_STREAM and 431 (see eventgw.http2).
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self._max_streams + STREAM_BURST_SLACK,
                SettingCodes.MAX_HEADER_LIST_SIZE: self._hard_header_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            },
        )
        conn.decoder.max_header_list_size = self._hard_header_bytes
        conn.initiate_connection()
        conn.data_to_send()  # h2's SETTINGS carries the ceilings; send the limits instead
        conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        settings = SettingsFrame(0)
        settings.settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: self._max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            SettingCodes.MAX_HEADER_LIST_SIZE: self._max_header_bytes,
            SettingCodes.ENABLE_PUSH: 0,
        }
        transport: Any = self.transport  # ITransport + IConsumer (TCP or TLS)
        transport.write(settings.serialize() + conn.data_to_send())
        try:
            transport.registerProducer(self, True)
        except RuntimeError:
            # The sniffing protocol registered itself first; take its place.
            transport.unregisterProducer()
            transport.registerProducer(self, True)
        self._registered = True
        self._timer = self._clock.callLater(self._limits.header_timeout, self._on_timer)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._in_batch = True
        WRITES.hold()
        try:
            try:
                events = self.conn.receive_data(data)
            except ProtocolError as exc:
                if self.conn.state_machine.state is not ConnectionState.CLOSED:
                    # h2 checks the preface before its GOAWAY-on-error guard.
                    self.conn.close_connection(exc.error_code)
                self._protocol_error(str(exc) or type(exc).__name__, exc.error_code)
                return
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                # Defence in depth: h2 is not supposed to raise these for bad input,
                # but if it does, it is the peer's fault and must not crash us.
                self._abuse(f"h2 failed on input: {exc!r}", ErrorCodes.PROTOCOL_ERROR)
                return
            if events:
                if not self._preface_done:
                    self._preface_completed()
                dispatch = self._dispatch
                for event in events:
                    handle = dispatch.get(type(event))
                    if handle is not None:
                        handle(event)
                        if self._closing:
                            return
            if self._window_opened:
                self._window_opened = False
                self._push_all()
            if self._unfinished:
                self._reset_unfinished()
            self._watch_buffers()
        finally:
            self._in_batch = False
            self.flush()
            WRITES.release()  # upstream writes this read caused go out now

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._closing = True
        self._lose_all("connection lost")
        for timer in (self._timer, self._abort_timer, self._drain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._abort_timer = self._drain_timer = None
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # --- IPushProducer (the transport pausing us) -------------------------------------

    def pauseProducing(self) -> None:
        self.transport_paused = True
        for exchange in list(self.exchanges.values()):
            self.sync_producer(exchange)

    def resumeProducing(self) -> None:
        self.transport_paused = False
        self._paused_outbound = 0
        if self._closing:
            return
        was_in_batch = self._in_batch
        self._in_batch = True
        try:
            self._push_all()
            for exchange in list(self.exchanges.values()):
                self.sync_producer(exchange)
            if self._unfinished and not was_in_batch:
                self._reset_unfinished()
        finally:
            self._in_batch = was_in_batch
        self.written()

    def stopProducing(self) -> None:
        # The transport is going away; connectionLost does the cleanup.
        self.transport_paused = True

    # --- public API for the service -------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams currently being served."""
        return len(self.exchanges)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> Deferred[None]:
        """Stop taking new streams and close once the open ones finish.

        Sends GOAWAY (NO_ERROR) naming the last stream we will serve; streams the client
        opens after it are refused (REFUSED_STREAM, which clients retry elsewhere).
        Streams still open after ``timeout`` seconds are cut off.  The Deferred fires
        when the connection has closed.
        """
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
            return waiter
        self._drain_waiters.append(waiter)
        if self._draining or self._closing:
            return waiter
        self._draining = True
        self._drain_last_id = self.conn.highest_inbound_stream_id
        # The GOAWAY is written by hand: h2 moves to CLOSED once it sends one and would
        # then refuse to finish the streams in flight, which is the point of draining.
        self.flush()
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = self._drain_last_id
        goaway.error_code = ErrorCodes.NO_ERROR
        assert self.transport is not None
        self.transport.write(goaway.serialize())
        if not self.exchanges:
            self._close()
        else:
            self._drain_timer = self._clock.callLater(timeout, self._drain_expired)
        return waiter

    # --- plumbing used by H2Exchange ---------------------------------------------------

    def flush(self) -> None:
        """Write whatever h2 has queued."""
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            if self.transport_paused and not self._lost:
                self._paused_outbound += len(data)
                if self._paused_outbound > MAX_PAUSED_OUTBOUND_BYTES:
                    self._flood_while_paused()
                    return
            self.transport.write(data)

    def written(self) -> None:
        """A writer call changed h2's state: flush now, unless this connection's read
        or another connection's (see :class:`~eventgw.http2.WriteCoalescer`) will."""
        if not self._in_batch and not WRITES.defer(self.flush):
            self.flush()

    def send_now(self, exchange: H2Exchange, data: bytes) -> bytes:
        """Send what the windows allow of ``data``; return the rest."""
        conn = self.conn
        stream_id = exchange.stream_id
        window = conn.local_flow_control_window(stream_id)
        max_frame = conn.max_outbound_frame_size
        size = len(data)
        if size <= window and size <= max_frame:
            conn.send_data(stream_id, data)
            return b""
        sent = 0
        while sent < size and window > 0:
            chunk = min(window, max_frame, size - sent)
            conn.send_data(stream_id, data[sent : sent + chunk])
            sent += chunk
            window -= chunk
        return data[sent:]

    def buffer_body(self, exchange: H2Exchange, data: bytes) -> None:
        """Hold ``data`` until the client's windows open; pause the producer past high."""
        self._blocked[exchange.stream_id] = exchange
        if exchange.out.append(data):
            self.sync_producer(exchange)

    def send_end(self, exchange: H2Exchange, trailers: Headers | None) -> None:
        """END_STREAM, on a trailers HEADERS frame when there are trailers."""
        try:
            if trailers:
                self.conn.send_headers(
                    exchange.stream_id, response_headers(trailers), end_stream=True
                )
            else:
                self.conn.end_stream(exchange.stream_id)
        except ProtocolError as exc:
            self.stream_failed(exchange, exc)
            return
        exchange.response_done = True
        self.response_finished(exchange)

    def sync_producer(self, exchange: H2Exchange) -> None:
        """Pause or resume the exchange's producer to match the buffer and transport."""
        producer = exchange.producer
        if producer is None:
            return
        want_paused = self.transport_paused or exchange.out.above_high
        if want_paused == exchange.producer_paused:
            return
        exchange.producer_paused = want_paused
        try:
            if want_paused:
                producer.pause_producing()
            else:
                producer.resume_producing()
        except Exception:
            self.log.failure(
                "producer failed on stream {stream_id}", stream_id=exchange.stream_id
            )
            self._target_failed(exchange)

    def response_finished(self, exchange: H2Exchange) -> None:
        """END_STREAM went out: finish now, or reset the request side if still open."""
        if exchange.remote_ended:
            self.finish(exchange, exchange.status if exchange.status is not None else "-")
        elif self._in_batch:
            # The client's END_STREAM may be further down this very batch: decide after.
            self._unfinished.append(exchange)
        else:
            self._reset_early(exchange)

    def stream_failed(self, exchange: H2Exchange, exc: ProtocolError) -> None:
        """h2 refused a writer call: the stream is already gone or the target sent junk."""
        if exchange.closed:
            return
        if isinstance(exc, StreamClosedError):
            # The client reset the stream in the read being processed (its StreamReset
            # event has not been dispatched yet): a race, not an error.
            self._lose(exchange, "client reset the stream", "reset")
            return
        try:
            self.conn.reset_stream(exchange.stream_id, ErrorCodes.INTERNAL_ERROR)
        except ProtocolError:
            pass  # h2 had closed the stream already (a client RST in this batch)
        log_protocol_error(
            self.peer, PROTOCOL, f"stream {exchange.stream_id}: response refused by h2: {exc}"
        )
        self._lose(exchange, f"response refused by h2: {exc}", "aborted")
        self.written()

    def finish(self, exchange: H2Exchange, status: int | str) -> None:
        """The exchange is over on both sides: forget it and log it."""
        if exchange.closed:
            return
        exchange.closed = True
        stream_id = exchange.stream_id
        self.exchanges.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        exchange.out.clear()
        exchange.producer = None
        if exchange.inbox:
            self._ack_inbox(exchange)
        now = self._clock.seconds()
        if isinstance(status, int):
            self._resets.give()  # a completed stream earns back one reset token
        if self._access_log:
            log_exchange(
                exchange.head, status, exchange.bytes_in, exchange.bytes_out,
                now - exchange.started,
            )
        if not self.exchanges:
            self._idle_since = now
            if self._draining and not self._closing:
                self._close()

    def deliver_queued(self, exchange: H2Exchange) -> None:
        """Hand queued request body (and its end) to a handler that resumed."""
        if exchange.delivering:
            return  # resumed from inside body_received: the outer loop carries on
        exchange.delivering = True
        try:
            inbox = exchange.inbox
            while inbox and not exchange.request_paused and not exchange.closed:
                data, flow = inbox.pop(0)
                self._deliver(exchange, data, flow)
            if (
                exchange.inbox_ended
                and not inbox
                and not exchange.request_paused
                and not exchange.closed
            ):
                exchange.inbox_ended = False
                self._body_ended(exchange)
        finally:
            exchange.delivering = False

    # --- events ---------------------------------------------------------------------

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self.conn
        if len(self.exchanges) >= self._max_streams or (
            self._draining and stream_id > self._drain_last_id
        ):
            # RFC 9113 section 5.1.2: a stream error, which clients retry.  Refused
            # streams cost a reset token: opening streams only to have them refused
            # is the rapid-reset attack by other means.
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            if not self._resets.take(self._clock.seconds()):
                self._abuse("too many refused streams (rapid reset)")
            return
        method = path = authority = host = content_length = None
        expect_continue = False
        regular: Headers = []
        size = 0
        for name, value in event.headers:
            size += len(name) + len(value) + 32
            if name[0] == 58:  # b":"; h2 has checked the pseudo-headers
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
            else:
                regular.append((name, value))
                if name == b"content-length":
                    content_length = value
                elif name == b"host":
                    host = value
                elif name == b"expect":
                    expect_continue = value.lower() == b"100-continue"
        body_expected = event.stream_ended is None
        now = self._clock.seconds()
        head = RequestHead(
            method=method or b"",
            target=path or b"",
            authority=authority or host or b"",
            scheme=self._scheme,
            headers=regular,
            protocol=PROTOCOL,
            peer=self.peer,
            content_length=(
                int(content_length)
                if content_length is not None and content_length.isdigit()
                else (None if body_expected else 0)
            ),
            body_expected=body_expected,
        )
        exchange = H2Exchange(self, stream_id, head, now)
        self.exchanges[stream_id] = exchange
        if size > self._max_header_bytes:
            self._refuse_large_headers(exchange, size)
            return
        if method == b"CONNECT":
            exchange.handler = StaticReply()
            send_error(exchange, 405, "CONNECT is not supported")
            return
        try:
            handler = self._target.start_exchange(head, exchange)
        except Exception:
            self.log.failure("target failed to start stream {stream_id}", stream_id=stream_id)
            self._target_failed(exchange)
            return
        exchange.handler = handler
        if exchange.lost_reason is not None:
            # Lost while the target was still starting (a client reset in this read).
            self._tell_lost(handler, exchange)
        elif expect_continue and exchange.status is None and not exchange.closed:
            # The target did not refuse at once (413, 404...): ask for the body.
            conn.send_headers(stream_id, [(b":status", b"100")])

    def _data_received(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        flow = event.flow_controlled_length
        data = event.data
        exchange = self.exchanges.get(stream_id)
        if not data and event.stream_ended is None and not self._control_ok():
            self._abuse("flood of empty DATA frames")
            return
        if exchange is None or exchange.closed:
            if flow:
                self.conn.acknowledge_received_data(flow, stream_id)
            return
        exchange.bytes_in += len(data)
        if exchange.request_paused or exchange.inbox or exchange.delivering:
            exchange.inbox.append((data, flow))
            return
        self._deliver(exchange, data, flow)

    def _trailers_received(self, event: TrailersReceived) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is not None:
            exchange.request_trailers = list(event.headers)

    def _stream_ended(self, event: StreamEnded) -> None:
        exchange = self.exchanges.get(event.stream_id)
        if exchange is None or exchange.closed:
            return
        exchange.remote_ended = True
        if exchange.request_paused or exchange.inbox or exchange.delivering:
            exchange.inbox_ended = True
        else:
            self._body_ended(exchange)
        if exchange.response_done and not exchange.closed:
            self.finish(exchange, exchange.status if exchange.status is not None else "-")

    def _stream_reset(self, event: StreamReset) -> None:
        stream_id = event.stream_id
        code = _code_name(event.error_code)
        if event.remote_reset:
            if not self._resets.take(self._clock.seconds()):
                self._abuse("client reset too many streams (rapid reset, CVE-2023-44487)")
                return
            reason = f"client reset the stream ({code})"
        else:
            reason = f"stream reset for a protocol error ({code})"
            log_protocol_error(self.peer, PROTOCOL, f"stream {stream_id}: {reason}")
        exchange = self.exchanges.get(stream_id)
        if exchange is not None:
            status = exchange.status if exchange.response_done else None
            self._lose(exchange, reason, "reset" if status is None else status)

    def _window_updated(self, event: WindowUpdated) -> None:
        # Sent after the whole read (see dataReceived), so that streams whose windows
        # opened together share the connection window frame by frame.
        if self._blocked:
            self._window_opened = True

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        if not self._control_ok():
            self._abuse("SETTINGS flood")
            return
        changed = event.changed_settings
        if self._blocked and (
            SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed
        ):
            self._window_opened = True

    def _control_frame(self, event: Event) -> None:
        if not self._control_ok():
            name = "PING" if isinstance(event, PingReceived) else "unknown frame"
            self._abuse(f"{name} flood")

    def _connection_terminated(self, event: ConnectionTerminated) -> None:
        # h2 refuses to send anything after a GOAWAY, so every open stream is lost.
        code = _code_name(event.error_code or 0)
        if event.error_code != ErrorCodes.NO_ERROR:
            log_protocol_error(self.peer, PROTOCOL, f"client sent GOAWAY ({code})")
        self._teardown(f"client sent GOAWAY ({code})")

    # --- request side helpers -------------------------------------------------------

    def _deliver(self, exchange: H2Exchange, data: bytes, flow: int) -> None:
        handler = exchange.handler
        if data and handler is not None:
            try:
                handler.body_received(data)
            except Exception:
                self.log.failure(
                    "handler failed on body of stream {stream_id}",
                    stream_id=exchange.stream_id,
                )
                self._target_failed(exchange)
        if flow:
            # Credit the client only now that the target has the bytes.
            self.conn.acknowledge_received_data(flow, exchange.stream_id)

    def _ack_inbox(self, exchange: H2Exchange) -> None:
        conn = self.conn
        for _data, flow in exchange.inbox:
            if flow and not self._closing:
                conn.acknowledge_received_data(flow, exchange.stream_id)
        exchange.inbox.clear()

    def _body_ended(self, exchange: H2Exchange) -> None:
        handler = exchange.handler
        if handler is None:
            return
        try:
            handler.body_ended(exchange.request_trailers)
        except Exception:
            self.log.failure(
                "handler failed at end of stream {stream_id}", stream_id=exchange.stream_id
            )
            self._target_failed(exchange)

    def _refuse_large_headers(self, exchange: H2Exchange, size: int) -> None:
        log_protocol_error(
            self.peer,
            PROTOCOL,
            f"stream {exchange.stream_id}: header list of {size} bytes exceeds "
            f"{self._max_header_bytes}",
        )
        exchange.handler = StaticReply()
        content_type = exchange.head.header(b"content-type")
        if content_type is not None and is_grpc(content_type):
            # gRPC clients read the status from trailers: RESOURCE_EXHAUSTED (8).
            exchange.write_head(
                200,
                [
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", b"8"),
                    (b"grpc-message", b"request%20headers%20too%20large"),
                ],
                end=True,
            )
        else:
            send_error(exchange, 431, "request header fields too large")

    def _target_failed(self, exchange: H2Exchange) -> None:
        """A target callback raised: answer 500 if we still can, else reset."""
        if exchange.closed:
            return
        if exchange.handler is None or not isinstance(exchange.handler, StaticReply):
            exchange.handler = StaticReply()
        if exchange.status is None:
            send_error(exchange, 500, "internal error")
        else:
            exchange.abort(INTERNAL_ERROR)

    # --- response side helpers ------------------------------------------------------

    def _push(self, exchange: H2Exchange, frames: int | None) -> bool:
        """Send buffered body as the windows allow (at most ``frames`` frames).

        Returns whether anything was sent.
        """
        conn = self.conn
        stream_id = exchange.stream_id
        out = exchange.out
        sent_any = False
        try:
            max_frame = conn.max_outbound_frame_size
            window = conn.local_flow_control_window(stream_id)
            while out and window > 0 and (frames is None or frames > 0):
                chunk = out.take(min(window, max_frame))
                conn.send_data(stream_id, chunk)
                window -= len(chunk)
                sent_any = True
                if frames is not None:
                    frames -= 1
        except ProtocolError as exc:
            self.stream_failed(exchange, exc)
            return sent_any
        if not out:
            self._blocked.pop(stream_id, None)
            if exchange.end_pending:
                exchange.end_pending = False
                trailers, exchange.trailers_pending = exchange.trailers_pending, None
                self.send_end(exchange, trailers)
        if out.fell_to_low():
            self.sync_producer(exchange)
        return sent_any

    def _push_all(self) -> None:
        """Share the connection window among blocked streams, a frame each per round."""
        if self.transport_paused:
            return
        while self._blocked and self.conn.outbound_flow_control_window > 0:
            progressed = False
            for exchange in list(self._blocked.values()):
                if not exchange.closed and self._push(exchange, 1):
                    progressed = True
            if not progressed:
                break

    def _reset_unfinished(self) -> None:
        unfinished, self._unfinished = self._unfinished, []
        for exchange in unfinished:
            if not exchange.closed:
                self._reset_early(exchange)

    def _reset_early(self, exchange: H2Exchange) -> None:
        # RFC 9113 section 8.1: the response is complete while the request is still
        # coming; ask the client to stop sending without error.
        try:
            self.conn.reset_stream(exchange.stream_id, ErrorCodes.NO_ERROR)
        except ProtocolError:
            pass
        self.finish(exchange, exchange.status if exchange.status is not None else "-")

    # --- abuse, errors, closing -----------------------------------------------------

    def _control_ok(self) -> bool:
        return self._control.take(self._clock.seconds())

    def _watch_buffers(self) -> None:
        """Bound what h2's frame buffer holds between reads.

        h2 checks a frame's declared length only once the whole frame has arrived, so
        a header announcing 16 MiB would be buffered in full: we check the length as
        soon as the 9-byte header is in.  h2 keeps the frames of an unfinished
        HEADERS+CONTINUATION block and caps only their count; we cap their bytes and
        their time (CVE-2024-27316, slowloris).
        """
        frames = self.conn.incoming_buffer
        partial = getattr(frames, "_data", None)
        if partial and len(partial) >= 9:
            declared = int.from_bytes(partial[:3], "big")
            if declared > self.conn.max_inbound_frame_size:
                self._abuse(
                    f"frame of {declared} bytes exceeds MAX_FRAME_SIZE",
                    ErrorCodes.FRAME_SIZE_ERROR,
                )
                return
        pending = getattr(frames, "_headers_buffer", None)
        if not pending and not (partial and not self.exchanges):
            # (A frame trickling in while no stream is open is most likely the next
            # request's HEADERS: it gets the header timeout too.)
            self._header_block_since = None
            return
        if pending and sum(len(frame.data) for frame in pending) > self._hard_header_bytes:
            self._abuse("header block too large (CONTINUATION flood, CVE-2024-27316)")
            return
        if self._header_block_since is None:
            self._header_block_since = now = self._clock.seconds()
            timer = self._timer
            deadline = now + self._limits.header_timeout
            if timer is not None and timer.active() and timer.getTime() > deadline:
                timer.reset(self._limits.header_timeout)

    def _preface_completed(self) -> None:
        """The header-timeout phase is over; the idle clock may be the sooner one."""
        self._preface_done = True
        timer = self._timer
        if timer is not None and timer.active():
            remaining = self._idle_since + self._limits.idle_timeout - self._clock.seconds()
            if timer.getTime() - self._clock.seconds() > remaining:
                timer.reset(max(remaining, 0.0))

    def _on_timer(self) -> None:
        self._timer = None
        if self._closing:
            return
        now = self._clock.seconds()
        header_timeout = self._limits.header_timeout
        if not self._preface_done or self._header_block_since is not None:
            since = self._connected_at if not self._preface_done else self._header_block_since
            assert since is not None
            remaining = since + header_timeout - now
            if remaining <= 0:
                what = "connection preface" if not self._preface_done else "header block"
                self._abuse(
                    f"client did not complete its {what} within {header_timeout:g}s",
                    ErrorCodes.PROTOCOL_ERROR,
                )
                return
            self._timer = self._clock.callLater(remaining, self._on_timer)
            return
        idle_timeout = self._limits.idle_timeout
        if self.exchanges:
            self._timer = self._clock.callLater(idle_timeout, self._on_timer)
            return
        remaining = self._idle_since + idle_timeout - now
        if remaining <= 0:
            self.log.info(
                "{peer} HTTP/2 connection idle for {idle_timeout}s: closing",
                peer=self.peer, idle_timeout=idle_timeout,
            )
            self._goaway_and_close(ErrorCodes.NO_ERROR, "idle timeout")
            return
        self._timer = self._clock.callLater(remaining, self._on_timer)

    def _protocol_error(self, message: str, code: int) -> None:
        """h2 rejected the input and queued a GOAWAY: flush it and close."""
        log_protocol_error(self.peer, PROTOCOL, f"{message} (GOAWAY {_code_name(code)})")
        self._teardown(f"connection error: {message}")

    def _abuse(self, reason: str, code: ErrorCodes = ErrorCodes.ENHANCE_YOUR_CALM) -> None:
        log_protocol_error(self.peer, PROTOCOL, f"{reason} (GOAWAY {_code_name(code)})")
        self._goaway_and_close(code, reason)

    def _goaway_and_close(self, code: ErrorCodes, reason: str) -> None:
        try:
            self.conn.close_connection(code)
        except ProtocolError:
            pass
        self._teardown(reason)

    def _flood_while_paused(self) -> None:
        log_protocol_error(
            self.peer,
            PROTOCOL,
            f"client is not reading but keeps us writing (over {MAX_PAUSED_OUTBOUND_BYTES} "
            "bytes of control frames while paused): aborting",
        )
        self._closing = True
        self._lose_all("client flooded control frames without reading")
        transport: Any = self.transport
        if transport is not None:
            self._unregister()
            transport.abortConnection()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if not self._closing:
            self._goaway_and_close(ErrorCodes.NO_ERROR, "drain timeout")

    def _close(self) -> None:
        """Close cleanly: nothing is in flight (idle or drained)."""
        self._teardown("connection closed")

    def _teardown(self, reason: str) -> None:
        """Flush what h2 queued (a GOAWAY), lose every stream, close the transport."""
        if self._closing:
            return
        self._closing = True
        self.flush()
        self._lose_all(reason)
        transport = self.transport
        if transport is not None and not self._lost:
            self._unregister()
            transport.loseConnection()
            self._abort_timer = self._clock.callLater(ABORT_TIMEOUT, self._abort_now)

    def _unregister(self) -> None:
        """Stop being the transport's producer; needed before closing it.

        A TLS transport does not shut down while a producer is registered, and a TCP
        transport that drains while its producer is paused resumes it instead of
        closing.
        """
        transport: Any = self.transport
        if self._registered and transport is not None:
            self._registered = False
            transport.unregisterProducer()

    def _abort_now(self) -> None:
        self._abort_timer = None
        transport: Any = self.transport
        if not self._lost and transport is not None:
            transport.abortConnection()

    def _lose(self, exchange: H2Exchange, reason: str, status: int | str) -> None:
        if exchange.closed:
            return
        exchange.lost_reason = reason
        self.finish(exchange, status)
        if exchange.handler is not None:
            self._tell_lost(exchange.handler, exchange)

    def _tell_lost(self, handler: RequestHandler, exchange: H2Exchange) -> None:
        try:
            handler.connection_lost(exchange.lost_reason or "connection lost")
        except Exception:
            self.log.failure(
                "handler failed in connection_lost of stream {stream_id}",
                stream_id=exchange.stream_id,
            )

    def _lose_all(self, reason: str) -> None:
        for exchange in list(self.exchanges.values()):
            status = exchange.status if exchange.response_done else None
            self._lose(exchange, reason, "aborted" if status is None else status)


def _code_name(code: int | ErrorCodes) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{int(code):x}"
