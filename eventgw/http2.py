# -*- test-case-name: tests.test_http2 -*-
"""Sans-IO HTTP/2 pieces both sides of the gateway use: windows, send buffers, h2.

Core module: it holds numbers and byte buffers only.  It must not import ``twisted``,
``grpc``, ``txaio`` or ``socket``, and it never reads the clock.

What lives here:

* the flow-control figures (windows, frame size, watermarks) and the drain period,
  each with the reason for its value; the downstream server's abuse limits and its
  other timeouts are in :mod:`eventgw.downstream.h2policy`;
* :class:`WatermarkBuffer`, one stream's response bytes waiting for flow-control credit,
  with Envoy-style high/low watermarks that drive ``pause_producing``/``resume_producing``;
* :func:`header_list_size`, the RFC 9113 section 6.5.2 size of a header list;
* :class:`WriteCoalescer` (:data:`WRITES`): writes of every HTTP/2 connection held
  until the read being processed is done, so one read costs one write per connection;
* :class:`LeanH2Connection`, the ``H2Connection`` both sides of the gateway use: h2
  without the debugging work it does on every frame and every header even when nobody
  logs (see the class and :func:`_silence_hpack_debug_log` for what and why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import hpack.hpack
import hpack.table
from h2.config import DummyLogger
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from hyperframe.frame import RstStreamFrame

if TYPE_CHECKING:
    from h2.events import Event
    from hyperframe.frame import Frame

__all__ = [
    "DRAIN_TIMEOUT",
    "MAX_FRAME_SIZE",
    "SERVER_CONNECTION_WINDOW",
    "SERVER_STREAM_WINDOW",
    "STREAM_BUFFER_HIGH",
    "STREAM_BUFFER_LOW",
    "WRITES",
    "LeanH2Connection",
    "WatermarkBuffer",
    "WriteCoalescer",
    "header_list_size",
]

# --- flow control ---------------------------------------------------------------------

# SETTINGS_INITIAL_WINDOW_SIZE we advertise: how much request body a client may send on
# one stream before the target has consumed it.  1 MiB keeps a 4 MiB gRPC message moving
# at full speed over a 10 ms link while bounding what one paused stream can pin.
SERVER_STREAM_WINDOW: Final = 1 << 20

# The connection-level receive window (stream 0), opened with a WINDOW_UPDATE right after
# our SETTINGS.  It caps the request bytes held for *all* paused streams of a connection:
# the inbound memory bound per connection is SERVER_CONNECTION_WINDOW (4 MiB) plus h2's frame
# buffer (one frame) plus one transport read.
SERVER_CONNECTION_WINDOW: Final = 4 << 20

# SETTINGS_MAX_FRAME_SIZE: the RFC 9113 default.  Larger frames save little CPU for our
# message sizes and would let one frame hold a bigger share of the connection.
MAX_FRAME_SIZE: Final = 16384

# Outbound watermarks per stream (Envoy flow_control.md): a stream whose buffered
# response bytes (waiting for the client's window) pass HIGH pauses its producer; it
# resumes once WINDOW_UPDATEs drain it to LOW.  So a slow reader costs at most about
# STREAM_BUFFER_HIGH plus one producer write per stream, not the whole response.
STREAM_BUFFER_HIGH: Final = 64 * 1024
STREAM_BUFFER_LOW: Final = 16 * 1024

# --- time -----------------------------------------------------------------------------

# drain(): how long in-flight streams may run after the graceful GOAWAY before they are
# cut off, so a service stop never waits on one endless stream.  The service uses the
# same period for HTTP/1.1 connections.
DRAIN_TIMEOUT: Final = 30.0


class WatermarkBuffer:
    """Bytes of one stream waiting for flow-control credit, with high/low watermarks.

    Invariant: ``above_high`` becomes ``True`` when the size first exceeds ``high`` and
    stays so until the size falls to ``low`` or below (hysteresis, so a producer is not
    paused and resumed on every frame).
    """

    __slots__ = ("_data", "above_high", "high", "low")

    def __init__(self, high: int = STREAM_BUFFER_HIGH, low: int = STREAM_BUFFER_LOW) -> None:
        if not 0 <= low <= high:
            raise ValueError("need 0 <= low <= high")
        self._data = bytearray()
        self.high = high
        self.low = low
        self.above_high = False

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def append(self, data: bytes) -> bool:
        """Queue ``data``; ``True`` when this append crossed the high watermark."""
        self._data += data
        if not self.above_high and len(self._data) > self.high:
            self.above_high = True
            return True
        return False

    def take(self, size: int) -> bytes:
        """Remove and return up to ``size`` bytes from the front."""
        chunk = bytes(self._data[:size])
        # Deleting a prefix of a bytearray is amortised O(1) in CPython (it moves a
        # start offset), so draining frame by frame is not quadratic.
        del self._data[:size]
        return chunk

    def fell_to_low(self) -> bool:
        """``True`` once, when a buffer that was above high has drained to low."""
        if self.above_high and len(self._data) <= self.low:
            self.above_high = False
            return True
        return False

    def clear(self) -> None:
        """Drop everything (the stream is gone)."""
        self._data.clear()
        self.above_high = False


class WriteCoalescer:
    """Flushes held back while a read is being processed, then done once each.

    One read from one connection makes the gateway write on others: a downstream read
    of 16 gRPC requests opens 16 upstream streams, an upstream read of 16 responses
    writes HEADERS, DATA and trailers on each client's connection.  Flushing every
    time costs an ``h2.data_to_send()`` and a ``transport.write`` (through TLS, an
    encryption call) per writer call.  Instead, the ``dataReceived`` of both HTTP/2
    protocols runs between :meth:`hold` and :meth:`release`, and writer calls made
    meanwhile :meth:`defer` their connection's flush: at the outermost release each
    connection touched flushes once, in the same reactor turn as before, in the order
    first touched.  Outside a read (a timer, a test calling a writer) :meth:`defer`
    returns ``False`` and the caller flushes at once.

    Invariant: flushes are pending only while :attr:`depth` is positive.
    """

    __slots__ = ("_pending", "depth")

    def __init__(self) -> None:
        self.depth = 0
        self._pending: dict[Callable[[], None], None] = {}

    def hold(self) -> None:
        """A read is being processed: hold flushes until the matching release."""
        self.depth += 1

    def release(self) -> None:
        """End of a read: at the outermost one, run every pending flush once."""
        self.depth -= 1
        if self.depth:
            return
        pending = self._pending
        while pending:
            # A flush may defer others only through a new hold; take them all the same.
            self._pending = {}
            for flush in pending:
                flush()
            pending = self._pending

    def defer(self, flush: Callable[[], None]) -> bool:
        """Queue ``flush`` for the outermost release; ``False`` if nothing is held."""
        if not self.depth:
            return False
        self._pending[flush] = None
        return True


# The process's coalescer: every connection is driven from the one reactor thread.
WRITES: Final = WriteCoalescer()


def header_list_size(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """The size of a header list as SETTINGS_MAX_HEADER_LIST_SIZE counts it.

    RFC 9113 section 6.5.2: name and value lengths plus 32 octets per field,
    pseudo-headers included.
    """
    return sum(len(name) + len(value) + 32 for name, value in headers)


class LeanH2Connection(H2Connection):
    """``H2Connection`` without the per-frame ``repr`` h2 builds for its trace log.

    h2's ``_receive_frame`` starts with ``logger.trace("Received frame: %s",
    repr(frame))``: the ``repr`` is computed before the logger can decline it, and for
    a DATA frame it serialises the whole body and hex-encodes it to show ten bytes.
    On a relayed server stream that was 15% of the gateway's CPU (py-spy, 16 KiB
    messages); on a unary call about 1.5%.  This class does the same frame handling
    without that ``repr`` -- the body below is h2 4.x's ``_receive_frame`` minus its
    first statement -- unless a real logger was configured (``H2Configuration(logger=
    ...)``), in which case h2's own method runs, traces included.

    Behaviour is otherwise h2's own: every frame goes through the same dispatch table,
    the same stream-closed handling and the same ``_prepare_for_sending``.
    """

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if type(self.config.logger) is not DummyLogger:
            return super()._receive_frame(frame)
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: a stream error, answered with RST_STREAM; otherwise
            # a connection error (re-raised: h2 sends GOAWAY).
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # A frame for a stream already cleaned up or implicitly closed: a stream
            # error if it was reset, a connection error otherwise.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


def _discard_debug(*_args: object) -> None:
    """Stands in for ``hpack.hpack.log.debug``; see :func:`_silence_hpack_debug_log`."""


class _SilentHpackLog:
    """The only method hpack calls on its module logger, doing nothing."""

    __slots__ = ()
    debug = staticmethod(_discard_debug)


def _silence_hpack_debug_log() -> None:
    """Replace hpack's module loggers with one that drops their DEBUG lines.

    hpack calls ``log.debug(...)`` (standard-library ``logging``) for every integer
    and header it encodes or decodes: about 50 calls per relayed unary call, each
    paying for ``Logger.debug`` and ``isEnabledFor`` even with DEBUG off, about 2% of
    the gateway's CPU.  The gateway logs through ``twisted.logger`` and never enables
    hpack's DEBUG lines, so this is the one place where they are switched off, for
    the whole process (``hpack.table`` logs each eviction from the dynamic table
    the same way); a debugging session that wants them back can reassign
    ``hpack.hpack.log = logging.getLogger("hpack.hpack")``.  hpack uses no other
    method of these loggers.
    """
    silent = _SilentHpackLog()
    hpack.hpack.log = silent  # type: ignore[assignment]
    hpack.table.log = silent  # type: ignore[assignment]


_silence_hpack_debug_log()
