# -*- test-case-name: tests.test_grpcwire -*-
"""The gRPC-over-HTTP/2 wire rules (gRPC's ``PROTOCOL-HTTP2.md``), in one place for
everything that speaks gRPC on the gateway's own HTTP/2 code: the relay's stream
bookkeeping, the HTTP/2 client to the Event Broker, and the HTTP/2 server.

Core module: imports the standard library, ``h2`` (its error-code enum) and eventgw's
other core modules only -- never ``twisted``, ``grpc``, ``txaio``, ``socket`` or a clock.

What lives here:

* the status a client derives from a response without ``grpc-status``: from the HTTP
  status (gRPC's ``http-grpc-status-mapping.md``) and from an RST_STREAM error code
  (``PROTOCOL-HTTP2.md``, "Errors");
* ``grpc-timeout``: parsing (``TimeoutValue TimeoutUnit``, at most 8 digits) and
  formatting a deadline;
* ``grpc-message``: UTF-8 then percent-encoding, and the tolerant decoding the spec asks
  for (a broken ``%`` escape is kept as it is, never an error);
* ``grpc-status`` values, and the header lists of a trailers-only response;
* the 5-byte length prefix of every message: :func:`frame_message` writes it,
  :class:`MessageDecoder` follows it across DATA frames however they cut the stream.

The gRPC status codes themselves, and the gRPC-code -> HTTP-status table for the
gateway's JSON errors, are :mod:`eventgw.errors`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple
from urllib.parse import unquote_to_bytes

from h2.errors import ErrorCodes

from eventgw.errors import GrpcStatus
from eventgw.exchange import Headers

__all__ = [
    "CONTENT_TYPE",
    "HTTP_STATUS_TO_GRPC",
    "MAX_TIMEOUT_VALUE",
    "PREFIX_LENGTH",
    "RESET_TO_GRPC",
    "LengthPrefixedMessage",
    "MessageDecoder",
    "format_grpc_timeout",
    "frame_message",
    "grpc_status_for_http",
    "grpc_status_for_reset",
    "parse_grpc_status",
    "parse_grpc_timeout",
    "percent_decode_message",
    "percent_encode_message",
    "status_trailers",
    "trailers_only",
]

#: The content type of a gRPC request or response (``+proto`` and others may follow).
CONTENT_TYPE: Final = b"application/grpc"

#: gRPC's http-grpc-status-mapping.md: the status a client derives from an HTTP
#: response that carries no ``grpc-status``.  Every other HTTP status is UNKNOWN
#: (200 too: a real OK carries ``grpc-status: 0``).
HTTP_STATUS_TO_GRPC: Final[Mapping[int, GrpcStatus]] = {
    400: GrpcStatus.INTERNAL,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    431: GrpcStatus.INTERNAL,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}

#: PROTOCOL-HTTP2.md "Errors": the status a client derives from an RST_STREAM error
#: code.  STREAM_CLOSED has no mapping there ("no open stream to propagate to";
#: implementations log it): the peer says the stream is already over, so the call
#: ended without any status -- UNKNOWN, as for a response that ends without
#: ``grpc-status``.  HTTP_1_1_REQUIRED is not listed; like any unknown code it
#: counts as INTERNAL.
RESET_TO_GRPC: Final[Mapping[int, GrpcStatus]] = {
    ErrorCodes.NO_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.PROTOCOL_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.INTERNAL_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.FLOW_CONTROL_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.SETTINGS_TIMEOUT: GrpcStatus.INTERNAL,
    ErrorCodes.STREAM_CLOSED: GrpcStatus.UNKNOWN,
    ErrorCodes.FRAME_SIZE_ERROR: GrpcStatus.INTERNAL,
    # Never processed: the request may be sent again, possibly elsewhere.
    ErrorCodes.REFUSED_STREAM: GrpcStatus.UNAVAILABLE,
    ErrorCodes.CANCEL: GrpcStatus.CANCELLED,
    ErrorCodes.COMPRESSION_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.CONNECT_ERROR: GrpcStatus.INTERNAL,
    ErrorCodes.ENHANCE_YOUR_CALM: GrpcStatus.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: GrpcStatus.PERMISSION_DENIED,
}

#: TimeoutValue: "positive integer as ASCII string of at most 8 digits".
MAX_TIMEOUT_VALUE: Final = 99_999_999
_MAX_TIMEOUT_DIGITS: Final = len(str(MAX_TIMEOUT_VALUE))
# TimeoutUnit -> seconds, keyed by the unit's byte value (``value[-1]`` is an int).
_TIMEOUT_UNITS: Final[Mapping[int, float]] = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}

#: Compressed-Flag (1 byte) and Message-Length (4 bytes, big-endian) before each message.
PREFIX_LENGTH: Final = 5


# --- statuses ---------------------------------------------------------------------


def grpc_status_for_http(status: int) -> GrpcStatus:
    """The gRPC status a client derives from an HTTP status without ``grpc-status``."""
    return HTTP_STATUS_TO_GRPC.get(status, GrpcStatus.UNKNOWN)


def grpc_status_for_reset(error_code: int) -> GrpcStatus:
    """The gRPC status a client derives from an RST_STREAM error code."""
    return RESET_TO_GRPC.get(error_code, GrpcStatus.INTERNAL)


def parse_grpc_status(value: bytes) -> int:
    """The code in a ``grpc-status`` value; UNKNOWN when it is not a number."""
    try:
        return int(value)
    except ValueError:
        return GrpcStatus.UNKNOWN


# --- grpc-timeout -----------------------------------------------------------------


def parse_grpc_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value (``b"300m"`` -> 0.3), ``None`` if malformed."""
    if len(value) < 2 or len(value) > _MAX_TIMEOUT_DIGITS + 1:
        return None
    scale = _TIMEOUT_UNITS.get(value[-1])
    digits = value[:-1]
    if scale is None or not digits.isdigit():
        return None
    return int(digits) * scale


def format_grpc_timeout(seconds: float) -> bytes:
    """The ``grpc-timeout`` value for a deadline ``seconds`` away, never shorter:
    milliseconds, rounded up (at least 1), or whole seconds once the milliseconds
    need more than 8 digits (from about 27.8 hours; capped at 8 digits of seconds)."""
    millis = -(-int(seconds * 1_000_000) // 1000)
    if millis <= MAX_TIMEOUT_VALUE:
        return b"%dm" % max(millis, 1)
    return b"%dS" % min(-(-millis // 1000), MAX_TIMEOUT_VALUE)


# --- grpc-message -----------------------------------------------------------------


def percent_encode_message(text: str) -> bytes:
    """``grpc-message`` encoding: UTF-8, then ``%XX`` for bytes outside 0x20-0x7E and ``%``."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def percent_decode_message(value: bytes) -> str:
    """The text of a ``grpc-message`` value.  Never fails: a broken ``%`` escape stays
    as it is, and bytes that are not UTF-8 become U+FFFD (as the spec allows)."""
    return unquote_to_bytes(value).decode("utf-8", "replace")


# --- trailers -----------------------------------------------------------------------


def status_trailers(code: int, message: str) -> Headers:
    """``grpc-status`` and ``grpc-message``: the trailers that end a call with ``code``."""
    return [
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", percent_encode_message(message)),
    ]


def trailers_only(code: int, message: str) -> Headers:
    """The header list of a trailers-only response (status 200 is the sender's part)."""
    return [(b"content-type", CONTENT_TYPE), *status_trailers(code, message)]


# --- length-prefixed messages -------------------------------------------------------


def frame_message(message: bytes, *, compressed: bool = False) -> bytes:
    """``message`` with its length prefix (``compressed``: the flag says it is)."""
    return (b"\x01" if compressed else b"\x00") + len(message).to_bytes(4, "big") + message


class LengthPrefixedMessage(NamedTuple):
    """One message of the stream.

    :ivar flag: the Compressed-Flag byte (0: as is, 1: compressed with
        ``grpc-encoding``; anything else is a broken peer).
    :ivar data: the message bytes.
    """

    flag: int
    data: bytes


class MessageDecoder:
    """Follows gRPC's length-prefixed framing across DATA frames, whatever their
    boundaries (the spec promises no alignment), and hands out each whole message.

    With ``collect=False`` nothing is copied or returned: the decoder only knows
    whether the bytes seen so far end between two messages (what a relay that never
    looks inside the messages needs).

    :ivar at_boundary: whether everything fed so far ends exactly after a message.
    """

    __slots__ = ("_collect", "_flag", "_header", "_parts", "_remaining")

    def __init__(self, *, collect: bool = True) -> None:
        self._collect = collect
        self._remaining = 0  # payload bytes still to come in the current message
        self._header = bytearray()  # a prefix split across frames
        self._flag = 0
        self._parts: list[bytes] = []  # the current message's bytes so far

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> list[LengthPrefixedMessage]:
        """Account for the next bytes of the stream; the messages they complete."""
        done: list[LengthPrefixedMessage] = []
        pos = 0
        size = len(data)
        while pos < size:
            if not self._remaining and not self._header and size - pos >= PREFIX_LENGTH:
                # A whole prefix at hand (the usual case): no buffering.
                flag = data[pos]
                length = int.from_bytes(data[pos + 1 : pos + PREFIX_LENGTH], "big")
                pos += PREFIX_LENGTH
                if size - pos >= length:
                    if self._collect:
                        done.append(LengthPrefixedMessage(flag, data[pos : pos + length]))
                    pos += length
                    continue
                self._flag = flag
                self._remaining = length
                continue
            if self._remaining:
                step = min(self._remaining, size - pos)
                self._remaining -= step
                if self._collect:
                    self._parts.append(data[pos : pos + step])
                    if not self._remaining:
                        done.append(self._complete())
                pos += step
                continue
            need = PREFIX_LENGTH - len(self._header)
            chunk = data[pos : pos + need]
            self._header += chunk
            pos += len(chunk)
            if len(self._header) == PREFIX_LENGTH:
                self._flag = self._header[0]
                self._remaining = int.from_bytes(self._header[1:], "big")
                self._header.clear()
                if not self._remaining and self._collect:
                    done.append(self._complete())
        return done

    def _complete(self) -> LengthPrefixedMessage:
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        return LengthPrefixedMessage(self._flag, data)
