"""A raw-frame HTTP/2 client for the framing conformance suite.

:class:`RawClient` drives a real :class:`~eventgw.downstream.h2server.H2ServerProtocol`
over a ``StringTransport`` with hand-built frames (hyperframe builds them, hpack encodes
the header blocks), so a test can send exactly the bytes a conformance checker sends --
including frames no well-behaved client library would produce -- and read back every
frame the server wrote.  Nothing here validates what it sends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from eventgw.config import Limits
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    RequestTarget,
    ResponseWriter,
    StaticReply,
)
from tests.support import EchoTarget

__all__ = [
    "CONTINUATION",
    "DATA",
    "GOAWAY",
    "HEADERS",
    "PING",
    "PREFACE",
    "PRIORITY",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "BodyTarget",
    "RawClient",
    "SilentTarget",
    "frame_bytes",
    "hpack_literal",
    "hpack_table_size_update",
    "raw_frame",
    "request_headers",
    "settings_payload",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# The frame type codes (RFC 9113 section 6 and 11.2).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9


def raw_frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame from its header fields, whatever they say (lengths are not checked).

    ``stream_id`` is written as 32 bits, so the reserved bit may be set with it.
    """
    length = len(payload)
    return struct.pack(">BHBBL", length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + (
        payload
    )


def frame_bytes(*items: Frame | bytes) -> bytes:
    """Serialise hyperframe frames and raw byte strings in order."""
    return b"".join(item if isinstance(item, bytes) else item.serialize() for item in items)


def request_headers(
    method: bytes = b"GET", path: bytes = b"/api/x", extra: Headers | None = None
) -> Headers:
    """A valid request head for the gateway's routes."""
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"gw.test"),
        *(extra or []),
    ]


class SilentTarget:
    """Takes every request and never answers: its streams stay half-closed (remote)."""

    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.writers: list[ResponseWriter] = []

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        self.heads.append(head)
        self.writers.append(writer)
        return StaticReply()


class BodyTarget:
    """Answers every request at once with 200 and ``size`` bytes of body."""

    def __init__(self, size: int) -> None:
        self.size = size

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        writer.write_head(200, [(b"content-type", b"application/octet-stream")])
        writer.write_body(b"b" * self.size)
        writer.end()
        return StaticReply()


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# RFC 7541 section 6.2: the pattern of the first octet and the width of the name index.
_LITERALS = {
    "incremental": (0x40, 6),
    "without": (0x00, 4),
    "never": (0x10, 4),
}


def _hpack_int(value: int, prefix_bits: int, pattern: int = 0) -> bytes:
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= pattern
    return bytes(encoded)


def _hpack_string(data: bytes, huffman: bool) -> bytes:
    if huffman:
        coded = _HUFFMAN.encode(data)
        return _hpack_int(len(coded), 7, 0x80) + coded
    return _hpack_int(len(data), 7) + data


def hpack_literal(kind: str, name: int | bytes, value: bytes, *, huffman: bool = False) -> bytes:
    """One literal field representation built by hand (RFC 7541 section 6.2).

    ``kind`` is ``"incremental"``, ``"without"`` or ``"never"`` (indexing); ``name`` a
    table index or a new name.  hpack's encoder never emits "without indexing" and
    picks its own representations, so a checker's choices are made here.
    """
    pattern, bits = _LITERALS[kind]
    if isinstance(name, int):
        return _hpack_int(name, bits, pattern) + _hpack_string(value, huffman)
    return bytes([pattern]) + _hpack_string(name, huffman) + _hpack_string(value, huffman)


def hpack_table_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 section 6.3)."""
    return _hpack_int(size, 5, 0x20)


def _parse(data: bytes) -> tuple[list[Frame], bytes]:
    """Complete frames in ``data`` and the unparsed rest."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames, bytes(view)


class RawClient:
    """The client side of one in-memory HTTP/2 connection, frame by frame.

    ``bytewise`` feeds every byte the client sends in its own ``dataReceived`` call,
    the worst framing a TCP stream can produce.  Server output is parsed into
    :attr:`frames` as it is read; response header blocks go through one HPACK decoder
    in order, so the dynamic table stays in step with the server's encoder.
    """

    def __init__(
        self,
        target: RequestTarget | None = None,
        limits: Limits | None = None,
        *,
        bytewise: bool = False,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.target: RequestTarget = target if target is not None else EchoTarget()
        self.server = H2ServerProtocol(
            self.target, limits or Limits(), scheme=b"https", reactor=self.clock
        )
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 40000))
        self.bytewise = bytewise
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self.headers: dict[int, list[Headers]] = {}  # decoded header blocks per stream
        self._unparsed = b""
        self._block: list[bytes] = []
        self.server.makeConnection(self.transport)

    # --- bytes in, frames out ---------------------------------------------------------

    def send(self, *items: Frame | bytes) -> None:
        """Write frames (or raw bytes) to the server, then read what it answered."""
        data = frame_bytes(*items)
        if self.bytewise:
            for index in range(len(data)):
                self.server.dataReceived(data[index : index + 1])
        else:
            self.server.dataReceived(data)
        self.read()

    def read(self) -> list[Frame]:
        """Frames the server wrote since the last read."""
        data = self.transport.value()
        self.transport.clear()
        frames, self._unparsed = _parse(self._unparsed + data)
        for frame in frames:
            self._decode(frame)
        self.frames += frames
        return frames

    def _decode(self, frame: Frame) -> None:
        if isinstance(frame, HeadersFrame | ContinuationFrame):
            self._block.append(frame.data)
            if "END_HEADERS" in frame.flags:
                block = b"".join(self._block)
                self._block = []
                decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(block, raw=True)]
                self.headers.setdefault(frame.stream_id, []).append(decoded)

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        """Preface and SETTINGS both ways, as a conformance checker opens a connection.

        The server's own SETTINGS is acknowledged; the test sees the server's ACK of
        ours in :attr:`frames`.
        """
        ours = SettingsFrame(0)
        ours.settings = dict(settings or {})
        self.send(PREFACE, ours)
        self.send(SettingsFrame(0, flags=["ACK"]))

    # --- building frames ------------------------------------------------------------

    def header_block(
        self, headers: Iterable[tuple[bytes, bytes]], *, huffman: bool = True
    ) -> bytes:
        """Encode a header list with the connection's HPACK encoder."""
        return bytes(self.encoder.encode(list(headers), huffman=huffman))

    def headers_frame(
        self,
        stream_id: int,
        headers: Headers | None = None,
        *,
        end_stream: bool = True,
        end_headers: bool = True,
        block: bytes | None = None,
        huffman: bool = True,
    ) -> HeadersFrame:
        """A HEADERS frame carrying ``headers`` (a GET by default) or ``block``."""
        frame = HeadersFrame(stream_id)
        frame.data = block if block is not None else self.header_block(
            headers if headers is not None else request_headers(), huffman=huffman
        )
        if end_stream:
            frame.flags.add("END_STREAM")
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    @staticmethod
    def data_frame(stream_id: int, data: bytes = b"x", *, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(stream_id, data)
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def ping(payload: bytes = b"h2framin", *, ack: bool = False) -> PingFrame:
        return PingFrame(0, payload, flags=["ACK"] if ack else [])

    def request(self, stream_id: int, method: bytes = b"GET", body: bytes = b"") -> None:
        """Send a complete request on ``stream_id``."""
        headers = request_headers(method)
        if body:
            self.send(
                self.headers_frame(stream_id, headers, end_stream=False),
                self.data_frame(stream_id, body, end_stream=True),
            )
        else:
            self.send(self.headers_frame(stream_id, headers))

    # --- what the server did --------------------------------------------------------

    def goaways(self) -> list[GoAwayFrame]:
        return [f for f in self.frames if isinstance(f, GoAwayFrame)]

    def resets(self, stream_id: int | None = None) -> list[RstStreamFrame]:
        return [
            f
            for f in self.frames
            if isinstance(f, RstStreamFrame) and stream_id in (None, f.stream_id)
        ]

    def pings(self) -> list[PingFrame]:
        return [f for f in self.frames if isinstance(f, PingFrame)]

    def settings_acks(self) -> int:
        return sum(1 for f in self.frames if isinstance(f, SettingsFrame) and "ACK" in f.flags)

    def data(self, stream_id: int) -> list[DataFrame]:
        return [f for f in self.frames if isinstance(f, DataFrame) and f.stream_id == stream_id]

    def body(self, stream_id: int) -> bytes:
        return b"".join(f.data for f in self.data(stream_id))

    def ended(self, stream_id: int) -> bool:
        """The server closed its side of ``stream_id`` (END_STREAM on any frame)."""
        return any(
            f.stream_id == stream_id and "END_STREAM" in f.flags
            for f in self.frames
            if isinstance(f, DataFrame | HeadersFrame)
        )

    def status(self, stream_id: int) -> bytes | None:
        blocks = self.headers.get(stream_id)
        return dict(blocks[0]).get(b":status") if blocks else None

    @property
    def closed(self) -> bool:
        """The server has closed (or is closing) the transport."""
        return bool(self.transport.disconnecting)

    def error_name(self, code: int) -> str:
        try:
            return ErrorCodes(code).name
        except ValueError:
            return hex(code)


def settings_payload(pairs: Iterable[tuple[int, int]]) -> bytes:
    """A SETTINGS payload from (identifier, value) pairs, duplicates and all."""
    return b"".join(struct.pack(">HL", ident, value) for ident, value in pairs)

