"""The sans-IO HTTP/2 buffers and connection both sides share, without sockets or clocks."""

from __future__ import annotations

import random

import hpack.hpack
import hpack.table
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes
from h2.stream import StreamState
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase

from eventgw.http2 import (
    STREAM_BUFFER_HIGH,
    STREAM_BUFFER_LOW,
    GatewayEncoder,
    LeanDataFrame,
    LeanFrameBuffer,
    LeanH2Connection,
    WatermarkBuffer,
    WriteCoalescer,
    _SilentHpackLog,
    header_list_size,
)


class WatermarkBufferTests(SynchronousTestCase):
    def test_crossing_high_is_reported_once(self) -> None:
        """append() reports the crossing of the high watermark exactly once."""
        buffer = WatermarkBuffer(high=10, low=4)
        self.assertFalse(buffer.append(b"x" * 10))
        self.assertTrue(buffer.append(b"x"))
        self.assertFalse(buffer.append(b"x" * 100))
        self.assertTrue(buffer.above_high)

    def test_falls_to_low_with_hysteresis(self) -> None:
        """Draining reports "low" once, only at or below the low watermark."""
        buffer = WatermarkBuffer(high=10, low=4)
        buffer.append(b"abcdefghijkl")
        self.assertEqual(buffer.take(5), b"abcde")
        self.assertFalse(buffer.fell_to_low())  # 7 left: between low and high
        self.assertEqual(buffer.take(3), b"fgh")
        self.assertTrue(buffer.fell_to_low())
        self.assertFalse(buffer.fell_to_low())
        self.assertFalse(buffer.above_high)

    def test_take_more_than_held(self) -> None:
        """take() returns what there is; an empty buffer is falsy."""
        buffer = WatermarkBuffer()
        buffer.append(b"abc")
        self.assertEqual(buffer.take(100), b"abc")
        self.assertFalse(buffer)
        self.assertEqual(len(buffer), 0)

    def test_clear(self) -> None:
        """clear() drops the bytes and the high state."""
        buffer = WatermarkBuffer(high=1, low=0)
        buffer.append(b"xyz")
        buffer.clear()
        self.assertFalse(buffer)
        self.assertFalse(buffer.above_high)

    def test_defaults_and_validation(self) -> None:
        """The defaults are the module's watermarks; low above high is refused."""
        buffer = WatermarkBuffer()
        self.assertEqual((buffer.high, buffer.low), (STREAM_BUFFER_HIGH, STREAM_BUFFER_LOW))
        self.assertRaises(ValueError, WatermarkBuffer, 1, 2)


class HeaderListSizeTests(SynchronousTestCase):
    def test_rfc_size(self) -> None:
        """Each field counts its name, its value and 32 octets (RFC 9113 6.5.2)."""
        self.assertEqual(header_list_size([(b":method", b"GET"), (b"a", b"")]), 7 + 3 + 32 + 33)
        self.assertEqual(header_list_size([]), 0)


class LeanH2ConnectionTests(SynchronousTestCase):
    """The h2 connection without per-frame debugging work behaves as h2 does."""

    def pair(self, **config: object) -> tuple[LeanH2Connection, H2Connection]:
        server = LeanH2Connection(
            H2Configuration(client_side=False, header_encoding=None, **config)  # type: ignore[arg-type]
        )
        client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        server.initiate_connection()
        client.initiate_connection()
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
        server.receive_data(client.data_to_send())
        return server, client

    def test_request_events(self) -> None:
        """HEADERS and DATA arrive as h2's usual events."""
        server, client = self.pair()
        client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"),
                                (b":path", b"/x"), (b":authority", b"a")])
        client.send_data(1, b"body", end_stream=True)
        events = server.receive_data(client.data_to_send())
        self.assertEqual(
            [type(e) for e in events], [RequestReceived, DataReceived, StreamEnded]
        )

    def test_frame_on_reset_stream_answered_with_rst_stream(self) -> None:
        """DATA for a stream we reset is a stream error: RST_STREAM, no exception."""
        server, client = self.pair()
        client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"),
                                (b":path", b"/x"), (b":authority", b"a")])
        server.receive_data(client.data_to_send())
        server.reset_stream(1, ErrorCodes.CANCEL)
        server.data_to_send()
        client.send_data(1, b"late")
        self.assertEqual(server.receive_data(client.data_to_send()), [])
        frames = list(hyperframe_frames(server.data_to_send()))
        self.assertEqual([type(f) for f in frames], [RstStreamFrame])
        self.assertEqual(frames[0].error_code, ErrorCodes.STREAM_CLOSED)

    def test_same_outcome_as_h2(self) -> None:
        """Frames on ended, reset and unknown streams: the same events, bytes and
        errors as h2's own connection."""
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"),
                   (b":authority", b"a")]

        def script(conn: H2Connection) -> list[object]:
            client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
            client.initiate_connection()
            conn.initiate_connection()
            outcome: list[object] = []

            def feed(data: bytes) -> None:
                try:
                    outcome.append([type(e).__name__ for e in conn.receive_data(data)])
                except ProtocolError as exc:
                    outcome.append(type(exc).__name__)
                outcome.append(conn.data_to_send())

            feed(client.data_to_send())
            client.send_headers(1, request, end_stream=True)
            client.send_headers(3, request)
            feed(client.data_to_send())
            conn.reset_stream(3, ErrorCodes.CANCEL)
            late = DataFrame(3)
            late.data = b"late"
            feed(late.serialize())  # a stream we reset: RST_STREAM
            after_end = DataFrame(1)
            after_end.data = b"x"
            feed(after_end.serialize())  # half-closed (remote): stream error
            stray = DataFrame(99)
            stray.data = b"x"
            feed(stray.serialize())  # never opened: connection error
            return outcome

        config = {"client_side": False, "header_encoding": None}
        self.assertEqual(
            script(LeanH2Connection(H2Configuration(**config))),  # type: ignore[arg-type]
            script(H2Connection(H2Configuration(**config))),  # type: ignore[arg-type]
        )

    def test_configured_logger_still_traces(self) -> None:
        """With a real logger configured, h2's own frame traces are kept."""
        lines: list[str] = []

        class Recorder:
            def debug(self, fmt: str, *args: object) -> None:
                pass

            def trace(self, fmt: str, *args: object) -> None:
                lines.append(fmt % args)

        server, client = self.pair(logger=Recorder())
        client.ping(b"12345678")
        server.receive_data(client.data_to_send())
        self.assertTrue(any(line.startswith("Received frame: PingFrame") for line in lines))

    def test_hpack_debug_lines_are_dropped(self) -> None:
        """hpack's module loggers are the silent stand-in, which accepts its calls."""
        self.assertIsInstance(hpack.hpack.log, _SilentHpackLog)
        self.assertIsInstance(hpack.table.log, _SilentHpackLog)
        self.assertIsNone(hpack.hpack.log.debug("Encoding %d with %d bits", 1, 2))


def hyperframe_frames(data: bytes) -> list[Frame]:
    """Split serialized frames back into hyperframe objects."""
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


class WriteCoalescerTests(SynchronousTestCase):
    """Flushes deferred while a read is processed run once each at the outermost end."""

    def test_not_held_means_flush_now(self) -> None:
        """Outside a read, defer declines and the caller flushes itself."""
        self.assertFalse(WriteCoalescer().defer(lambda: None))

    def test_once_each_at_outermost_release(self) -> None:
        """Each flush runs once, in first-deferred order, when the last hold ends."""
        writes = WriteCoalescer()
        ran: list[str] = []

        def a() -> None:
            ran.append("a")

        def b() -> None:
            ran.append("b")

        writes.hold()
        writes.hold()
        self.assertTrue(writes.defer(b))
        self.assertTrue(writes.defer(a))
        self.assertTrue(writes.defer(b))
        writes.release()
        self.assertEqual(ran, [])
        writes.release()
        self.assertEqual(ran, ["b", "a"])
        self.assertEqual(writes.depth, 0)
        self.assertFalse(writes.defer(a))

    def test_flush_that_defers_again(self) -> None:
        """A flush that holds and defers another (a write that resumed a producer)
        still has it run before the release returns."""
        writes = WriteCoalescer()
        ran: list[str] = []

        def inner() -> None:
            ran.append("inner")

        def outer() -> None:
            ran.append("outer")
            writes.hold()
            writes.defer(inner)
            writes.release()

        writes.hold()
        writes.defer(outer)
        writes.release()
        self.assertEqual(ran, ["outer", "inner"])


_REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"),
            (b":authority", b"a")]


def _data(stream_id: int, body: bytes, *, end: bool = False, pad: int | None = None) -> bytes:
    frame = DataFrame(stream_id, body)
    if end:
        frame.flags.add("END_STREAM")
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    return frame.serialize()


def _window_update(stream_id: int, increment: int) -> bytes:
    # hyperframe refuses to build an increment of 0 or over 2**31 - 1: raw bytes.
    return (4).to_bytes(3, "big") + b"\x08\x00" + stream_id.to_bytes(4, "big") + (
        increment.to_bytes(4, "big"))


class _Outcome:
    """Drives one server connection with raw client frames and records everything
    observable: events (with their fields), errors, bytes sent and the windows."""

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        conn.initiate_connection()
        self.log: list[object] = []
        self.feed(self.client.data_to_send())

    def feed(self, data: bytes) -> None:
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except ProtocolError as exc:
            self.log.append((type(exc).__name__, exc.error_code))
        else:
            self.log.append([
                (type(e).__name__, getattr(e, "stream_id", None), getattr(e, "data", None),
                 getattr(e, "flow_controlled_length", None),
                 getattr(e, "stream_ended", None) is not None)
                for e in events
            ])
        self.log.append(bytes(conn.data_to_send()))
        self.log.append(conn.outbound_flow_control_window)
        self.log.append(conn._inbound_flow_control_window_manager.current_window_size)
        for stream_id, stream in sorted(conn.streams.items()):
            self.log.append((stream_id, stream.state_machine.state,
                             stream.outbound_flow_control_window,
                             stream._inbound_window_manager.current_window_size))

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        try:
            self.conn.send_data(stream_id, data, end_stream=end)
        except ProtocolError as exc:
            self.log.append(("send", type(exc).__name__))
        self.log.append(bytes(self.conn.data_to_send()))
        self.log.append(self.conn.local_flow_control_window(stream_id)
                        if stream_id in self.conn.streams else None)

    def open(self, stream_id: int, end: bool = False) -> None:
        self.client.send_headers(stream_id, _REQUEST, end_stream=end)
        self.feed(self.client.data_to_send())


def _answers(log: list[object]) -> list[tuple[str, int, int]]:
    """The RST_STREAM and GOAWAY frames the connection sent, and the errors it raised:
    (what, stream id or -1, error code)."""
    found: list[tuple[str, int, int]] = []
    for item in log:
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], int):
            found.append((str(item[0]), -1, int(item[1])))
        elif isinstance(item, bytes):
            for frame in hyperframe_frames(item):
                if isinstance(frame, RstStreamFrame):
                    found.append(("RST_STREAM", frame.stream_id, frame.error_code))
                elif isinstance(frame, GoAwayFrame):
                    found.append(("GOAWAY", 0, frame.error_code))
    return found


class LeanDataPathTests(SynchronousTestCase):
    """The lean DATA path leaves h2's connection exactly as h2's own path would: the
    same events, errors, bytes, windows and stream states, frame for frame."""

    def same_as_h2(self, script: object) -> list[object]:
        def run(conn: H2Connection) -> list[object]:
            outcome = _Outcome(conn)
            script(outcome)  # type: ignore[operator]
            return outcome.log

        config = {"client_side": False, "header_encoding": None}
        lean = run(LeanH2Connection(H2Configuration(**config)))  # type: ignore[arg-type]
        self.assertEqual(lean, run(H2Connection(H2Configuration(**config))))  # type: ignore[arg-type]
        return lean

    def test_unpadded_data_takes_the_lean_path(self) -> None:
        """Unpadded DATA on a stream is cut by the lean buffer; padded DATA, DATA on
        stream 0 and DATA inside a header block are left to hyperframe."""
        buffer = LeanFrameBuffer()
        buffer.max_frame_size = 16384
        stream_zero = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"
        buffer.add_data(_data(1, b"abc", end=True) + _data(1, b"x", pad=4) + stream_zero)
        lean = next(buffer)
        self.assertIs(type(lean), LeanDataFrame)
        self.assertEqual((lean.stream_id, lean.data, lean.end_stream), (1, b"abc", True))
        padded = next(buffer)
        self.assertIs(type(padded), DataFrame)
        self.assertEqual(padded.flow_controlled_length, 1 + 1 + 4)
        self.assertRaises(ProtocolError, next, buffer)  # DATA on stream 0

    def test_data_on_open_stream(self) -> None:
        """DATA, with and without END_STREAM, and the windows it consumes."""
        def script(o: _Outcome) -> None:
            o.open(1)
            o.feed(_data(1, b"a" * 1000) + _data(1, b"") + _data(1, b"b" * 10, end=True))
            o.conn.acknowledge_received_data(500, 1)
            o.feed(b"")
        log = self.same_as_h2(script)
        self.assertIn([("DataReceived", 1, b"a" * 1000, 1000, False),
                       ("DataReceived", 1, b"", 0, False),
                       ("DataReceived", 1, b"b" * 10, 10, True),
                       ("StreamEnded", 1, None, None, False)], log)

    def test_data_over_the_stream_window(self) -> None:
        """A lean DATA frame past the stream's window: FLOW_CONTROL_ERROR."""
        def script(o: _Outcome) -> None:
            o.open(1)
            o.feed(_data(1, b"a" * 16384) * 3 + _data(1, b"a" * 16384))  # 65536 > 65535
        answers = _answers(self.same_as_h2(script))
        self.assertEqual(answers, [("FlowControlError", -1, ErrorCodes.FLOW_CONTROL_ERROR),
                                   ("GOAWAY", 0, ErrorCodes.FLOW_CONTROL_ERROR)])

    def test_data_over_the_connection_window(self) -> None:
        """The connection's window is checked first, across streams."""
        def script(o: _Outcome) -> None:
            for stream_id in (1, 3, 5, 7, 9):
                o.open(stream_id)
            o.feed(b"".join(_data(sid, b"c" * 16000) for sid in (1, 3, 5, 7, 9)))
        answers = _answers(self.same_as_h2(script))
        self.assertEqual(answers, [("FlowControlError", -1, ErrorCodes.FLOW_CONTROL_ERROR),
                                   ("GOAWAY", 0, ErrorCodes.FLOW_CONTROL_ERROR)])

    def test_padded_data_counts_against_the_window(self) -> None:
        """Padding is flow-controlled; too much padding is a PROTOCOL_ERROR."""
        def script(o: _Outcome) -> None:
            o.open(1)
            o.feed(_data(1, b"p" * 100, pad=200) + _data(1, b"q" * 10))
            o.feed(b"\x00\x00\x02\x00\x08\x00\x00\x00\x01\x05x")  # pad length 5 > body
        log = self.same_as_h2(script)
        self.assertIn([("DataReceived", 1, b"p" * 100, 301, False),
                       ("DataReceived", 1, b"q" * 10, 10, False)], log)
        self.assertIn(65535 - 311, log)
        self.assertEqual(_answers(log), [("ProtocolError", -1, ErrorCodes.PROTOCOL_ERROR),
                                         ("GOAWAY", 0, ErrorCodes.PROTOCOL_ERROR)])

    def test_data_after_rst_stream(self) -> None:
        """DATA after the client's RST_STREAM: STREAM_CLOSED, still counted against the
        connection window; after ours: answered with RST_STREAM."""
        def script(o: _Outcome) -> None:
            o.open(1)
            o.open(3)
            o.conn.reset_stream(3, ErrorCodes.CANCEL)
            o.feed(_data(3, b"late"))
            o.client.reset_stream(1, ErrorCodes.CANCEL)
            o.feed(o.client.data_to_send() + _data(1, b"after"))
        self.assertEqual(_answers(self.same_as_h2(script)), [
            ("RST_STREAM", 3, ErrorCodes.CANCEL),  # ours
            ("RST_STREAM", 3, ErrorCodes.STREAM_CLOSED),  # DATA after it
            ("RST_STREAM", 1, ErrorCodes.STREAM_CLOSED),  # DATA after the client's
        ])

    def test_data_on_idle_half_closed_and_in_a_header_block(self) -> None:
        """DATA on an idle stream, after END_STREAM, and between HEADERS and its
        CONTINUATION: the errors h2 raises."""
        def idle(o: _Outcome) -> None:
            o.feed(_data(5, b"x"))
        def half_closed(o: _Outcome) -> None:
            o.open(1, end=True)
            o.feed(_data(1, b"x"))
        def header_block(o: _Outcome) -> None:
            headers = HeadersFrame(1)
            headers.data = b"\x83"
            o.feed(headers.serialize() + _data(1, b"x"))
        connection_error = [("ProtocolError", -1, ErrorCodes.PROTOCOL_ERROR),
                            ("GOAWAY", 0, ErrorCodes.PROTOCOL_ERROR)]
        self.assertEqual(_answers(self.same_as_h2(idle)), connection_error)
        self.assertEqual(_answers(self.same_as_h2(half_closed)),
                         [("RST_STREAM", 1, ErrorCodes.STREAM_CLOSED)])
        self.assertEqual(_answers(self.same_as_h2(header_block)), connection_error)

    def test_content_length_still_checked(self) -> None:
        """With a content-length h2 checks, DATA takes h2's path."""
        def script(o: _Outcome) -> None:
            o.client.send_headers(1, [*_REQUEST, (b"content-length", b"3")])
            o.feed(o.client.data_to_send())
            o.feed(_data(1, b"abcd"))
        self.assertEqual(_answers(self.same_as_h2(script)), [
            ("InvalidBodyLengthError", -1, ErrorCodes.PROTOCOL_ERROR),
            ("GOAWAY", 0, ErrorCodes.PROTOCOL_ERROR),
        ])

    def test_window_update_rules(self) -> None:
        """WINDOW_UPDATE past 2**31 - 1 is FLOW_CONTROL_ERROR; an increment of 0 is
        PROTOCOL_ERROR; both while lean DATA moves the windows."""
        def stream_overflow(o: _Outcome) -> None:
            o.open(1)
            o.send(1, b"r" * 1000)
            o.feed(_window_update(1, 2**31 - 1 - 64535) + _window_update(1, 1))
        def connection_overflow(o: _Outcome) -> None:
            o.feed(_window_update(0, 2**31 - 1 - 65535 + 1))
        def zero(o: _Outcome) -> None:
            o.open(1)
            o.feed(_window_update(0, 0))
        self.assertEqual(_answers(self.same_as_h2(stream_overflow)),
                         [("RST_STREAM", 1, ErrorCodes.FLOW_CONTROL_ERROR)])
        self.assertEqual(_answers(self.same_as_h2(connection_overflow)),
                         [("FlowControlError", -1, ErrorCodes.FLOW_CONTROL_ERROR),
                          ("GOAWAY", 0, ErrorCodes.FLOW_CONTROL_ERROR)])
        self.assertEqual(_answers(self.same_as_h2(zero)),
                         [("ProtocolError", -1, ErrorCodes.PROTOCOL_ERROR),
                          ("GOAWAY", 0, ErrorCodes.PROTOCOL_ERROR)])

    def test_sending(self) -> None:
        """Sent DATA: the same bytes and windows; past a window, past the frame size,
        on a closed stream and with END_STREAM the same as h2."""
        def script(o: _Outcome) -> None:
            o.open(1)
            o.open(3, end=True)
            o.conn.send_headers(1, [(b":status", b"200")])
            o.conn.send_headers(3, [(b":status", b"200")])
            o.conn.data_to_send()
            o.send(1, b"s" * 16384)
            o.send(1, memoryview(b"m" * 100))  # type: ignore[arg-type]
            o.send(3, b"t" * 16384)
            o.send(1, b"u" * 16385)  # over the frame size
            o.send(3, b"v" * 16384)
            o.send(3, b"w" * 16384)  # over the connection window
            o.feed(_window_update(0, 100000))
            o.send(3, b"w" * 16384)  # the connection's window is open again
            o.send(3, b"x" * 16384)  # over the stream window (16383)
            o.send(1, b"e", end=True)
            o.send(1, b"after")  # half-closed (local)
            o.conn.reset_stream(3)
            o.send(3, b"after")  # closed
        log = self.same_as_h2(script)
        refused = [item[1] for item in log if isinstance(item, tuple) and item[0] == "send"]
        self.assertEqual(refused, ["FrameTooLargeError", "FlowControlError",
                                   "FlowControlError", "ProtocolError", "StreamClosedError"])
        self.assertIn(b"\x00\x40\x00\x00\x00\x00\x00\x00\x01" + b"s" * 16384, log)


class GatewayEncoderTests(SynchronousTestCase):
    """The gateway's HPACK encoder emits exactly hpack's bytes."""

    def test_same_bytes_as_hpack(self) -> None:
        """Random header lists -- repeated fields, new values, sensitive fields, names
        in and out of the static table -- through table size changes that evict, clear
        and refuse entries: block for block the bytes of hpack's encoder, and a decoder
        reads them back."""
        rng = random.Random(7)
        names = [b":path", b":authority", b"content-type", b"x-request-id", b"date",
                 b"grpc-status", b"x-custom", b"user-agent", b"authorization"]
        values = [b"0", b"/a", b"application/grpc", b"v" * 300, b"\xff\x00bin"]
        ours, theirs, decoder = GatewayEncoder(), Encoder(), Decoder()
        decoder.max_header_list_size = 1 << 20
        for round_number in range(3000):
            if round_number % 97 == 0:
                size = rng.choice([0, 64, 200, 4096, 8192])
                ours.header_table_size = theirs.header_table_size = size
                decoder.max_allowed_table_size = max(size, 8192)
            headers: list[tuple[bytes, bytes] | HeaderTuple] = []
            for _ in range(rng.randrange(1, 8)):
                name = rng.choice(names)
                value = rng.choice(values) if rng.random() < 0.6 else (
                    b"%032x" % rng.getrandbits(128))
                if rng.random() < 0.1:
                    headers.append(NeverIndexedHeaderTuple(name, value))
                else:
                    headers.append((name, value))
            block = ours.encode(headers)
            self.assertEqual(block, theirs.encode(headers), round_number)
            self.assertEqual([tuple(h) for h in decoder.decode(block, raw=True)],
                             [tuple(h) for h in headers])
            table = ours.header_table
            self.assertEqual(list(table.dynamic_entries),
                             list(theirs.header_table.dynamic_entries))
            # The search dictionaries shrink with the table.
            self.assertLessEqual(len(table._fields), len(table.dynamic_entries))

    def test_huffman_matches_hpack(self) -> None:
        """Every byte value, and the remembered request id on a second encoder."""
        data = bytes(range(256)) * 2
        self.assertEqual(GatewayEncoder().huffman_coder.encode(data),
                         Encoder().huffman_coder.encode(data))
        rid = (b"x-request-id", b"0123456789abcdef0123456789abcdef")
        first = GatewayEncoder().encode([rid])
        self.assertEqual(GatewayEncoder().encode([rid]), first)
        self.assertEqual(first, Encoder().encode([rid]))

    def test_connections_use_it(self) -> None:
        """Both sides' h2 connections encode with it."""
        self.assertIsInstance(LeanH2Connection().encoder, GatewayEncoder)


class LeanClientDataTests(SynchronousTestCase):
    """On a client connection too, the lean path gives h2's outcome."""

    def run_client(self, conn: H2Connection) -> list[object]:
        server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        conn.initiate_connection()
        log: list[object] = []

        def feed(data: bytes) -> None:
            try:
                log.append([(type(e).__name__, getattr(e, "data", None))
                            for e in conn.receive_data(data)])
            except ProtocolError as exc:
                log.append((type(exc).__name__, exc.error_code))
            log.append(bytes(conn.data_to_send()))

        server.receive_data(conn.data_to_send())
        feed(server.data_to_send())
        conn.send_headers(1, _REQUEST)
        conn.send_data(1, b"request", end_stream=True)
        server.receive_data(conn.data_to_send())
        feed(_data(1, b"before headers"))  # DATA before the response HEADERS
        return log

    def test_data_before_response_headers(self) -> None:
        config = {"client_side": True, "header_encoding": None}
        lean = self.run_client(LeanH2Connection(H2Configuration(**config)))  # type: ignore[arg-type]
        self.assertEqual(lean, self.run_client(H2Connection(H2Configuration(**config))))  # type: ignore[arg-type]
        self.assertIn(("ProtocolError", ErrorCodes.PROTOCOL_ERROR), lean)


# The configuration both sides of the gateway send headers with: h2's outbound
# normalisation and validation off (the gateway builds its header blocks itself).
_SENDING_AS_THE_GATEWAY = {"header_encoding": None, "validate_outbound_headers": False,
                           "normalize_outbound_headers": False}


class _HeadersOutcome:
    """One connection of either side sending header blocks to a plain h2 peer, with
    everything observable recorded after each step: the error raised (if any), the
    bytes sent, what the peer made of them, the stream states and the bookkeeping h2
    keeps per stream (request method, authority)."""

    def __init__(self, conn: H2Connection, *, peer_max_streams: int = 100) -> None:
        self.conn = conn
        client_side = conn.config.client_side
        self.peer = H2Connection(
            H2Configuration(client_side=not client_side, header_encoding=None)
        )
        self.peer.initiate_connection()
        self.peer.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: peer_max_streams})
        conn.initiate_connection()
        self.log: list[object] = []
        self.peer.receive_data(conn.data_to_send())
        conn.receive_data(self.peer.data_to_send())
        self.peer.receive_data(conn.data_to_send())
        self.peer.data_to_send()

    def peer_sends(self, stream_id: int, headers: list[tuple[bytes, bytes]],
                   end: bool = False) -> None:
        self.peer.send_headers(stream_id, headers, end_stream=end)
        self.conn.receive_data(self.peer.data_to_send())
        self.conn.data_to_send()

    def send(self, stream_id: int, headers: object, end: bool = False) -> None:
        try:
            self.conn.send_headers(stream_id, headers, end_stream=end)  # type: ignore[arg-type]
        except Exception as exc:  # every refusal is part of the outcome
            self.log.append(("raised", type(exc).__name__, str(exc)))
        sent = bytes(self.conn.data_to_send())
        self.log.append(sent)
        try:
            events = self.peer.receive_data(sent)
        except ProtocolError as exc:
            self.log.append(("peer refused", type(exc).__name__))
        else:
            self.log.append([(type(e).__name__, getattr(e, "stream_id", None),
                              getattr(e, "headers", None) or getattr(e, "trailers", None),
                              getattr(e, "stream_ended", None) is not None)
                             for e in events])
        self.log.append(self.conn.state_machine.state)
        for stream_id_, stream in sorted(self.conn.streams.items()):
            self.log.append((stream_id_, stream.state_machine.state, stream.request_method,
                             stream._authority))
        self.log.append(list(self.conn.encoder.header_table.dynamic_entries))


class LeanHeadersPathTests(SynchronousTestCase):
    """The lean HEADERS path leaves both sides exactly as h2's own ``send_headers``
    would: the same bytes, errors, stream states and compression context."""

    def same_as_h2(self, script: object, *, client_side: bool, **options: object) -> list[object]:
        def run(conn: H2Connection) -> list[object]:
            outcome = _HeadersOutcome(conn, **options)  # type: ignore[arg-type]
            script(outcome)  # type: ignore[operator]
            return outcome.log

        config = dict(_SENDING_AS_THE_GATEWAY, client_side=client_side)
        lean = run(LeanH2Connection(H2Configuration(**config)))  # type: ignore[arg-type]
        plain = H2Connection(H2Configuration(**config))  # type: ignore[arg-type]
        plain.encoder = GatewayEncoder()  # the same HPACK bytes as hpack's (tested above)
        self.assertEqual(lean, run(plain))
        return lean

    def test_takes_the_lean_path(self) -> None:
        """A gateway-built block does not go through h2's ``send_headers``; one with
        priority, with str names or with outbound checks on does."""
        calls: list[int] = []
        original = H2Connection.send_headers

        def counted(self: H2Connection, stream_id: int, *args: object, **kw: object) -> None:
            calls.append(stream_id)
            original(self, stream_id, *args, **kw)  # type: ignore[arg-type]

        self.patch(H2Connection, "send_headers", counted)
        conn = LeanH2Connection(H2Configuration(client_side=True, **_SENDING_AS_THE_GATEWAY))  # type: ignore[arg-type]
        conn.initiate_connection()
        conn.send_headers(1, list(_REQUEST))
        self.assertEqual(calls, [])
        conn.send_headers(3, list(_REQUEST), priority_weight=10)
        conn.send_headers(5, [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                              (":authority", "a")])
        conn.send_headers(7, tuple(_REQUEST))
        checking = LeanH2Connection(H2Configuration(client_side=True, header_encoding=None))
        checking.initiate_connection()
        checking.send_headers(1, list(_REQUEST))
        self.assertEqual(calls, [3, 5, 7, 1])

    def test_server_responses(self) -> None:
        """Informational responses, a response, trailers; END_STREAM on the head; and
        the refusals: END_STREAM on a 1xx, trailers without END_STREAM, headers after
        the end, on a reset stream and on a stream the client never opened."""
        def script(o: _HeadersOutcome) -> None:
            for stream_id in (1, 3, 5, 7, 9):
                o.peer_sends(stream_id, _REQUEST)
            o.send(1, [(b":status", b"100")])
            o.send(1, [(b":status", b"103"), (b"link", b"</a.css>; rel=preload")])
            o.send(1, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                       (b"x-request-id", b"0123456789abcdef")])
            o.send(1, [(b"grpc-status", b"0")], end=True)
            o.send(1, [(b"grpc-status", b"0")], end=True)  # after the end
            o.send(3, [(b":status", b"204")], end=True)
            o.send(9, [(b":status", b"200"), NeverIndexedHeaderTuple(b"set-cookie", b"s=1")])
            o.conn.reset_stream(7)
            o.send(7, [(b":status", b"200")])  # reset
            o.send(5, [(b":status", b"100")], end=True)  # END_STREAM on a 1xx
            o.send(5, [(b":status", b"200")])
            # Trailers without END_STREAM: refused after HPACK has encoded them (h2's
            # order), so the peer's decoder is out of step from here on.
            o.send(5, [(b"grpc-status", b"0")])
            o.send(2, [(b":status", b"200")])  # a stream the client never opened
        log = self.same_as_h2(script, client_side=False)
        raised = [item[1] for item in log if isinstance(item, tuple) and item[0] == "raised"]
        self.assertEqual(raised, ["ProtocolError", "StreamClosedError", "ProtocolError",
                                  "ProtocolError"])
        received = [item for item in log if isinstance(item, list) and item
                    and isinstance(item[0], tuple) and len(item[0]) == 4]
        self.assertIn([("ResponseReceived", 9,
                        [(b":status", b"200"), (b"set-cookie", b"s=1")], False)], received)

    def test_continuation(self) -> None:
        """A block past the peer's frame size is cut into HEADERS and CONTINUATION
        frames as h2 cuts it, END_STREAM on the first and END_HEADERS on the last."""
        # A block of exactly two frames' worth (its last frame is full).
        exact = next(
            block for block in ([(b":status", b"200"), (b"x-exact", b"b" * n)]
                                for n in range(43000, 44000))
            if len(GatewayEncoder().encode(block)) == 2 * 16384
        )

        def script(o: _HeadersOutcome) -> None:
            o.peer_sends(1, _REQUEST)
            o.peer_sends(3, _REQUEST)
            o.send(1, [(b":status", b"200"), (b"x-big", b"a" * 60000)], end=True)
            o.send(3, exact)
        log = self.same_as_h2(script, client_side=False)
        frames = hyperframe_frames(next(item for item in log if isinstance(item, bytes) and item))
        self.assertEqual([type(f).__name__ for f in frames],
                         ["HeadersFrame", "ContinuationFrame", "ContinuationFrame"])
        self.assertEqual([sorted(f.flags) for f in frames],
                         [["END_STREAM"], [], ["END_HEADERS"]])
        frames = hyperframe_frames([item for item in log if isinstance(item, bytes)][1])
        self.assertEqual([(type(f).__name__, len(f.data), sorted(f.flags)) for f in frames],
                         [("HeadersFrame", 16384, []),
                          ("ContinuationFrame", 16384, ["END_HEADERS"])])

    def test_client_requests(self) -> None:
        """Requests open streams up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS (then
        TooManyStreamsError), record the method and authority, and send trailers."""
        def script(o: _HeadersOutcome) -> None:
            o.send(1, [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/s/M"),
                       (b":authority", b"up:1"), (b"te", b"trailers")])
            o.send(3, [(b":method", b"HEAD"), (b":scheme", b"https"), (b":path", b"/"),
                       (b":authority", b"up:2")], end=True)
            o.send(5, list(_REQUEST))  # the third stream: over the peer's limit
            o.send(1, [(b"x-trailer", b"t")], end=True)
            o.send(1, [(b"x-trailer", b"again")], end=True)
            o.send(2, list(_REQUEST))  # an even stream id from a client
        log = self.same_as_h2(script, client_side=True, peer_max_streams=2)
        raised = [item[1] for item in log if isinstance(item, tuple) and item[0] == "raised"]
        self.assertEqual(raised, ["TooManyStreamsError", "ProtocolError", "ProtocolError"])
        self.assertIn((3, StreamState.HALF_CLOSED_LOCAL, b"HEAD", b"up:2"), log)
