"""The sans-IO HTTP/2 buffers and connection both sides share, without sockets or clocks."""

from __future__ import annotations

import hpack.hpack
import hpack.table
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError
from hyperframe.frame import DataFrame, Frame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase

from eventgw.http2 import (
    STREAM_BUFFER_HIGH,
    STREAM_BUFFER_LOW,
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
