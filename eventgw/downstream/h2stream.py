# -*- test-case-name: tests.test_h2server -*-
"""One stream of the downstream HTTP/2 server: its request body, its response, its end.

Shell module (Twisted logging, the access log).  :class:`H2Stream` is the
:class:`~eventgw.exchange.ResponseWriter` a target gets for one request stream, and
the request side's dispatch point for that stream's events.  It owns what is per
stream: the response bytes waiting for the client's windows (a
:class:`~eventgw.http2.WatermarkBuffer`), the target's producer and whether it is
paused, the request body queued while the target has paused it, the declared
content-length the request body is held against (RFC 9113 section 8.1.1: a mismatch
is a stream error PROTOCOL_ERROR, and the frame that completes the declared length
waits for END_STREAM, so a target never forwards a complete request that turns out
malformed), the counters of the access-log line, and the logic that ends the stream
(END_STREAM, trailers, the early RST_STREAM NO_ERROR of RFC 9113 section 8.1, resets
and losses).

Two frames for a small answer: while the connection holds its flush (a read being
processed, on this connection or another, see :class:`~eventgw.http2.WriteCoalescer`),
a body chunk that fits the windows is kept back as the stream's ``tail`` instead of
going to ``h2`` at once (not for gRPC, whose end is a trailers HEADERS frame anyway).
An ``end()`` without trailers that follows in the same turn sends it as the last DATA
frame with END_STREAM on it (HEADERS + DATA, not HEADERS + DATA + an empty DATA);
anything else -- more body, trailers, the flush itself -- releases it first as a plain
DATA frame, so the order of bytes never changes.

The connection (:class:`~eventgw.downstream.h2server.H2ServerProtocol`) owns the
``h2`` state machine, the stream table, the timers, the event dispatch and the one
flush per read.  It offers each stream the :class:`StreamHost` interface and nothing
more: streams queue their frames on the shared ``h2`` connection (``conn``), ask for
a flush (``written``), join or leave the set of streams waiting for window
(``stream_blocked``/``stream_unblocked``), hand over the request side they cannot
reset yet (``reset_after_read``) and report that they are over (``stream_closed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Protocol

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError, StreamClosedError
from twisted.logger import Logger

from eventgw.downstream.accesslog import count_exchange, log_exchange, log_protocol_error
from eventgw.downstream.h2heads import PROTOCOL, h2_response_headers
from eventgw.downstream.stamp import stamp
from eventgw.exchange import (
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
    RequestTarget,
    StaticReply,
    send_error,
)
from eventgw.http2 import SERVER_STREAM_WINDOW, WatermarkBuffer
from eventgw.requestid import assign_request_id

if TYPE_CHECKING:
    from h2.connection import H2Connection
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["H2Stream", "StreamHost"]

# The status codes as :status values, built once (hpack would encode them anyway).
_STATUS: Final = {code: str(code).encode("ascii") for code in range(100, 600)}

# An error answered before the request body is in (a 413, a 401 from upstream) is
# followed by reading and discarding the rest of the body, this much at most (beyond
# the stream window the client holds already) for this long at most, before the stream
# is reset: a client that fails its request on an RST_STREAM it gets while it still
# sends (curl, httpx) shows the answer instead.
DISCARD_BYTES: Final = 1 << 20
DISCARD_SECONDS: Final = 2.0


class StreamHost(Protocol):
    """What a stream may use of its connection."""

    @property
    def conn(self) -> H2Connection:
        """The connection's ``h2`` state machine: streams queue their frames on it."""

    @property
    def transport_paused(self) -> bool:
        """Whether the client has stopped reading (no DATA may be written)."""

    @property
    def closing(self) -> bool:
        """Whether the connection is closing (nothing more is acknowledged)."""

    def now(self) -> float:
        """The reactor's clock."""

    def call_later(self, delay: float, call: Callable[[], object]) -> IDelayedCall:
        """Run ``call`` on the reactor in ``delay`` seconds (cancellable)."""

    def written(self) -> None:
        """A stream queued frames: flush them now or at the end of the read."""

    def stream_blocked(self, stream: H2Stream) -> None:
        """``stream`` holds body waiting for the windows to open."""

    def stream_unblocked(self, stream_id: int) -> None:
        """The stream's buffer is empty (or the stream is gone)."""

    def reset_after_read(self, stream: H2Stream) -> bool:
        """Take over the early reset of ``stream`` until the read being processed is
        done (the client's END_STREAM may be further down it); ``False`` when no read
        is being processed."""

    def stream_closed(self, stream: H2Stream, completed: bool) -> None:
        """``stream`` is over on both sides; ``completed`` when it ended normally."""

    def holding_flush(self) -> bool:
        """Whether the next flush waits for the end of a read being processed."""

    def tail_held(self, stream: H2Stream) -> None:
        """``stream`` keeps a body chunk back (its ``tail``): release it before the
        next flush (:meth:`H2Stream.release_tail`)."""


class H2Stream:
    """One request stream and its response: the :class:`ResponseWriter` of that stream.

    Invariant: it sits in its connection's stream table from RequestReceived until the
    response is complete (END_STREAM sent) *and* the request side is over, or until the
    stream or connection is lost; after that ``closed`` is true and every writer call
    is ignored, as the ResponseWriter contract promises.
    """

    log = Logger()

    __slots__ = (
        "_access_log",
        "_discard_timer",
        "_host",
        "bytes_in",
        "bytes_out",
        "closed",
        "declared",
        "delivering",
        "discard_left",
        "end_pending",
        "handler",
        "head",
        "held",
        "inbox",
        "inbox_ended",
        "lost_reason",
        "no_body",
        "out",
        "producer",
        "producer_paused",
        "remote_ended",
        "request_id",
        "request_paused",
        "request_trailers",
        "response_done",
        "started",
        "status",
        "stream_id",
        "tail",
        "tail_ok",
        "trailers_pending",
    )

    def __init__(
        self,
        host: StreamHost,
        stream_id: int,
        head: RequestHead,
        started: float,
        *,
        access_log: bool = True,
        declared_length: int | None = None,
    ) -> None:
        self._host = host
        self._access_log = access_log
        self.stream_id = stream_id
        self.head = head
        # Before the target sees the head: it forwards the id, the response returns it.
        self.request_id = assign_request_id(head)
        self.started = started
        self.discard_left: int | None = None  # set while discarding the request body
        self._discard_timer: IDelayedCall | None = None
        self.handler: RequestHandler | None = None
        self.status: int | None = None
        self.no_body = head.method == b"HEAD"
        self.out = WatermarkBuffer()
        self.tail: bytes | None = None
        self.tail_ok = False  # set by write_head: not for gRPC, whose end is trailers
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
        self.declared = declared_length
        self.held = False
        self.request_trailers: Headers = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.closed = False
        self.lost_reason: str | None = None

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} status={self.status} closed={self.closed}>"

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
        self.tail_ok = not any(
            name == b"content-type" and value.startswith(b"application/grpc")
            for name, value in headers
        )
        fields = [(b":status", _STATUS.get(status) or str(status).encode("ascii"))]
        fields += h2_response_headers(stamp(headers, self.request_id))
        host = self._host
        try:
            host.conn.send_headers(self.stream_id, fields, end_stream=end)
        except ProtocolError as exc:
            self.failed(exc)
            return
        if end:
            self.response_done = True
            self._response_finished()
        host.written()

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
        host = self._host
        if self.tail is not None:
            self.release_tail()
            if self.closed:
                return
        if not self.out and not host.transport_paused:
            if self.tail_ok and host.holding_flush() and self._fits(len(data)):
                self.tail = data
                host.tail_held(self)
                host.written()
                return
            try:
                data = self._send_now(data)
            except ProtocolError as exc:
                self.failed(exc)
                return
        if data:
            host.stream_blocked(self)
            if self.out.append(data):
                self.sync_producer()
        host.written()

    def end(self, trailers: Headers | None = None) -> None:
        if self.closed or self.response_done or self.end_pending:
            return
        if self.status is None:
            # Contract breach (end before write_head): there is no response to finish.
            self.abort(ErrorCodes.INTERNAL_ERROR)
            return
        tail = self.tail
        if tail is not None:
            if trailers or not self._fits(len(tail)):
                self.release_tail()
                if self.closed:
                    return
            else:
                self.tail = None
                try:
                    self._host.conn.send_data(self.stream_id, tail, end_stream=True)
                except ProtocolError as exc:
                    self.failed(exc)
                    return
                self.response_done = True
                self._response_finished()
                self._host.written()
                return
        if self.out:
            self.end_pending = True
            self.trailers_pending = trailers or None
            return
        self._send_end(trailers)
        self._host.written()

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        if self.closed:
            return
        host = self._host
        try:
            host.conn.reset_stream(self.stream_id, error_code)
        except ProtocolError:
            pass  # h2 already closed the stream; its StreamReset is on the way.
        self.finish("aborted")
        host.written()

    def pause_request_body(self) -> None:
        self.request_paused = True

    def resume_request_body(self) -> None:
        if not self.request_paused:
            return
        self.request_paused = False
        if not self.closed and (self.inbox or self.inbox_ended):
            self._deliver_queued()
            self._host.written()

    def register_producer(self, producer: Producer) -> None:
        if self.closed:
            return
        self.producer = producer
        self.producer_paused = False
        self.sync_producer()

    def unregister_producer(self) -> None:
        self.producer = None
        self.producer_paused = False

    # --- request side: called by the connection's event dispatch --------------------

    def start(self, target: RequestTarget) -> bool:
        """Hand the head to ``target``; ``True`` when the stream still waits for its
        answer (so a ``100-continue`` makes sense)."""
        try:
            handler = target.start_exchange(self.head, self)
        except Exception:
            self.log.failure("target failed to start stream {stream_id}", stream_id=self.stream_id)
            self.target_failed()
            return False
        self.handler = handler
        if self.lost_reason is not None:
            # Lost while the target was still starting (a client reset in this read).
            self._tell_lost(handler)
            return False
        return self.status is None and not self.closed

    def refuse(self, status: int, message: str, reply: Headers | None = None) -> None:
        """Answer without a target: ``reply`` as a trailers-only response when given,
        else the gateway's JSON error with ``status``."""
        self.handler = StaticReply()
        if reply is not None:
            self.write_head(200, reply, end=True)
        else:
            send_error(self, status, message)

    def data_received(self, data: bytes, flow: int, ends: bool = False) -> None:
        """A DATA frame (``ends``: it carries END_STREAM): to the handler now, or
        queued while it is paused.

        RFC 9113 section 8.1.1: the DATA must add up to the declared content-length.
        More than declared is a stream error; the frame that completes the declared
        length without END_STREAM is held until END_STREAM arrives, so that a target
        which forwarded the length never hands on a complete request that turns out
        malformed.
        """
        self.bytes_in += len(data)
        if self.discard_left is not None:
            self._discard(len(data), flow)
            return
        declared = self.declared
        if declared is not None:
            if self.bytes_in > declared:
                if flow:
                    self._host.conn.acknowledge_received_data(flow, self.stream_id)
                self.malformed(f"{self.bytes_in} bytes of DATA for content-length {declared}")
                return
            if self.bytes_in == declared and data and not ends:
                self.held = True
        if self.request_paused or self.inbox or self.delivering or self.held:
            self.inbox.append((data, flow))
            return
        self._deliver(data, flow)

    def remote_end(self) -> None:
        """The client's END_STREAM: the request body is complete."""
        self.remote_ended = True
        if self.discard_left is not None:
            self._stop_discarding()
            return
        declared = self.declared
        if declared is not None and self.bytes_in != declared:
            self.malformed(f"{self.bytes_in} bytes of DATA for content-length {declared}")
            return
        if self.held:
            self.held = False
            self.inbox_ended = True
            self._deliver_queued()
        elif self.request_paused or self.inbox or self.delivering:
            self.inbox_ended = True
        else:
            self._body_ended()
        if self.response_done and not self.closed:
            self.finish(self.status if self.status is not None else "-")

    def release_tail(self) -> None:
        """Send the body chunk kept back (see the module docstring) as a plain DATA
        frame, or buffer what the windows no longer allow."""
        tail, self.tail = self.tail, None
        if tail is None or self.closed:
            return
        host = self._host
        rest = tail
        if not self.out and not host.transport_paused:
            try:
                rest = self._send_now(tail)
            except ProtocolError as exc:
                self.failed(exc)
                return
        if rest:
            host.stream_blocked(self)
            if self.out.append(rest):
                self.sync_producer()

    def push(self, frames: int | None) -> bool:
        """Send buffered body as the windows allow (at most ``frames`` frames).

        Returns whether anything was sent.
        """
        conn = self._host.conn
        stream_id = self.stream_id
        out = self.out
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
            self.failed(exc)
            return sent_any
        if not out:
            self._host.stream_unblocked(stream_id)
            if self.end_pending:
                self.end_pending = False
                trailers, self.trailers_pending = self.trailers_pending, None
                self._send_end(trailers)
        if out.fell_to_low():
            self.sync_producer()
        return sent_any

    def sync_producer(self) -> None:
        """Pause or resume the producer to match the buffer and the transport."""
        producer = self.producer
        if producer is None:
            return
        want_paused = self._host.transport_paused or self.out.above_high
        if want_paused == self.producer_paused:
            return
        self.producer_paused = want_paused
        try:
            if want_paused:
                producer.pause_producing()
            else:
                producer.resume_producing()
        except Exception:
            self.log.failure("producer failed on stream {stream_id}", stream_id=self.stream_id)
            self.target_failed()

    # --- ending ---------------------------------------------------------------------

    def reset_early(self) -> None:
        """RFC 9113 section 8.1: the response is complete while the request is still
        coming; ask the client to stop sending without error."""
        try:
            self._host.conn.reset_stream(self.stream_id, ErrorCodes.NO_ERROR)
        except ProtocolError:
            pass
        self.finish(self.status if self.status is not None else "-")

    def malformed(self, reason: str) -> None:
        """RFC 9113 section 8.1.1: a malformed request is a stream error PROTOCOL_ERROR;
        the handler is told the request is lost, so nothing completes upstream."""
        if self.closed:
            return
        try:
            self._host.conn.reset_stream(self.stream_id, ErrorCodes.PROTOCOL_ERROR)
        except ProtocolError:
            pass  # h2 had closed the stream already
        log_protocol_error(
            self.head.peer, PROTOCOL, f"stream {self.stream_id}: malformed request: {reason}"
        )
        self.lose(f"malformed request: {reason}", "reset")
        self._host.written()

    def failed(self, exc: ProtocolError) -> None:
        """h2 refused a writer call: the stream is already gone or the target sent junk."""
        if self.closed:
            return
        if isinstance(exc, StreamClosedError):
            # The client reset the stream in the read being processed (its StreamReset
            # event has not been dispatched yet): a race, not an error.
            self.lose("client reset the stream", "reset")
            return
        try:
            self._host.conn.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        except ProtocolError:
            pass  # h2 had closed the stream already (a client RST in this batch)
        log_protocol_error(
            self.head.peer, PROTOCOL, f"stream {self.stream_id}: response refused by h2: {exc}"
        )
        self.lose(f"response refused by h2: {exc}", "aborted")
        self._host.written()

    def target_failed(self) -> None:
        """A target callback raised: answer 500 if we still can, else reset."""
        if self.closed:
            return
        if self.handler is None or not isinstance(self.handler, StaticReply):
            self.handler = StaticReply()
        if self.status is None:
            send_error(self, 500, "internal error")
        else:
            self.abort(ErrorCodes.INTERNAL_ERROR)

    def lose(self, reason: str, status: int | str) -> None:
        """The stream is gone (reset, connection lost): finish it, tell the handler."""
        if self.closed:
            return
        self.lost_reason = reason
        self.finish(status)
        if self.handler is not None:
            self._tell_lost(self.handler)

    def finish(self, status: int | str) -> None:
        """The stream is over on both sides: release it, log it, leave the table."""
        if self.closed:
            return
        self.closed = True
        timer = self._discard_timer
        if timer is not None:
            self._discard_timer = None
            if timer.active():
                timer.cancel()
        host = self._host
        host.stream_unblocked(self.stream_id)
        self.tail = None
        self.out.clear()
        self.producer = None
        if self.inbox:
            self._ack_inbox()
        if self._access_log:
            log_exchange(
                self.head, status, self.bytes_in, self.bytes_out, host.now() - self.started
            )
        else:
            count_exchange(self.head, status, host.now() - self.started)
        host.stream_closed(self, isinstance(status, int))

    # --- helpers --------------------------------------------------------------------

    def _fits(self, size: int) -> bool:
        """Whether ``size`` bytes go out now as one DATA frame (``False`` for a stream
        h2 already closed: sending then reports that)."""
        conn = self._host.conn
        try:
            window = conn.local_flow_control_window(self.stream_id)
        except ProtocolError:
            return False
        return size <= window and size <= conn.max_outbound_frame_size

    def _send_now(self, data: bytes) -> bytes:
        """Send what the windows allow of ``data``; return the rest."""
        conn = self._host.conn
        stream_id = self.stream_id
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

    def _send_end(self, trailers: Headers | None) -> None:
        """END_STREAM, on a trailers HEADERS frame when there are trailers."""
        conn = self._host.conn
        try:
            if trailers:
                conn.send_headers(self.stream_id, h2_response_headers(trailers), end_stream=True)
            else:
                conn.end_stream(self.stream_id)
        except ProtocolError as exc:
            self.failed(exc)
            return
        self.response_done = True
        self._response_finished()

    def _response_finished(self) -> None:
        """END_STREAM went out: finish now, or reset the request side if still open."""
        if self.remote_ended:
            self.finish(self.status if self.status is not None else "-")
        elif self._start_discarding():
            pass
        elif not self._host.reset_after_read(self):
            self.reset_early()

    def _start_discarding(self) -> bool:
        """After an error answered early: read the rest of the request body away, for
        a bounded amount and time (see :data:`DISCARD_BYTES`), then reset."""
        status = self.status
        if status is None or status < 400 or self._host.closing:
            return False
        self.discard_left = DISCARD_BYTES + SERVER_STREAM_WINDOW
        self.inbox.clear()  # queued body the target has not seen: nobody will now
        self._discard_timer = self._host.call_later(DISCARD_SECONDS, self._discard_expired)
        return True

    def _discard(self, size: int, flow: int) -> None:
        if flow:
            self._host.conn.acknowledge_received_data(flow, self.stream_id)
        left = (self.discard_left or 0) - size
        self.discard_left = left
        if left < 0:
            self._discard_expired()

    def _discard_expired(self) -> None:
        self._discard_timer = None
        if not self.closed:
            self.reset_early()
            self._host.written()

    def _stop_discarding(self) -> None:
        """The client ended its request while its body was being discarded."""
        if self._discard_timer is not None and self._discard_timer.active():
            self._discard_timer.cancel()
        self._discard_timer = None
        self.finish(self.status if self.status is not None else "-")
        if self.handler is not None:
            self._tell_lost(self.handler)

    def _deliver(self, data: bytes, flow: int) -> None:
        handler = self.handler
        if data and handler is not None:
            try:
                handler.body_received(data)
            except Exception:
                self.log.failure(
                    "handler failed on body of stream {stream_id}", stream_id=self.stream_id
                )
                self.target_failed()
        if flow:
            # Credit the client only now that the target has the bytes.
            self._host.conn.acknowledge_received_data(flow, self.stream_id)

    def _deliver_queued(self) -> None:
        """Hand queued request body (and its end) to a handler that resumed."""
        if self.delivering:
            return  # resumed from inside body_received: the outer loop carries on
        self.delivering = True
        try:
            inbox = self.inbox
            while inbox and not self.request_paused and not self.closed and not self.held:
                data, flow = inbox.pop(0)
                self._deliver(data, flow)
            if self.inbox_ended and not inbox and not self.request_paused and not self.closed:
                self.inbox_ended = False
                self._body_ended()
        finally:
            self.delivering = False

    def _ack_inbox(self) -> None:
        host = self._host
        conn = host.conn
        for _data, flow in self.inbox:
            if flow and not host.closing:
                conn.acknowledge_received_data(flow, self.stream_id)
        self.inbox.clear()

    def _body_ended(self) -> None:
        handler = self.handler
        if handler is None:
            return
        try:
            handler.body_ended(self.request_trailers)
        except Exception:
            self.log.failure(
                "handler failed at end of stream {stream_id}", stream_id=self.stream_id
            )
            self.target_failed()

    def _tell_lost(self, handler: RequestHandler) -> None:
        try:
            handler.connection_lost(self.lost_reason or "connection lost")
        except Exception:
            self.log.failure(
                "handler failed in connection_lost of stream {stream_id}",
                stream_id=self.stream_id,
            )
