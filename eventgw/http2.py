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
  logs (see the class and :func:`_silence_hpack_debug_log` for what and why), and with
  a lean path for DATA on open streams in both directions (:class:`LeanFrameBuffer`,
  :meth:`LeanH2Connection.send_data`) that keeps h2's windows and stream states exact;
* :class:`IndexedHeaderTable`, the HPACK encoder's table with a constant-time search
  (same indices, same bytes as hpack's linear one), and :class:`GatewayEncoder`, hpack's
  encoder with a faster Huffman coder that remembers the request id's encoding
  (the same bytes again).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import hpack.hpack
import hpack.table
from h2.config import DummyLogger, H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, ConnectionState, H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived
from h2.exceptions import (
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamInputs, StreamState
from h2.utilities import authority_from_headers, extract_method_header, is_informational_response
from hpack import Encoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable, table_entry_size
from hyperframe.frame import DataFrame, RstStreamFrame

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
    "GatewayEncoder",
    "IndexedHeaderTable",
    "LeanDataFrame",
    "LeanFrameBuffer",
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


# --- HPACK ------------------------------------------------------------------------------

# The index of the newest dynamic-table entry (RFC 7541 section 2.3.3).
_FIRST_DYNAMIC: Final = HeaderTable.STATIC_TABLE_LENGTH + 1


class IndexedHeaderTable(HeaderTable):
    """hpack's encoder table, searched through dictionaries instead of a scan.

    hpack's ``HeaderTable.search`` walks the whole dynamic table for every field it
    encodes that is not fully in the static table.  The gateway's header blocks carry
    one new value per call (``x-request-id``), so the table stays full of them -- about
    50 entries at the default 4 KiB -- and a relayed unary call paid about 15 such walks
    (5% of its CPU under cProfile).  Here every entry gets an insertion number; the
    dictionaries map a field, and a name, to the number of its newest entry.  The
    dynamic table always holds the newest ``len(dynamic_entries)`` insertions (adds go
    to the front, evictions take the oldest, a clear drops all), so an entry numbered
    ``n`` sits at index ``_FIRST_DYNAMIC + added - 1 - n``.  :meth:`search` returns what
    hpack's own search returns -- a static match first, then the newest exact dynamic
    match, then a static name, then the newest dynamic name -- so the encoder emits the
    same bytes; evictions drop the dictionaries' entries, so they stay as small as the
    table.
    """

    def __init__(self) -> None:
        super().__init__()
        self._added = 0
        self._fields: dict[tuple[bytes, bytes], int] = {}
        self._names: dict[bytes, int] = {}

    def add(self, name: bytes, value: bytes) -> None:
        size = table_entry_size(name, value)
        if size > self._maxsize:
            self._clear()
            return
        self.dynamic_entries.appendleft((name, value))
        number = self._added
        self._added = number + 1
        self._fields[(name, value)] = number
        self._names[name] = number
        self._current_size += size
        self._shrink()

    def search(self, name: bytes, value: bytes) -> tuple[int, bytes, bytes | None] | None:
        partial: tuple[int, bytes, bytes | None] | None = None
        static = HeaderTable.STATIC_TABLE_MAPPING.get(name)
        if static:
            index = static[1].get(value)
            if index is not None:
                return index, name, value
            partial = (static[0], name, None)
        number = self._fields.get((name, value))
        if number is not None:
            return _FIRST_DYNAMIC + self._added - 1 - number, name, value
        if partial is None:
            number = self._names.get(name)
            if number is not None:
                return _FIRST_DYNAMIC + self._added - 1 - number, name, None
        return partial

    @HeaderTable.maxsize.setter  # type: ignore[attr-defined,untyped-decorator]
    def maxsize(self, newmax: int) -> None:
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]
        if not self.dynamic_entries:
            self._clear()

    def _shrink(self) -> None:
        entries = self.dynamic_entries
        fields = self._fields
        names = self._names
        size = self._current_size
        while size > self._maxsize:
            number = self._added - len(entries)  # the oldest entry's
            name, value = entries.pop()
            size -= table_entry_size(name, value)
            if fields.get((name, value)) == number:
                del fields[(name, value)]
            if names.get(name) == number:
                del names[name]
        self._current_size = size

    def _clear(self) -> None:
        self.dynamic_entries.clear()
        self._current_size = 0
        self._fields.clear()
        self._names.clear()


# Header values whose Huffman encoding is worth remembering: the request id goes out
# twice per call (upstream request, downstream response), on two connections.  Only
# values that are never secret belong here (the memo outlives the request).
_REMEMBERED: Final = frozenset({b"x-request-id"})
# How many remembered encodings are kept (a few thousand calls in flight at most need
# theirs; older ones are dropped first).
_REMEMBER_AT_MOST: Final = 4096


class _FastHuffman(HuffmanEncoder):
    """hpack's Huffman coder (RFC 7541 Appendix B), with a per-byte table and one
    integer conversion instead of a power and a hex round trip per byte; with
    ``remember`` set, it keeps the encoding in a process-wide memo, which is valid on
    any connection (a Huffman encoding depends on the bytes alone)."""

    _codes: Final = tuple(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True))
    _memo: Final[dict[bytes, bytes]] = {}

    def __init__(self) -> None:
        super().__init__(REQUEST_CODES, REQUEST_CODES_LENGTH)
        self.remember = False

    def encode(self, bytes_to_encode: bytes | None) -> bytes:
        if not bytes_to_encode:
            return b""
        memo = self._memo
        if self.remember:
            encoded = memo.get(bytes_to_encode)
            if encoded is not None:
                return encoded
        codes = self._codes
        number = 0
        bits = 0
        for byte in bytes_to_encode:
            code, length = codes[byte]
            number = (number << length) | code
            bits += length
        pad = -bits % 8  # padded with the most significant bits of EOS: ones
        encoded = ((number << pad) | ((1 << pad) - 1)).to_bytes((bits + pad) >> 3, "big")
        if self.remember:
            if len(memo) >= _REMEMBER_AT_MOST:
                del memo[next(iter(memo))]
            memo[bytes_to_encode] = encoded
        return encoded


class GatewayEncoder(Encoder):
    """hpack's encoder with :class:`IndexedHeaderTable` and :class:`_FastHuffman`.

    Same bytes as hpack's own encoder for any header list and any table size change
    (the tests compare them); measured on the header blocks of a relayed unary call
    (upstream request, response, trailers), 42 us per call with hpack's encoder, about
    half of it with this one.
    """

    def __init__(self) -> None:
        super().__init__()
        self.header_table = IndexedHeaderTable()
        self.huffman_coder: _FastHuffman = _FastHuffman()

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        coder = self.huffman_coder
        coder.remember = not sensitive and to_add[0] in _REMEMBERED
        try:
            return super().add(to_add, sensitive, huffman)
        finally:
            coder.remember = False


# --- the lean DATA path ----------------------------------------------------------------

# A frame header (RFC 9113 section 4.1): 24-bit length, type, flags, 31-bit stream id.
_FRAME_HEADER: Final = struct.Struct("!HBBBL")
_DATA_TYPE: Final = 0x0
_HEADERS_TYPE: Final = 0x1
_CONTINUATION_TYPE: Final = 0x9
_END_STREAM: Final = 0x1
_END_HEADERS: Final = 0x4
_PADDED: Final = 0x8
# The stream states in which a DATA frame without END_STREAM changes nothing but the
# windows (h2's stream state machine maps them onto themselves and, on receipt, only
# builds the DataReceived event).
_RECEIVING: Final = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_LOCAL})
_SENDING: Final = frozenset({StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE})
# The connection states in which DATA is sent and received without a transition.
_CONNECTION_OPEN: Final = frozenset({ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN})


class LeanDataFrame:
    """An unpadded DATA frame on a stream, cut from the read without hyperframe.

    :class:`LeanFrameBuffer` yields it in place of hyperframe's ``DataFrame`` (which
    costs a ``Flags`` set, padding parsing and a frame object per frame); the
    connection's lean handler takes it, or turns it into that ``DataFrame``
    (:meth:`as_frame`) for h2's own handling.
    """

    __slots__ = ("data", "end_stream", "stream_id")

    def __init__(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.stream_id = stream_id
        self.data = data
        self.end_stream = end_stream

    @property
    def flow_controlled_length(self) -> int:
        """What the frame counts against the windows: unpadded, its body."""
        return len(self.data)

    def as_frame(self) -> DataFrame:
        """The same frame as hyperframe parses it."""
        frame = DataFrame(self.stream_id, self.data)
        if self.end_stream:
            frame.flags.add("END_STREAM")
        return frame


class LeanFrameBuffer(FrameBuffer):
    """h2's frame buffer that cuts unpadded DATA frames itself (:class:`LeanDataFrame`).

    Only a DATA frame that is complete, within SETTINGS_MAX_FRAME_SIZE, on a stream
    (not 0), without the PADDED flag and outside a header block takes this path; any
    other frame -- and every DATA frame h2 would reject while parsing -- goes through
    h2's own ``__next__`` and hyperframe, errors included.  Padded DATA is parsed by
    hyperframe so that its padding rules (and the padding counted against the window)
    stay h2's.
    """

    def __next__(self) -> Any:
        data = self._data
        if (
            len(data) >= 9
            and data[3] == _DATA_TYPE
            and not data[4] & _PADDED
            and not self._headers_buffer
        ):
            length = (data[0] << 16) | (data[1] << 8) | data[2]
            stream_id = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            if stream_id and length <= self.max_frame_size and len(data) >= 9 + length:
                frame = LeanDataFrame(
                    stream_id, bytes(data[9 : 9 + length]), bool(data[4] & _END_STREAM)
                )
                del data[: 9 + length]
                return frame
        return super().__next__()


class LeanH2Connection(H2Connection):
    """``H2Connection`` with a lean DATA path and without the per-frame ``repr`` h2
    builds for its trace log.

    The trace: h2's ``_receive_frame`` starts with ``logger.trace("Received frame:
    %s", repr(frame))``: the ``repr`` is computed before the logger can decline it,
    and for a DATA frame it serialises the whole body and hex-encodes it to show ten
    bytes.  On a relayed server stream that was 15% of the gateway's CPU (py-spy,
    16 KiB messages); on a unary call about 1.5%.  This class does the same frame
    handling without that ``repr`` -- the body below is h2 4.x's ``_receive_frame``
    minus its first statement -- unless a real logger was configured
    (``H2Configuration(logger=...)``), in which case h2's own methods run, traces
    included, and the lean DATA path is off.

    The lean DATA path: a DATA frame without END_STREAM on a stream that is open for
    it changes nothing in h2 but numbers -- the connection's and the stream's windows
    and the stream's byte count -- and yields one ``DataReceived``.  For that frame,
    and only when every condition of that sentence is checked to hold, received DATA
    (:meth:`_receive_lean_data`) and sent DATA (:meth:`send_data`) update exactly
    those numbers, through h2's own window managers (so a frame over a window is still
    h2's FLOW_CONTROL_ERROR), and skip the state machines' dispatch, hyperframe's frame
    objects and h2's debug lines: about a third of the gateway's CPU per relayed
    16 KiB message.  Everything else -- END_STREAM, padding, closed, reset, idle or
    half-closed streams, a content-length to check, a closed connection -- takes h2's
    own path unchanged, so h2 keeps every rule it enforces.
    """

    def __init__(self, config: H2Configuration | None = None) -> None:
        super().__init__(config)
        self.encoder = GatewayEncoder()
        self._lean = type(self.config.logger) is DummyLogger
        if self._lean:
            self.incoming_buffer = LeanFrameBuffer(server=not self.config.client_side)
            self._frame_dispatch_table[LeanDataFrame] = self._receive_lean_data  # type: ignore[index]

    def _receive_lean_data(self, frame: LeanDataFrame) -> tuple[list[Frame], list[Event]]:
        """A DATA frame cut by :class:`LeanFrameBuffer`: the lean path when the stream
        is open for it, h2's ``_receive_data_frame`` otherwise."""
        stream = self.streams.get(frame.stream_id)
        if (
            stream is None
            or frame.end_stream
            or self.state_machine.state not in _CONNECTION_OPEN
            or stream.state_machine.state not in _RECEIVING
            or not stream.state_machine.headers_received
            or stream._expected_content_length is not None
        ):
            return self._receive_data_frame(frame.as_frame())
        data = frame.data
        size = len(data)
        # h2's order: the connection window first, then the stream's; either raises
        # FlowControlError (a connection error) when the frame overruns it.
        self._inbound_flow_control_window_manager.window_consumed(size)
        stream._inbound_window_manager.window_consumed(size)
        stream._actual_content_length += size
        return [], [DataReceived(stream_id=frame.stream_id, data=data, flow_controlled_length=size)]

    def send_data(
        self,
        stream_id: int,
        data: bytes | memoryview,
        end_stream: bool = False,
        pad_length: Any = None,
    ) -> None:
        """h2's ``send_data``; a DATA frame without END_STREAM or padding that fits
        both windows and the peer's frame size on an open stream is framed here."""
        stream = self.streams.get(stream_id)
        size = len(data)
        if (
            not self._lean
            or end_stream
            or pad_length is not None
            or stream is None
            or not size
            or self.state_machine.state not in _CONNECTION_OPEN
            or stream.state_machine.state not in _SENDING
            or size > self.max_outbound_frame_size
            or size > self.outbound_flow_control_window
            or size > stream.outbound_flow_control_window
        ):
            super().send_data(stream_id, data, end_stream, pad_length)
            return
        out = self._data_to_send
        out += _FRAME_HEADER.pack(size >> 8, size & 0xFF, _DATA_TYPE, 0, stream_id)
        out += data
        stream.outbound_flow_control_window -= size
        self.outbound_flow_control_window -= size

    def send_headers(
        self,
        stream_id: int,
        headers: Any,
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        """h2's ``send_headers``; a header block as the gateway sends it -- a list of
        ``bytes`` pairs, no priority, outbound normalisation and validation off -- is
        framed here.

        The same steps in h2's order, through h2's own state machines: the peer's
        SETTINGS_MAX_CONCURRENT_STREAMS for a new stream, the connection's and the
        stream's transitions (an informational response on the server side, END_STREAM,
        trailers that must end the stream), then HPACK and the frames: HEADERS and, past
        the peer's frame size, CONTINUATION frames, as h2 would cut them.  What is left
        out is what costs without changing a byte: h2's frame objects and their
        serialisation, the copy that re-encodes ``bytes`` names as UTF-8, the header
        validation flags nothing reads with validation off, and the debug lines.
        """
        config = self.config
        if (
            not self._lean
            or priority_weight is not None
            or priority_depends_on is not None
            or priority_exclusive is not None
            or config.validate_outbound_headers
            or config.normalize_outbound_headers
            or type(headers) is not list
            or not headers
            or type(headers[0][0]) is not bytes
        ):
            super().send_headers(
                stream_id,
                headers,
                end_stream,
                priority_weight,
                priority_depends_on,
                priority_exclusive,
            )
            return
        if stream_id not in self.streams:
            max_open_streams = self.remote_settings.max_concurrent_streams
            # A property that also forgets closed streams: read it once, as h2 does.
            open_streams = self.open_outbound_streams
            if open_streams + 1 > max_open_streams:
                msg = f"Max outbound streams is {max_open_streams}, {open_streams} open"
                raise TooManyStreamsError(msg)
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        stream = self._get_or_create_stream(stream_id, AllowedStreamIDs(config.client_side))
        machine = stream.state_machine
        input_ = StreamInputs.SEND_HEADERS
        if not machine.client and is_informational_response(headers):
            if end_stream:
                msg = "Cannot set END_STREAM on informational responses."
                raise ProtocolError(msg)
            input_ = StreamInputs.SEND_INFORMATIONAL_HEADERS
        machine.process_input(input_)
        block = self.encoder.encode(headers)
        flags = 0
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        if machine.trailers_sent and not end_stream:
            msg = "Trailers must have END_STREAM set."
            raise ProtocolError(msg)
        if machine.client and stream._authority is None:
            stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        out = self._data_to_send
        size = len(block)
        # Set from the peer's SETTINGS when the stream is created and on every change.
        # Most blocks fit one frame: one turn, and the slice is the block itself.
        limit = stream.max_outbound_frame_size or self.max_outbound_frame_size
        frame_type = _HEADERS_TYPE
        for start in range(0, size, limit):
            piece = block[start : start + limit]
            length = len(piece)
            if start + limit >= size:
                flags |= _END_HEADERS
            out += _FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)
            out += piece
            frame_type = _CONTINUATION_TYPE
            flags = 0

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if not self._lean:
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
