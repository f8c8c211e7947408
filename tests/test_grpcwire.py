# mypy: disable-error-code="no-untyped-call"
"""Unit tests for the gRPC-over-HTTP/2 wire rules (eventgw.grpcwire): no sockets."""

from __future__ import annotations

from itertools import pairwise

from h2.errors import ErrorCodes
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import GrpcStatus
from eventgw.grpcwire import (
    CONTENT_TYPE,
    HTTP_STATUS_TO_GRPC,
    MAX_TIMEOUT_VALUE,
    PREFIX_LENGTH,
    RESET_TO_GRPC,
    LengthPrefixedMessage,
    MessageDecoder,
    format_grpc_timeout,
    frame_message,
    grpc_status_for_http,
    grpc_status_for_reset,
    parse_grpc_status,
    parse_grpc_timeout,
    percent_decode_message,
    percent_encode_message,
    status_trailers,
    trailers_only,
)

_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class HttpStatusTests(SynchronousTestCase):
    """http-grpc-status-mapping.md, row by row."""

    # Grouped by the gRPC status, the way a client reads the table.
    EXPECTED: dict[GrpcStatus, tuple[int, ...]] = {
        GrpcStatus.INTERNAL: (400, 431),
        GrpcStatus.UNAUTHENTICATED: (401,),
        GrpcStatus.PERMISSION_DENIED: (403,),
        GrpcStatus.UNIMPLEMENTED: (404,),
        GrpcStatus.UNAVAILABLE: (429, 502, 503, 504),
    }

    def test_every_row(self) -> None:
        """Each listed HTTP status gives the spec's gRPC status, and the table lists
        nothing else."""
        listed = set()
        for code, statuses in self.EXPECTED.items():
            for status in statuses:
                self.assertEqual(grpc_status_for_http(status), code, status)
                listed.add(status)
        self.assertEqual(set(HTTP_STATUS_TO_GRPC), listed)

    def test_all_other_statuses_are_unknown(self) -> None:
        """200 (no grpc-status is no OK), 418, 500 and the rest are UNKNOWN."""
        for status in (0, 100, 200, 204, 301, 405, 418, 500, 501, 505, 599):
            self.assertEqual(grpc_status_for_http(status), GrpcStatus.UNKNOWN, status)


class ResetCodeTests(SynchronousTestCase):
    """PROTOCOL-HTTP2.md "Errors": RST_STREAM error code -> gRPC status, row by row."""

    EXPECTED: dict[GrpcStatus, tuple[ErrorCodes, ...]] = {
        GrpcStatus.UNAVAILABLE: (ErrorCodes.REFUSED_STREAM,),
        GrpcStatus.CANCELLED: (ErrorCodes.CANCEL,),
        GrpcStatus.RESOURCE_EXHAUSTED: (ErrorCodes.ENHANCE_YOUR_CALM,),
        GrpcStatus.PERMISSION_DENIED: (ErrorCodes.INADEQUATE_SECURITY,),
        # No mapping in the spec ("no open stream to propagate to"): the call ended
        # without a status.
        GrpcStatus.UNKNOWN: (ErrorCodes.STREAM_CLOSED,),
        GrpcStatus.INTERNAL: (
            ErrorCodes.NO_ERROR,
            ErrorCodes.PROTOCOL_ERROR,
            ErrorCodes.INTERNAL_ERROR,
            ErrorCodes.FLOW_CONTROL_ERROR,
            ErrorCodes.SETTINGS_TIMEOUT,
            ErrorCodes.FRAME_SIZE_ERROR,
            ErrorCodes.COMPRESSION_ERROR,
            ErrorCodes.CONNECT_ERROR,
        ),
    }

    def test_every_row(self) -> None:
        """Each code the spec lists gives its status, STREAM_CLOSED (no mapping there)
        UNKNOWN; HTTP_1_1_REQUIRED (not listed) is the only code left out."""
        listed = set()
        for status, codes in self.EXPECTED.items():
            for code in codes:
                self.assertEqual(grpc_status_for_reset(code), status, code.name)
                listed.add(code)
        self.assertEqual(set(RESET_TO_GRPC), listed)
        self.assertEqual(set(ErrorCodes) - listed, {ErrorCodes.HTTP_1_1_REQUIRED})

    def test_plain_ints_and_unknown_codes(self) -> None:
        """A code given as a plain int maps like the enum member; unlisted and unknown
        codes are INTERNAL."""
        self.assertEqual(grpc_status_for_reset(0x7), GrpcStatus.UNAVAILABLE)
        self.assertEqual(grpc_status_for_reset(0x8), GrpcStatus.CANCELLED)
        for code in (ErrorCodes.HTTP_1_1_REQUIRED, 0x99, 2**31):
            self.assertEqual(grpc_status_for_reset(code), GrpcStatus.INTERNAL, code)


class GrpcStatusValueTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """A grpc-status value is its number; anything else is UNKNOWN."""
        self.assertEqual(parse_grpc_status(b"0"), GrpcStatus.OK)
        self.assertEqual(parse_grpc_status(b"14"), GrpcStatus.UNAVAILABLE)
        for bad in (b"", b"x", b"1.0", b"OK"):
            self.assertEqual(parse_grpc_status(bad), GrpcStatus.UNKNOWN, bad)


class TimeoutParseTests(SynchronousTestCase):
    def test_every_unit(self) -> None:
        """H M S m u n are hours, minutes, seconds, milli-, micro- and nanoseconds."""
        self.assertEqual(parse_grpc_timeout(b"1H"), 3600.0)
        self.assertEqual(parse_grpc_timeout(b"1M"), 60.0)
        self.assertEqual(parse_grpc_timeout(b"2S"), 2.0)
        self.assertEqual(parse_grpc_timeout(b"300m"), 0.3)
        self.assertAlmostEqual(parse_grpc_timeout(b"5000u") or 0, 0.005)
        self.assertAlmostEqual(parse_grpc_timeout(b"99999999n") or 0, 0.099999999)

    def test_eight_digits_at_most(self) -> None:
        """Up to 8 digits parse (leading zeros too); 9 digits are malformed."""
        self.assertEqual(parse_grpc_timeout(b"99999999S"), 99_999_999.0)
        self.assertEqual(parse_grpc_timeout(b"00000001S"), 1.0)
        self.assertEqual(parse_grpc_timeout(b"0m"), 0.0)
        self.assertIsNone(parse_grpc_timeout(b"123456789S"))
        self.assertIsNone(parse_grpc_timeout(b"100000000m"))
        self.assertIsNone(parse_grpc_timeout(b"000000001S"))

    def test_malformed(self) -> None:
        """No digits, no unit, an unknown unit (units are case-sensitive), a sign, a
        fraction or white space: malformed."""
        for bad in (b"", b"m", b"5", b"10x", b"1s", b"1h", b"-1S", b"+1S", b"1.5S",
                    b" 1S", b"1S ", b"1 S", b"\xd9\xa1S"):
            self.assertIsNone(parse_grpc_timeout(bad), bad)

    @given(st.integers(0, MAX_TIMEOUT_VALUE), st.sampled_from(sorted(_UNIT_SECONDS)))
    def test_any_valid_value(self, value: int, unit: str) -> None:
        """Every 1-8 digit value with every unit parses to value times the unit."""
        parsed = parse_grpc_timeout(b"%d%s" % (value, unit.encode()))
        self.assertIsNotNone(parsed)
        self.assertAlmostEqual(parsed or 0, value * _UNIT_SECONDS[unit], delta=1e-9 * value)


class TimeoutFormatTests(SynchronousTestCase):
    def test_milliseconds_rounded_up(self) -> None:
        """Milliseconds, rounded up, at least 1; seconds once 8 digits do not hold the
        milliseconds."""
        self.assertEqual(format_grpc_timeout(5.0), b"5000m")
        self.assertEqual(format_grpc_timeout(0.0001), b"1m")
        self.assertEqual(format_grpc_timeout(0.5005), b"501m")
        self.assertEqual(format_grpc_timeout(200_000.0), b"200000S")

    def test_bounds(self) -> None:
        """The largest millisecond value is 8 digits; beyond it seconds (rounded up),
        capped at 8 digits; no deadline is ever formatted as zero or negative."""
        self.assertEqual(format_grpc_timeout(99_999.999), b"99999999m")
        self.assertEqual(format_grpc_timeout(100_000.0), b"100000S")
        self.assertEqual(format_grpc_timeout(100_000.5), b"100001S")
        self.assertEqual(format_grpc_timeout(1e12), b"99999999S")
        self.assertEqual(format_grpc_timeout(0.0), b"1m")
        self.assertEqual(format_grpc_timeout(-3.0), b"1m")

    @given(st.floats(min_value=0.001, max_value=float(MAX_TIMEOUT_VALUE)))
    def test_round_trip_never_shorter(self, seconds: float) -> None:
        """What is formatted parses back, never shorter than asked and at most one
        unit (1 ms, or 1 s for the longest deadlines) longer."""
        value = format_grpc_timeout(seconds)
        self.assertLessEqual(len(value), 9)
        parsed = parse_grpc_timeout(value)
        assert parsed is not None
        step = 1e-3 if value.endswith(b"m") else 1.0
        self.assertGreaterEqual(parsed, seconds - 1e-6)
        self.assertLessEqual(parsed, seconds + step + 1e-6)


class MessageEncodingTests(SynchronousTestCase):
    def test_percent_encoding(self) -> None:
        """grpc-message: printable ASCII stays, '%' and non-ASCII are %XX of UTF-8."""
        self.assertEqual(percent_encode_message("a b/c"), b"a b/c")
        self.assertEqual(percent_encode_message("100%"), b"100%25")
        self.assertEqual(percent_encode_message("né\n"), b"n%C3%A9%0A")
        self.assertEqual(percent_encode_message(""), b"")

    def test_decoding(self) -> None:
        """%XX sequences are UTF-8; hex digits in either case."""
        self.assertEqual(percent_decode_message(b"token%20expired"), "token expired")
        self.assertEqual(percent_decode_message(b"n%c3%a9%0A"), "né\n")

    def test_broken_escapes_kept(self) -> None:
        """Decoding never fails: a broken escape stays as it is, bytes that are not
        UTF-8 become U+FFFD."""
        self.assertEqual(percent_decode_message(b"100%"), "100%")
        self.assertEqual(percent_decode_message(b"%G1%2"), "%G1%2")
        self.assertEqual(percent_decode_message(b"%FFok"), "\ufffdok")

    @given(st.text())
    def test_round_trip(self, text: str) -> None:
        """Any text survives encoding then decoding, and the encoded form is only
        space and visible ASCII."""
        encoded = percent_encode_message(text)
        self.assertTrue(all(0x20 <= byte <= 0x7E for byte in encoded), encoded)
        self.assertEqual(percent_decode_message(encoded), text)

    @given(st.binary())
    def test_decoding_any_bytes(self, value: bytes) -> None:
        """Arbitrary bytes decode to some text, never an exception."""
        self.assertIsInstance(percent_decode_message(value), str)


class TrailersTests(SynchronousTestCase):
    def test_trailers_only(self) -> None:
        """A trailers-only header list: the gRPC content type, the status, the
        percent-encoded message; the trailers alone are the last two."""
        headers = trailers_only(GrpcStatus.NOT_FOUND, "no such item")
        self.assertEqual(
            headers,
            [
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"5"),
                (b"grpc-message", b"no such item"),
            ],
        )
        self.assertEqual(status_trailers(GrpcStatus.NOT_FOUND, "no such item"), headers[1:])
        self.assertEqual(CONTENT_TYPE, b"application/grpc")


def _stream(messages: list[LengthPrefixedMessage]) -> bytes:
    return b"".join(frame_message(m.data, compressed=m.flag == 1) for m in messages)


_MESSAGES = st.lists(
    st.builds(LengthPrefixedMessage, st.sampled_from([0, 1]), st.binary(max_size=300)),
    max_size=8,
)


class LengthPrefixTests(SynchronousTestCase):
    def test_frame(self) -> None:
        """The flag byte, the length as 4 bytes big-endian, the message."""
        self.assertEqual(frame_message(b"abc"), b"\x00\x00\x00\x00\x03abc")
        self.assertEqual(frame_message(b""), b"\x00\x00\x00\x00\x00")
        self.assertEqual(frame_message(b"z", compressed=True), b"\x01\x00\x00\x00\x01z")
        self.assertEqual(len(frame_message(b"x" * 70_000)), PREFIX_LENGTH + 70_000)
        self.assertEqual(frame_message(b"x" * 70_000)[1:5], (70_000).to_bytes(4, "big"))

    def test_fed_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, the decoder hands out each message as its last
        byte arrives, and is at a boundary only between messages."""
        messages = [
            LengthPrefixedMessage(0, b"abc"),
            LengthPrefixedMessage(0, b""),
            LengthPrefixedMessage(1, b"x" * 300),
        ]
        stream = _stream(messages)
        ends = {5 + 3: messages[0], 5 + 3 + 5: messages[1], len(stream): messages[2]}
        for collect in (True, False):
            decoder = MessageDecoder(collect=collect)
            for index in range(len(stream)):
                done = decoder.feed(stream[index : index + 1])
                end = ends.get(index + 1)
                self.assertEqual(decoder.at_boundary, end is not None, index)
                expected = [end] if collect and end is not None else []
                self.assertEqual(done, expected, index)

    def test_many_messages_in_one_chunk(self) -> None:
        """Several messages and a split one in a single chunk."""
        decoder = MessageDecoder()
        stream = _stream([LengthPrefixedMessage(0, b"a"), LengthPrefixedMessage(0, b"bb")])
        last = frame_message(b"ccc")
        self.assertEqual(
            decoder.feed(stream + last[:4]),
            [LengthPrefixedMessage(0, b"a"), LengthPrefixedMessage(0, b"bb")],
        )
        self.assertFalse(decoder.at_boundary)
        self.assertEqual(decoder.feed(last[4:]), [LengthPrefixedMessage(0, b"ccc")])
        self.assertTrue(decoder.at_boundary)

    def test_without_collecting(self) -> None:
        """``collect=False`` returns nothing but still follows the boundaries."""
        decoder = MessageDecoder(collect=False)
        self.assertTrue(decoder.at_boundary)
        self.assertEqual(decoder.feed(frame_message(b"abc") + frame_message(b"d")[:5]), [])
        self.assertFalse(decoder.at_boundary)
        self.assertEqual(decoder.feed(b""), [])
        self.assertFalse(decoder.at_boundary)

    def test_largest_length(self) -> None:
        """A prefix announcing 2**32-1 bytes waits for all of them."""
        decoder = MessageDecoder(collect=False)
        decoder.feed(b"\x00\xff\xff\xff\xff" + b"x" * 1000)
        self.assertFalse(decoder.at_boundary)

    @given(_MESSAGES, st.lists(st.integers(0, 3000), max_size=10))
    def test_any_split(self, messages: list[LengthPrefixedMessage], cuts: list[int]) -> None:
        """However the stream is cut into chunks, the same messages come out, in order."""
        stream = _stream(messages)
        points = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
        decoder = MessageDecoder()
        out: list[LengthPrefixedMessage] = []
        for start, end in pairwise(points):
            out += decoder.feed(stream[start:end])
        self.assertEqual(out, messages)
        self.assertTrue(decoder.at_boundary)
