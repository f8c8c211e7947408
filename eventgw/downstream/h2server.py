# -*- test-case-name: tests.test_h2server -*-
"""The downstream HTTP/2 server: one ``h2`` connection, one exchange per stream.

Shell module (Twisted).  It owns the bytes and the time of a client's HTTP/2
connection: it feeds ``h2``, turns each request stream into a
:class:`~eventgw.exchange.RequestHead` handed to a
:class:`~eventgw.exchange.RequestTarget`, and offers that target an
:class:`~eventgw.downstream.h2stream.H2Stream` -- the stream's
:class:`~eventgw.exchange.ResponseWriter`, which owns everything per stream (its
buffers, its producer, its end).  This module keeps what is per connection: the ``h2``
state machine, the stream table, the timers, the event dispatch and the flush.

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
  advertised (:data:`~eventgw.http2.SERVER_STREAM_WINDOW` per stream,
  :data:`~eventgw.http2.SERVER_CONNECTION_WINDOW` per connection).
* Outbound: ``write_body`` sends what the stream's and the connection's send windows
  allow, in frames of at most the client's MAX_FRAME_SIZE, and buffers the rest per
  stream.  Past :data:`~eventgw.http2.STREAM_BUFFER_HIGH` buffered bytes the target's
  registered producer is paused; WINDOW_UPDATEs drain the buffer and resume it at
  :data:`~eventgw.http2.STREAM_BUFFER_LOW`.  While the transport has paused us (the
  client is not reading) no DATA is written at all and every producer is paused.
* Memory per connection is bounded: inbound, at most SERVER_CONNECTION_WINDOW (4 MiB) of
  request body held for paused streams, plus h2's partial frame (16 KiB), one transport
  read and an unfinished header block (2 x max_header_bytes); outbound, per stream at
  most STREAM_BUFFER_HIGH (64 KiB) plus one producer write, times max_concurrent_streams
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
  slow clients) gets the same treatment with our own GOAWAY: what counts as abuse and
  when a timer expires is decided by the sans-IO
  :class:`~eventgw.downstream.h2policy.ConnectionPolicy`, which this protocol feeds
  the reactor's clock and whose decisions it carries out.  Every such close logs one
  line through :func:`eventgw.downstream.accesslog.log_protocol_error`; every stream one access
  event through :func:`eventgw.downstream.accesslog.log_exchange`.

Size: a little over 600 lines, a tenth of them this theory of operation.  What is
left is one state machine -- the connection's life (handshake, read batch, transport
pause, drain, teardown) and its event dispatch -- whose parts share the stream table
and the timers; the per-stream, policy, head-building and ``h2``-rules
(:mod:`~eventgw.downstream.h2conn`) parts are already out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
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
from eventgw.downstream.accesslog import log_protocol_error
from eventgw.downstream.h2conn import ServerConnection
from eventgw.downstream.h2heads import (
    PROTOCOL,
    Accepted,
    Malformed,
    Refused,
    RequestFacts,
    h2_request_head,
)
from eventgw.downstream.h2policy import (
    ABORT_TIMEOUT,
    PROCEED,
    STREAM_BURST_SLACK,
    Abort,
    Close,
    ConnectionPolicy,
    Decision,
    GoAway,
    Rearm,
    code_name,
)
from eventgw.downstream.h2stream import H2Stream
from eventgw.downstream.h2watch import StallWatch, watch
from eventgw.exchange import RequestTarget
from eventgw.http2 import (
    DRAIN_TIMEOUT,
    MAX_FRAME_SIZE,
    SERVER_CONNECTION_WINDOW,
    SERVER_STREAM_WINDOW,
    WRITES,
)
from eventgw.tls import peer_identity

# The first GOAWAY of a drain carries the largest stream id (RFC 9113 section 6.8);
# the final one follows once the PING sent with it is answered, or after this long.
MAX_STREAM_ID: Final = 2**31 - 1
GOAWAY_GRACE: Final = 1.0
DRAIN_PING: Final = b"eventgw\x00"

if TYPE_CHECKING:
    from collections.abc import Callable

    from h2.events import Event

__all__ = ["PROTOCOL", "H2ServerProtocol"]

# h2's default initial connection window (RFC 9113 section 6.9.2); we add to it.
_DEFAULT_WINDOW: Final = 65535

# h2's outbound header validation and normalisation are a measurable share of this
# server's cost per relayed unary gRPC call (HEADERS plus trailers; see profiling/).  The
# exchange contract already promises lower-case names, the relay's headers come from an
# h2 connection that validated them, and h2heads.h2_response_headers() drops what validation
# would reject that a target might plausibly pass on (connection-specific fields,
# pseudo-headers).  So both are off.
_CHECK_OUTBOUND: Final = False


def _peer_host(transport: object) -> str:
    get_peer = getattr(transport, "getPeer", None)
    if get_peer is None:
        return "-"
    peer = get_peer()
    host = getattr(peer, "host", None)
    return host if isinstance(host, str) else str(peer)


@implementer(IPushProducer)
class H2ServerProtocol(Protocol):
    """The server side of one HTTP/2 connection, and the
    :class:`~eventgw.downstream.h2stream.StreamHost` of its streams.

    Invariant: ``conn`` is only driven from this object and its streams; after
    ``closing`` is set (GOAWAY queued or connection lost) no more input is read and
    every stream has been told ``connection_lost``.
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
        self._policy = ConnectionPolicy(limits)
        self._reactor = reactor
        self._access_log = access_log
        self.peer = "-"
        self._facts = RequestFacts(scheme, self.peer, limits.max_header_bytes)
        self.conn = ServerConnection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=True,
                validate_outbound_headers=_CHECK_OUTBOUND,
                normalize_outbound_headers=_CHECK_OUTBOUND,
            )
        )
        self.streams: dict[int, H2Stream] = {}
        self.transport_paused = False
        self.closing = False
        self._blocked: dict[int, H2Stream] = {}
        self._tails: list[H2Stream] = []
        self._in_batch = False
        self._window_opened = False
        self._unfinished: list[H2Stream] = []
        self._lost = False
        self._registered = False
        self._timer: IDelayedCall | None = None
        self._abort_timer: IDelayedCall | None = None
        self._drain_timer: IDelayedCall | None = None
        self._goaway_timer: IDelayedCall | None = None
        self._drain_waiters: list[Deferred[None]] = []
        self._watch: StallWatch | None = None
        self._dispatch: dict[type[Event], Callable[[Event], None]] = {
            RequestReceived: self._request_received,  # type: ignore[dict-item]
            DataReceived: self._data_received,  # type: ignore[dict-item]
            StreamEnded: self._stream_ended,  # type: ignore[dict-item]
            TrailersReceived: self._trailers_received,  # type: ignore[dict-item]
            StreamReset: self._stream_reset,  # type: ignore[dict-item]
            WindowUpdated: self._window_updated,  # type: ignore[dict-item]
            RemoteSettingsChanged: self._settings_changed,  # type: ignore[dict-item]
            PingReceived: self._control_frame,
            PingAckReceived: self._ping_acked,  # type: ignore[dict-item]
            UnknownFrameReceived: self._control_frame,
            ConnectionTerminated: self._connection_terminated,  # type: ignore[dict-item]
        }

    # --- Protocol -------------------------------------------------------------------

    def connectionMade(self) -> None:
        policy = self._policy
        first_timer = policy.connected(self._reactor.seconds())
        self.peer = _peer_host(self.transport)
        self._facts = replace(
            self._facts, peer=self.peer, client_identity=peer_identity(self.transport)
        )
        conn = self.conn
        # h2 enforces these ceilings (its concurrent-stream check runs while it parses a
        # whole read; its header decoder must finish a block to keep HPACK in sync); the
        # SETTINGS frame below advertises the real limits, which we enforce per stream
        # with REFUSED_STREAM and 431 (see eventgw.http2).
        conn.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: policy.max_streams + STREAM_BURST_SLACK,
                SettingCodes.MAX_HEADER_LIST_SIZE: policy.hard_header_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: SERVER_STREAM_WINDOW,
                SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
            },
        )
        conn.decoder.max_header_list_size = policy.hard_header_bytes
        conn.initiate_connection()
        conn.data_to_send()  # h2's SETTINGS carries the ceilings; send the limits instead
        conn.increment_flow_control_window(SERVER_CONNECTION_WINDOW - _DEFAULT_WINDOW)
        settings = SettingsFrame(0)
        settings.settings = {
            SettingCodes.MAX_CONCURRENT_STREAMS: policy.max_streams,
            SettingCodes.INITIAL_WINDOW_SIZE: SERVER_STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            SettingCodes.MAX_HEADER_LIST_SIZE: self._facts.max_header_bytes,
            SettingCodes.ENABLE_PUSH: 0,
            # RFC 8441: extended CONNECT, for WebSockets over HTTP/2 (on /api only).
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
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
        self._timer = self._reactor.callLater(first_timer.delay, self._on_timer)
        self._watch = watch(self, self._reactor)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
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
                self._carry_out(
                    GoAway(ErrorCodes.PROTOCOL_ERROR, f"h2 failed on input: {exc!r}")
                )
                return
            if events:
                if not self._policy.preface_done:
                    self._rearm(self._policy.preface_completed(self._reactor.seconds()))
                dispatch = self._dispatch
                for event in events:
                    handle = dispatch.get(type(event))
                    if handle is not None:
                        handle(event)
                        if self.closing:
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
        self.closing = True
        self._lose_all("connection lost")
        if self._watch is not None:
            self._watch.remove(self)
            self._watch = None
        for timer in (self._timer, self._abort_timer, self._drain_timer, self._goaway_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._abort_timer = self._drain_timer = self._goaway_timer = None
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # --- IPushProducer (the transport pausing us) -------------------------------------

    def pauseProducing(self) -> None:
        self.transport_paused = True
        for stream in list(self.streams.values()):
            stream.sync_producer()

    def resumeProducing(self) -> None:
        self.transport_paused = False
        self._policy.resumed()
        if self.closing:
            return
        was_in_batch = self._in_batch
        self._in_batch = True
        try:
            self._push_all()
            for stream in list(self.streams.values()):
                stream.sync_producer()
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
        return len(self.streams)

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> Deferred[None]:
        """Stop taking new streams and close once the open ones finish.

        The graceful two-step GOAWAY of RFC 9113 section 6.8: a first GOAWAY (NO_ERROR)
        with the largest stream id, and a PING, so that streams the client is opening
        right now are still served; once the PING is answered (or after
        :data:`GOAWAY_GRACE` seconds) the final GOAWAY names the last stream we serve,
        and streams the client opens after it are refused (REFUSED_STREAM, which clients
        retry elsewhere).  Streams still open ``timeout`` seconds after the first GOAWAY
        are cut off (:meth:`expire`).  The Deferred fires when the connection has closed.
        """
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
            return waiter
        self._drain_waiters.append(waiter)
        if self.closing or self._drain_timer is not None or self._policy.draining:
            return waiter
        # The GOAWAYs are written by hand: h2 moves to CLOSED once it sends one and would
        # then refuse to finish the streams in flight, which is the point of draining.
        self.flush()
        self._write_goaway(MAX_STREAM_ID)
        self.conn.ping(DRAIN_PING)
        self.flush()
        self._drain_timer = self._reactor.callLater(timeout, self._drain_expired)
        self._goaway_timer = self._reactor.callLater(
            min(GOAWAY_GRACE, timeout), self._final_goaway
        )
        return waiter

    def expire(self) -> None:
        """The drain period is over: end the gRPC calls still open with UNAVAILABLE (the
        client may retry them elsewhere), reset the other streams, close."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._drain_expired()

    def _write_goaway(self, last_stream_id: int) -> None:
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = last_stream_id
        goaway.error_code = ErrorCodes.NO_ERROR
        assert self.transport is not None
        self.transport.write(goaway.serialize())

    def _ping_acked(self, event: PingAckReceived) -> None:
        if event.ping_data == DRAIN_PING and self._goaway_timer is not None:
            self._goaway_timer.cancel()
            self._final_goaway()

    def _final_goaway(self) -> None:
        self._goaway_timer = None
        if self.closing or not self._policy.start_drain(self.conn.highest_inbound_stream_id):
            return
        self.flush()
        self._write_goaway(self._policy.drain_last_id)
        if not self.streams:
            self._teardown("connection closed")

    # --- StreamHost: what the streams use ---------------------------------------------

    def now(self) -> float:
        return self._reactor.seconds()

    def call_later(self, delay: float, call: Callable[[], object]) -> IDelayedCall:
        return self._reactor.callLater(delay, call)

    def flush(self) -> None:
        """Write whatever h2 has queued, body chunks kept back included."""
        if self._tails:
            tails, self._tails = self._tails, []
            if not self.closing:
                for stream in tails:
                    stream.release_tail()
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            if self.transport_paused and not self._lost:
                if self._decided(self._policy.paused_write(len(data))):
                    return
            self.transport.write(data)

    def written(self) -> None:
        """A writer call changed h2's state: flush now, unless this connection's read
        or another connection's (see :class:`~eventgw.http2.WriteCoalescer`) will."""
        if not self._in_batch and not WRITES.defer(self.flush):
            self.flush()

    def holding_flush(self) -> bool:
        return self._in_batch or WRITES.depth > 0

    def tail_held(self, stream: H2Stream) -> None:
        self._tails.append(stream)

    def stream_blocked(self, stream: H2Stream) -> None:
        self._blocked[stream.stream_id] = stream

    def stream_unblocked(self, stream_id: int) -> None:
        self._blocked.pop(stream_id, None)

    def reset_after_read(self, stream: H2Stream) -> bool:
        if not self._in_batch:
            return False
        self._unfinished.append(stream)
        return True

    def stream_closed(self, stream: H2Stream, completed: bool) -> None:
        streams = self.streams
        streams.pop(stream.stream_id, None)
        decision = self._policy.stream_closed(self._reactor.seconds(), completed, len(streams))
        if not self.closing:
            self._decided(decision)

    # --- events ---------------------------------------------------------------------

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self.conn
        if not self._policy.admit(stream_id, len(self.streams)):
            # RFC 9113 section 5.1.2: a stream error, which clients retry.  Refused
            # streams cost a reset token: opening streams only to have them refused
            # is the rapid-reset attack by other means.
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._decided(self._policy.stream_refused(self._reactor.seconds()))
            return
        decided = h2_request_head(
            event.headers, self._facts, end_stream=event.stream_ended is not None
        )
        stream = H2Stream(
            self,
            stream_id,
            decided.head,
            self._reactor.seconds(),
            access_log=self._access_log,
            declared_length=decided.declared_length if isinstance(decided, Accepted) else None,
        )
        self.streams[stream_id] = stream
        if isinstance(decided, Malformed):
            stream.malformed(decided.reason)
            return
        if isinstance(decided, Refused):
            if decided.log is not None:
                log_protocol_error(self.peer, PROTOCOL, f"stream {stream_id}: {decided.log}")
            stream.refuse(decided.status, decided.message, decided.reply)
            return
        if stream.start(self._target) and decided.expect_continue:
            # The target did not refuse at once (413, 404...): ask for the body.
            conn.send_headers(stream_id, [(b":status", b"100")])

    def _data_received(self, event: DataReceived) -> None:
        stream_id = event.stream_id
        flow = event.flow_controlled_length
        data = event.data
        stream = self.streams.get(stream_id)
        if not data and event.stream_ended is None:
            now = self._reactor.seconds()
            flood = self._policy.control_frame(now, "flood of empty DATA frames")
            if self._decided(flood):
                return
        if stream is None or stream.closed:
            if flow:
                self.conn.acknowledge_received_data(flow, stream_id)
            return
        stream.data_received(data, flow, event.stream_ended is not None)

    def _trailers_received(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.request_trailers = list(event.headers)

    def _stream_ended(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None and not stream.closed:
            stream.remote_end()

    def _stream_reset(self, event: StreamReset) -> None:
        stream_id = event.stream_id
        code = code_name(event.error_code)
        if event.remote_reset:
            if self._decided(self._policy.stream_reset(self._reactor.seconds())):
                return
            reason = f"client reset the stream ({code})"
        else:
            if self._decided(self._policy.stream_error(self._reactor.seconds())):
                return
            reason = f"stream reset for a protocol error ({code})"
            log_protocol_error(self.peer, PROTOCOL, f"stream {stream_id}: {reason}")
        stream = self.streams.get(stream_id)
        if stream is not None:
            status = stream.status if stream.response_done else None
            stream.lose(reason, "reset" if status is None else status)

    def _window_updated(self, event: WindowUpdated) -> None:
        # Sent after the whole read (see dataReceived), so that streams whose windows
        # opened together share the connection window frame by frame.
        if self._blocked:
            self._window_opened = True

    def _settings_changed(self, event: RemoteSettingsChanged) -> None:
        if self._decided(self._policy.control_frame(self._reactor.seconds(), "SETTINGS flood")):
            return
        changed = event.changed_settings
        if self._blocked and (
            SettingCodes.INITIAL_WINDOW_SIZE in changed or SettingCodes.MAX_FRAME_SIZE in changed
        ):
            self._window_opened = True

    def _control_frame(self, event: Event) -> None:
        flood = "PING flood" if isinstance(event, PingReceived) else "unknown frame flood"
        self._decided(self._policy.control_frame(self._reactor.seconds(), flood))

    def _connection_terminated(self, event: ConnectionTerminated) -> None:
        # h2 refuses to send anything after a GOAWAY, so every open stream is lost.
        code = code_name(event.error_code or 0)
        if event.error_code != ErrorCodes.NO_ERROR:
            log_protocol_error(self.peer, PROTOCOL, f"client sent GOAWAY ({code})")
        self._teardown(f"client sent GOAWAY ({code})")

    # --- response side: sharing the connection window -------------------------------

    def _push_all(self) -> None:
        """Share the connection window among blocked streams, a frame each per round."""
        if self.transport_paused:
            return
        while self._blocked and self.conn.outbound_flow_control_window > 0:
            progressed = False
            for stream in list(self._blocked.values()):
                if not stream.closed and stream.push(1):
                    progressed = True
            if not progressed:
                break

    def _reset_unfinished(self) -> None:
        unfinished, self._unfinished = self._unfinished, []
        for stream in unfinished:
            if not stream.closed:
                stream.reset_early()

    # --- abuse, errors, closing -----------------------------------------------------

    def _watch_buffers(self) -> None:
        """Tell the policy what h2's frame buffer holds after a read (see
        :meth:`~eventgw.downstream.h2policy.ConnectionPolicy.read_done`)."""
        frames = self.conn.incoming_buffer
        pending = getattr(frames, "_headers_buffer", None)
        decision = self._policy.read_done(
            self._reactor.seconds(),
            partial=getattr(frames, "_data", None) or b"",
            max_frame_size=self.conn.max_inbound_frame_size,
            header_block=sum(len(frame.data) for frame in pending) if pending else None,
            streams_open=bool(self.streams),
        )
        self._decided(decision)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closing:
            return
        decision = self._policy.on_timer(self._reactor.seconds(), bool(self.streams))
        if isinstance(decision, GoAway) and not decision.abuse:
            self.log.info(
                "{peer} HTTP/2 connection idle for {idle_timeout}s: closing",
                peer=self.peer, idle_timeout=self._limits.idle_timeout,
            )
        self._carry_out(decision)

    def _rearm(self, rearm: Rearm) -> None:
        """The timer must fire within ``rearm.delay``: schedule it or bring it forward."""
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self._reactor.callLater(rearm.delay, self._on_timer)
        elif timer.getTime() - self._reactor.seconds() > rearm.delay:
            timer.reset(rearm.delay)

    def _decided(self, decision: Decision) -> bool:
        """Carry out what the policy decided; ``True`` when the connection is closing."""
        if decision is PROCEED:
            return False
        self._carry_out(decision)
        return self.closing

    def _carry_out(self, decision: Decision) -> None:
        if isinstance(decision, Rearm):
            self._rearm(decision)
        elif isinstance(decision, GoAway):
            if decision.abuse:
                log_protocol_error(
                    self.peer, PROTOCOL,
                    f"{decision.reason} (GOAWAY {code_name(decision.code)})",
                )
            self._goaway_and_close(decision.code, decision.reason)
        elif isinstance(decision, Abort):
            self._abort_flooded(decision)
        elif isinstance(decision, Close):
            self._teardown(decision.reason)

    def _protocol_error(self, message: str, code: int) -> None:
        """h2 rejected the input and queued a GOAWAY: flush it and close."""
        log_protocol_error(self.peer, PROTOCOL, f"{message} (GOAWAY {code_name(code)})")
        self._teardown(f"connection error: {message}")

    def _goaway_and_close(self, code: ErrorCodes, reason: str) -> None:
        try:
            self.conn.close_connection(code)
        except ProtocolError:
            pass
        self._teardown(reason)

    def _abort_flooded(self, abort: Abort) -> None:
        """The client is not reading but keeps us writing: a GOAWAY would not reach it."""
        log_protocol_error(self.peer, PROTOCOL, abort.message)
        self.closing = True
        self._lose_all(abort.reason)
        transport: Any = self.transport
        if transport is not None:
            self._unregister()
            transport.abortConnection()

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self._goaway_timer is not None:
            self._goaway_timer.cancel()
            self._goaway_timer = None
        if self.closing:
            return
        for stream in list(self.streams.values()):
            if self.closing:
                return
            _end_unavailable(stream)
        if not self.closing:
            self._carry_out(self._policy.drain_expired())

    def _teardown(self, reason: str) -> None:
        """Flush what h2 queued (a GOAWAY), lose every stream, close the transport."""
        if self.closing:
            return
        self.closing = True
        self.flush()
        self._lose_all(reason)
        transport = self.transport
        if transport is not None and not self._lost:
            self._unregister()
            transport.loseConnection()
            self._abort_timer = self._reactor.callLater(ABORT_TIMEOUT, self._abort_now)

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

    def _lose_all(self, reason: str) -> None:
        for stream in list(self.streams.values()):
            status = stream.status if stream.response_done else None
            stream.lose(reason, "aborted" if status is None else status)



def _end_unavailable(stream: H2Stream) -> None:
    """End a gRPC call still open when the drain period is over with grpc-status 14
    (UNAVAILABLE), as trailers or, before any response, a trailers-only response."""
    if stream.closed or stream.response_done or stream.end_pending:
        return
    content_type = b""
    for name, value in stream.head.headers:
        if name == b"content-type":
            content_type = value
            break
    if not content_type.startswith(b"application/grpc"):
        return
    status = [(b"grpc-status", b"14"), (b"grpc-message", b"the gateway is shutting down")]
    handler = stream.handler
    if stream.status is None:
        stream.write_head(200, [(b"content-type", content_type), *status], end=True)
    else:
        stream.end(status)
    if stream.closed and handler is not None:
        # Finished by us, not by its handler: tell the handler (a relayed call cancels
        # its upstream stream), as a lost connection would.
        try:
            handler.connection_lost("drain timeout")
        except Exception:
            H2ServerProtocol.log.failure("handler failed in connection_lost at drain timeout")
