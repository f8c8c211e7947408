# -*- test-case-name: tests.test_http1server -*-
"""The downstream HTTP/1.1 protocol: one connection, its exchanges served in order.

Shell module: it moves bytes and time between a Twisted transport, the codec
(:mod:`eventgw.downstream.http1parse` for requests, :mod:`eventgw.downstream.http1frame`
for responses) and the :class:`~eventgw.exchange.RequestTarget` (the gateway).  All
HTTP decisions -- what is a valid request, how a response is framed -- are made by the
codec; this module owns buffering, back-pressure, timeouts, error replies and the
access log.

Flow of one exchange::

    dataReceived -> RequestParser.next_event() -> RequestHeadParsed
        -> target.start_exchange(head, writer)     (writer: a fresh Http1Writer)
        -> [100 Continue] -> handler.body_received(...)* -> handler.body_ended(...)
    writer.write_head / write_body / end  -> serialized into an output buffer
        -> one transport.write per dataReceived, per end(), or per reactor turn
    response ended and request ended -> access-log event -> next pipelined request

Back-pressure runs both ways.  Request body: ``pause_request_body`` pauses the
transport (stops reading the socket) and delivery; bytes already buffered wait in the
parser.  Response body: the protocol is the transport's streaming producer, and passes
``pauseProducing``/``resumeProducing`` to the producer the current exchange registered.
Pipelined requests are not parsed until the current response has ended, and reading
stops while more than :data:`MAX_BUFFERED_BYTES` wait unparsed.  No new exchange starts
while the transport has paused us (the client is not reading its responses).

A WebSocket opening handshake (the parser marks it, ``RequestHead.upgrade``) is an
exchange like any other until its handler answers ``101``: from then on the connection
is a tunnel (:meth:`Http1ServerProtocol.tunnel_opened`) -- every byte the client sends
is that exchange's ``body_received``, its ``write_body`` bytes go out as they are, with
the same back-pressure both ways, and the exchange ends when either side closes.

A response that ends before its request body was read ends the exchange for the
handler: the rest of the body is read and dropped (up to :data:`DISCARD_BODY_LIMIT`),
or the connection closes after the response (``connection: close`` is sent).

Time: one DelayedCall per connection carries either the header deadline (from the
connection start, or from the first byte of the next request, until a complete head:
408 and close) or the idle deadline (keep-alive with nothing received: silent close).
While an exchange is in flight neither applies; slow upstreams are the targets' business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from zope.interface import implementer

from eventgw._reactor import default_reactor
from eventgw.config import Limits
from eventgw.downstream.accesslog import count_exchange, log_exchange, log_protocol_error
from eventgw.downstream.http1frame import (
    BodyFraming,
    serialize_error_response,
)
from eventgw.downstream.http1parse import (
    BodyData,
    MessageEnded,
    RequestHeadParsed,
    RequestParser,
)
from eventgw.downstream.http1writer import Http1Writer
from eventgw.downstream.stamp import stamp
from eventgw.errors import RequestError
from eventgw.exchange import (
    RequestHead,
    RequestTarget,
    StaticReply,
)
from eventgw.tls import peer_identity

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.python.failure import Failure

__all__ = ["DISCARD_BODY_LIMIT", "FLUSH_THRESHOLD", "MAX_BUFFERED_BYTES", "Http1ServerProtocol"]

# A response that ends before its request body was read leaves the rest of the body
# on the wire.  Up to this many bytes are read and dropped so the connection can be
# reused; beyond it (or when the size is unknown, i.e. chunked) the connection closes,
# which is cheaper than reading a large upload nobody wants.
DISCARD_BODY_LIMIT: Final = 64 * 1024

# Output is gathered and handed to the transport in one write (one TLS record, one
# send()) per dataReceived, per end(), per reactor turn -- or as soon as this much is
# waiting, which bounds the buffer while streaming.
FLUSH_THRESHOLD: Final = 64 * 1024

# Unparsed bytes (pipelined requests, a paused body) kept before we stop reading the
# socket; the kernel buffers then push back on the client.
MAX_BUFFERED_BYTES: Final = 64 * 1024

_Deadline = Literal["header", "idle"]


class _Transport(Protocol):
    """The transport interfaces this protocol uses (ITransport, IConsumer, IProducer)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> Any: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


@implementer(IPushProducer)
class Http1ServerProtocol(TwistedProtocol):
    """One downstream HTTP/1.x connection.

    Invariant: at most one exchange is in flight (``_exchange``); the parser is not
    asked for the next request until that exchange's request and response have both
    ended.  Once ``_closing`` is set no more input is processed.

    :ivar peer: the client address as text (for logs and ``RequestHead.peer``).
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
        self._reactor = reactor
        self._access_log = access_log
        self._parser = RequestParser(limits.max_header_bytes, limits.max_request_body)
        self._transport: _Transport | None = None
        self._registered = False
        self.peer = "-"
        self.client_identity: str | None = None
        self._exchange: Http1Writer | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_call: IDelayedCall | None = None
        self._pump_call: IDelayedCall | None = None
        self._receiving = False
        self._pumping = False
        self._read_pauses: set[str] = set()
        self._write_paused = False
        self._closing = False
        self._draining = False
        self._deadline_kind: _Deadline | None = None
        self._deadline = 0.0
        self._timer: IDelayedCall | None = None
        # The exchange that switched protocols (101), and client bytes held for it
        # while it has paused the request body.
        self._tunnel: Http1Writer | None = None
        self._tunnel_held: list[bytes] = []

    # -- connection ------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = cast(_Transport, self.transport)
        self._transport = transport
        peer = transport.getPeer()
        self.peer = str(getattr(peer, "host", peer))
        self.client_identity = peer_identity(transport)
        transport.registerProducer(self, True)
        self._registered = True
        self._set_deadline("header", self._limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._tunnel is not None:
            self._tunnel_data(data)
            return
        if self._deadline_kind == "idle":
            # The client starts its next request: it now has header_timeout for it.
            self._set_deadline("header", self._limits.header_timeout)
        self._parser.receive_data(data)
        self._receiving = True
        try:
            self._pump()
        finally:
            self._receiving = False
            self._flush()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._registered = False
        self._deadline_kind = None
        for call in (self._timer, self._flush_call, self._pump_call):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._flush_call = self._pump_call = None
        self._out.clear()
        exchange = self._exchange
        self._exchange = None
        if exchange is None or exchange.closed:
            return
        exchange.closed = True
        tunnel = exchange is self._tunnel
        self._tunnel = None
        self._log_exchange(
            exchange, exchange.status if exchange.response_ended or tunnel else "aborted"
        )
        handler = exchange.handler
        if handler is not None and not exchange.response_ended:
            message = reason.getErrorMessage() if reason is not None else "connection lost"
            try:
                handler.connection_lost("client disconnected: " + message)
            except Exception:
                self.log.failure("{peer} connection_lost handler failed", peer=self.peer)

    def drain(self) -> None:
        """Finish the exchange in flight (if any) with ``connection: close``, then close."""
        self._draining = True
        if self._exchange is None and not self._closing:
            self._close()

    # -- IPushProducer (towards the transport) ----------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: pause the current response's producer."""
        self._write_paused = True
        exchange = self._exchange
        if exchange is not None and exchange.producer is not None:
            exchange.producer.pause_producing()

    def resumeProducing(self) -> None:
        """The transport drained: let the current response's producer write again."""
        self._write_paused = False
        exchange = self._exchange
        if exchange is None:
            if self._parser.buffered:
                self._schedule_pump()  # pipelined requests held back while paused
        elif exchange.producer is not None:
            exchange.producer.resume_producing()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the cleanup."""

    # -- the tunnel after 101 ---------------------------------------------------------

    def tunnel_opened(self, exchange: Http1Writer) -> None:
        """``exchange`` answered 101: the connection now carries its protocol.  Bytes
        the client sent after the request head are delivered first (next turn, so the
        handler is not re-entered from its own ``write_head``)."""
        if exchange is not self._exchange or self._parser.remaining_body != 0:
            return
        try:
            early = self._parser.take_tunnel_bytes()
        except RuntimeError:
            return
        self._tunnel = exchange
        exchange.request_ended = False  # the tunnel's client side is open again
        if early:
            self._tunnel_held.append(early)
            self._schedule_pump()

    def _tunnel_data(self, data: bytes) -> None:
        exchange = self._tunnel
        assert exchange is not None
        if exchange.request_paused or self._tunnel_held:
            self._tunnel_held.append(data)
            return
        self._deliver_tunnel(exchange, data)

    def _deliver_tunnel(self, exchange: Http1Writer, data: bytes) -> None:
        exchange.bytes_in += len(data)
        handler = exchange.handler
        if handler is None or exchange.closed:
            return
        self._receiving = True
        try:
            handler.body_received(data)
        except Exception:
            self._handler_failed(exchange)
        finally:
            self._receiving = False
            self._flush()

    def _pump_tunnel(self, exchange: Http1Writer) -> None:
        held = self._tunnel_held
        while held and not exchange.request_paused and not exchange.closed:
            self._deliver_tunnel(exchange, held.pop(0))

    # -- input -----------------------------------------------------------------------

    def _pump(self) -> None:
        """Turn buffered bytes into exchange calls until blocked (re-entry is a no-op:
        the running loop re-checks its conditions after every handler call)."""
        if self._pumping:
            return
        if self._tunnel is not None:
            self._pump_tunnel(self._tunnel)
            return
        self._pumping = True
        parser = self._parser
        try:
            while not self._closing:
                exchange = self._exchange
                if exchange is None:
                    if self._write_paused:
                        # The client is not reading its responses: start no new
                        # exchange (pipelined input then stops at MAX_BUFFERED_BYTES).
                        break
                elif exchange.request_paused:
                    break
                try:
                    event = parser.next_event()
                except RequestError as error:
                    self._request_error(error)
                    break
                if isinstance(event, BodyData):
                    assert exchange is not None
                    exchange.bytes_in += len(event.data)
                    if exchange.closed or exchange.discarding:
                        continue
                    handler = exchange.handler
                    assert handler is not None
                    try:
                        handler.body_received(event.data)
                    except Exception:
                        self._handler_failed(exchange)
                elif isinstance(event, RequestHeadParsed):
                    self._start_exchange(event)
                elif isinstance(event, MessageEnded):
                    assert exchange is not None
                    exchange.request_ended = True
                    if exchange.request_paused:
                        exchange.request_paused = False
                        self._resume_reading("body")
                    if not (exchange.closed or exchange.discarding):
                        handler = exchange.handler
                        assert handler is not None
                        try:
                            handler.body_ended(event.trailers)
                        except Exception:
                            self._handler_failed(exchange)
                    if exchange.response_ended and not exchange.closed:
                        self._finish_exchange(exchange)
                else:  # NEED_DATA, or PAUSED until the response has ended
                    break
        finally:
            self._pumping = False
        if not self._closing:
            if parser.buffered > MAX_BUFFERED_BYTES:
                self._pause_reading("buffer")
            elif self._read_pauses:
                self._resume_reading("buffer")

    def _schedule_pump(self) -> None:
        """Pump on the next reactor turn, so handlers are never re-entered from their
        own writer calls."""
        if self._pumping or self._closing or self._pump_call is not None:
            return
        self._pump_call = self._reactor.callLater(0, self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_call = None
        if self._closing:
            return
        self._receiving = True
        try:
            self._pump()
        finally:
            self._receiving = False
            self._flush()

    def _start_exchange(self, request: RequestHeadParsed) -> None:
        self._deadline_kind = None
        content_length = request.content_length
        head = RequestHead(
            method=request.method,
            target=request.target,
            authority=request.host,
            scheme=self._scheme,
            headers=request.headers,
            protocol="HTTP/1.1" if request.version == b"HTTP/1.1" else "HTTP/1.0",
            peer=self.peer,
            client_identity=self.client_identity,
            content_length=content_length,
            body_expected=content_length != 0,
            upgrade=request.upgrade,
        )
        exchange = Http1Writer(self, request, head, self._reactor.seconds())
        self._exchange = exchange
        try:
            exchange.handler = self._target.start_exchange(head, exchange)
        except Exception:
            exchange.handler = StaticReply()
            self._handler_failed(exchange)
            return
        if (
            request.expect_continue
            and head.body_expected
            and not exchange.head_written
            and not exchange.closed
        ):
            exchange.write_head(100, [])

    # -- WriterHost (what the exchange in flight may ask of its connection) -------

    @property
    def output_paused(self) -> bool:
        """Whether the transport has paused us (the client is not reading)."""
        return self._write_paused

    def closes_after(self, exchange: Http1Writer) -> bool:
        """Whether the connection closes after ``exchange``'s response (decided when
        its head is written, so ``connection: close`` can be sent)."""
        if self._draining:
            return True
        if exchange.request_ended:
            return False
        if exchange.request.expect_continue and not exchange.continue_sent:
            # The client waits for 100 before sending the body; it may never send it.
            return True
        remaining = self._parser.remaining_body
        return remaining is None or remaining > DISCARD_BODY_LIMIT

    # -- output ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue bytes for the client: flushed once per dataReceived, per reactor turn,
        or as soon as :data:`FLUSH_THRESHOLD` bytes wait."""
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_THRESHOLD:
            # Hand big output over now, so the transport can push back (pauseProducing).
            self._flush()
        elif self._receiving:
            return  # dataReceived flushes once at its end
        elif self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        call = self._flush_call
        if call is not None:
            self._flush_call = None
            if call.active():
                call.cancel()
        out = self._out
        if not out or self._transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        self._transport.write(data)

    def _close(self) -> None:
        """Flush what is buffered and close; nothing more is read or written."""
        if self._closing:
            return
        self._flush()
        self._closing = True
        self._deadline_kind = None
        if self._transport is not None:
            self._unregister()
            self._transport.loseConnection()

    def _unregister(self) -> None:
        """Stop being the transport's producer.  Needed before closing: a TLS transport
        does not shut down while a producer is registered, and a TCP transport whose
        paused producer drains resumes it instead of closing."""
        if self._registered and self._transport is not None:
            self._registered = False
            self._transport.unregisterProducer()

    def _pause_reading(self, reason: str) -> None:
        if reason in self._read_pauses:
            return
        self._read_pauses.add(reason)
        if len(self._read_pauses) == 1 and self._transport is not None and not self._closing:
            self._transport.pauseProducing()

    def _resume_reading(self, reason: str) -> None:
        if reason not in self._read_pauses:
            return
        self._read_pauses.discard(reason)
        if not self._read_pauses and self._transport is not None and not self._closing:
            self._transport.resumeProducing()

    # -- exchange outcomes -------------------------------------------------------------

    def pause_request_body(self) -> None:
        """The exchange's handler cannot take more body: stop reading the socket."""
        self._pause_reading("body")

    def resume_request_body(self) -> None:
        """The exchange's handler takes body again: read and deliver what waits."""
        self._resume_reading("body")
        self._schedule_pump()

    def response_complete(self, exchange: Http1Writer) -> None:
        """The exchange's response is fully written: finish the exchange, or read and
        drop the rest of its request body, or close."""
        if exchange.closed:
            return
        if exchange.request_ended:
            self._finish_exchange(exchange)
            return
        # The response is complete before the request body was read.
        plan = exchange.plan
        if plan is None or not plan.keep_alive or exchange.broken:
            exchange.closed = True
            self._log_exchange(exchange, exchange.status)
            self._exchange = None
            self._close()
            return
        # Small rest of body: read and drop it, then serve the next request.
        exchange.discarding = True
        if exchange.request_paused:
            exchange.request_paused = False
            self._resume_reading("body")
            self._schedule_pump()
        if not self._receiving:
            self._flush()

    def _finish_exchange(self, exchange: Http1Writer) -> None:
        """Both directions are done: log, then close or get ready for the next request."""
        if exchange.closed:
            return
        exchange.closed = True
        now = self._log_exchange(exchange, exchange.status)
        self._exchange = None
        plan = exchange.plan
        if plan is None or not plan.keep_alive or exchange.broken or self._draining:
            self._close()
            return
        self._parser.start_next()
        if self._parser.buffered:
            self._set_deadline("header", self._limits.header_timeout, now)
            self._schedule_pump()
        else:
            self._set_deadline("idle", self._limits.idle_timeout, now)
        if not self._receiving:
            self._flush()

    def abort_exchange(self, exchange: Http1Writer) -> None:
        """The handler gave up on its response: close the connection."""
        self._log_exchange(exchange, "aborted")
        self._exchange = None
        if exchange.plan is not None and exchange.plan.framing is BodyFraming.CLOSE:
            # A close-delimited body cut short looks complete: reset instead.
            self._out.clear()
            self._closing = True
            if self._transport is not None:
                self._unregister()
                self._transport.abortConnection()
            return
        self._close()

    def _handler_failed(self, exchange: Http1Writer) -> None:
        """A handler raised: answer 500 if we still can, else close."""
        self.log.failure("{peer} request handler failed", peer=self.peer)
        if exchange.closed:
            return
        exchange.closed = True
        if exchange.head_written:
            self._log_exchange(exchange, "aborted")
        else:
            exchange.status = 500
            exchange.bytes_out += self._write_error(500, "internal error", exchange.request_id)
            self._log_exchange(exchange, 500)
        self._exchange = None
        self._close()

    def _request_error(self, error: RequestError) -> None:
        """Malformed input: answer the error (if no response started) and close."""
        log_protocol_error(self.peer, "HTTP/1.1", error.message)
        exchange = self._exchange
        if exchange is None:
            self._write_error(error.http_status, error.message)
            self._close()
            return
        # The body of an exchange in flight is broken: its handler must stop.
        self._exchange = None
        if not exchange.closed:
            exchange.closed = True
            if not exchange.head_written:
                exchange.status = error.http_status
                exchange.bytes_out += self._write_error(
                    error.http_status, error.message, exchange.request_id
                )
                self._log_exchange(exchange, error.http_status)
            elif exchange.response_ended:
                self._log_exchange(exchange, exchange.status)
            else:
                self._log_exchange(exchange, "aborted")
            handler = exchange.handler
            if handler is not None and not exchange.response_ended:
                try:
                    handler.connection_lost("bad request body: " + error.message)
                except Exception:
                    self.log.failure("{peer} connection_lost handler failed", peer=self.peer)
        self._close()

    def _write_error(self, status: int, message: str, request_id: bytes | None = None) -> int:
        """Send a local error response; the body's length (for the access log)."""
        data = serialize_error_response(status, message, stamp([], request_id))
        self.send(data)
        return len(data) - data.index(b"\r\n\r\n") - 4

    def _log_exchange(self, exchange: Http1Writer, status: int | str) -> float:
        now = self._reactor.seconds()
        if self._access_log:
            log_exchange(
                exchange.head,
                status,
                exchange.bytes_in,
                exchange.bytes_out,
                now - exchange.started,
            )
        else:
            count_exchange(exchange.head, status, now - exchange.started)
        return now

    # -- timeouts ----------------------------------------------------------------------

    def _set_deadline(self, kind: _Deadline, seconds: float, now: float | None = None) -> None:
        """Arm the header or idle deadline.  One DelayedCall per connection is reused:
        when it fires early (the deadline moved later) it re-arms itself, so a busy
        keep-alive connection costs no timer churn per request."""
        if now is None:
            now = self._reactor.seconds()
        self._deadline_kind = kind
        self._deadline = now + seconds
        timer = self._timer
        if timer is None:
            self._timer = self._reactor.callLater(seconds, self._timer_fired)
        elif timer.getTime() > self._deadline:
            timer.reset(seconds)

    def _timer_fired(self) -> None:
        self._timer = None
        kind = self._deadline_kind
        if kind is None or self._closing:
            return
        left = self._deadline - self._reactor.seconds()
        if left > 0:
            self._timer = self._reactor.callLater(left, self._timer_fired)
            return
        self._deadline_kind = None
        if self._write_paused:
            # The client has not read its last response for a whole timeout: a
            # graceful close would wait for it forever, so reset the connection.
            self._out.clear()
            self._closing = True
            if self._transport is not None:
                self._unregister()
                self._transport.abortConnection()
            return
        if kind == "header" and self._exchange is None and self._parser.buffered:
            log_protocol_error(self.peer, "HTTP/1.1", "request head timed out")
            self._write_error(408, "request head timed out")
        self._close()
