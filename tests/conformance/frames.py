"""Raw HTTP/2 frames against the real H2ServerProtocol, in memory.

:class:`RawClient` plays a client that writes frames by hand (hyperframe for the
framing, an ``hpack`` encoder -- or literal bytes -- for header blocks), so a test can
send what a well-behaved client library refuses to produce, and reads back every frame
the server wrote over a StringTransport.  The server runs with a
:class:`~twisted.internet.testing.MemoryReactorClock`, so nothing waits on real time.
The helpers at the bottom build HPACK blocks field by field (RFC 7541 section 6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from eventgw.config import Limits
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.exchange import Headers
from tests.support import EchoTarget

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

__all__ = [
    "PREFACE",
    "Case",
    "RawClient",
    "hpack_indexed",
    "hpack_integer",
    "hpack_literal",
    "hpack_size_update",
    "install_cases",
    "parse_frames",
    "request",
]


def parse_frames(data: bytes) -> list[Frame]:
    """Split raw HTTP/2 bytes into hyperframe frames."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def request(
    method: bytes = b"GET", path: bytes = b"/x", extra: Headers | None = None
) -> Headers:
    """A well-formed request header list, ``extra`` appended."""
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"gw.test"),
        *(extra or []),
    ]


class RawClient:
    """A client writing frames by hand to a real :class:`H2ServerProtocol`."""

    def __init__(
        self,
        target: object | None = None,
        limits: Limits | None = None,
        *,
        handshake: bool = True,
    ) -> None:
        self.target = target if target is not None else EchoTarget()
        self.clock = MemoryReactorClock()
        self.server = H2ServerProtocol(
            self.target,  # type: ignore[arg-type]
            limits or Limits(),
            scheme=b"https",
            reactor=self.clock,
        )
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 40000))
        self.encoder = Encoder()
        self._read = b""
        self._seen = 0
        self.server.makeConnection(self.transport)
        if handshake:
            self.send_raw(PREFACE + SettingsFrame(0).serialize())
            ack = SettingsFrame(0)
            ack.flags.add("ACK")
            self.send(ack)
            self.new_frames()

    # --- sending --------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def send(self, *frames: Frame) -> None:
        """All ``frames`` in one read."""
        self.send_raw(b"".join(frame.serialize() for frame in frames))

    def headers(
        self,
        stream_id: int,
        headers: Headers | None = None,
        *,
        end_stream: bool = True,
        block: bytes | None = None,
        end_headers: bool = True,
    ) -> HeadersFrame:
        """A HEADERS frame: ``headers`` through the client's HPACK encoder (validated
        by nobody), or ``block`` as literal HPACK bytes."""
        frame = HeadersFrame(stream_id)
        frame.data = block if block is not None else self.encoder.encode(
            headers if headers is not None else request()
        )
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def continuation(stream_id: int, block: bytes, *, end_headers: bool = True) -> Frame:
        frame = ContinuationFrame(stream_id)
        frame.data = block
        if end_headers:
            frame.flags.add("END_HEADERS")
        return frame

    @staticmethod
    def data(stream_id: int, data: bytes = b"", *, end_stream: bool = False) -> DataFrame:
        frame = DataFrame(stream_id)
        frame.data = data
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    @staticmethod
    def settings(values: dict[int, int]) -> SettingsFrame:
        frame = SettingsFrame(0)
        frame.settings = dict(values)
        return frame

    # --- reading --------------------------------------------------------------------

    def all_frames(self) -> list[Frame]:
        self._read += self.transport.value()
        self.transport.clear()
        return parse_frames(self._read)

    def new_frames(self) -> list[Frame]:
        """The frames the server wrote since the last call."""
        frames = self.all_frames()
        fresh, self._seen = frames[self._seen :], len(frames)
        return fresh

    def goaway(self) -> GoAwayFrame | None:
        goaways = [f for f in self.all_frames() if isinstance(f, GoAwayFrame)]
        return goaways[-1] if goaways else None

    def resets(self, stream_id: int) -> list[int]:
        return [
            f.error_code
            for f in self.all_frames()
            if isinstance(f, RstStreamFrame) and f.stream_id == stream_id
        ]

    def status(self, stream_id: int) -> bytes | None:
        """The :status of the first response HEADERS on ``stream_id`` (decoded with a
        fresh decoder over every HEADERS the server sent, in order)."""
        from hpack import Decoder

        decoder = Decoder()
        found: bytes | None = None
        for frame in self.all_frames():
            if isinstance(frame, HeadersFrame):
                fields = dict(decoder.decode(frame.data, raw=True))
                if frame.stream_id == stream_id and found is None:
                    status = fields.get(b":status")
                    if status is not None and not status.startswith(b"1"):
                        found = status
        return found

    def outcome(self, stream_id: int) -> Any:
        """What happened to ``stream_id``: ("goaway", code), ("reset", code),
        ("status", status) or None."""
        goaway = self.goaway()
        if goaway is not None and goaway.error_code != ErrorCodes.NO_ERROR:
            return ("goaway", ErrorCodes(goaway.error_code))
        resets = self.resets(stream_id)
        if resets and resets[0] != ErrorCodes.NO_ERROR:
            return ("reset", ErrorCodes(resets[0]))
        status = self.status(stream_id)
        return None if status is None else ("status", int(status))


# --- HPACK by hand (RFC 7541) -----------------------------------------------------------


def hpack_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 section 5.1: ``value`` with an N-bit prefix, ``first`` the flag bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_indexed(index: int) -> bytes:
    """Section 6.1: an indexed header field."""
    return hpack_integer(index, 7, 0x80)


def hpack_literal(name: bytes, value: bytes, *, raw_value: bytes | None = None) -> bytes:
    """Section 6.2.2: a literal without indexing, new name; ``raw_value`` replaces the
    encoded value string (length prefix included) when given."""
    encoded_value = raw_value if raw_value is not None else (
        hpack_integer(len(value), 7) + value
    )
    return b"\x00" + hpack_integer(len(name), 7) + name + encoded_value


def hpack_size_update(size: int) -> bytes:
    """Section 6.3: a dynamic table size update."""
    return hpack_integer(size, 5, 0x20)


# --- table-driven cases ------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One conformance case: what the client sends on stream 1 and what the RFC wants.

    ``expect`` is ("goaway", code), ("reset", code) or ("status", status) -- see
    :meth:`RawClient.outcome`.  ``h2spec`` names the h2spec case it rebuilds, if any.
    """

    name: str
    section: str
    send: Callable[[RawClient], None]
    expect: tuple[str, int]
    h2spec: str = ""


def install_cases(namespace: dict[str, Any], cases: list[Case]) -> None:
    """Add one ``test_<name>`` method per case to a TestCase class body's namespace.

    Each test sends the case on a fresh connection and asserts the reaction; after a
    stream error or a response, the same connection must still serve a request.
    """
    for case in cases:
        namespace[f"test_{case.name}"] = _make_test(case)


def _make_test(case: Case) -> Callable[[Any], None]:
    def test(self: Any) -> None:
        client = RawClient()
        case.send(client)
        self.assertEqual(client.outcome(1), case.expect, client.all_frames())
        if case.expect[0] == "goaway":
            self.assertTrue(client.transport.disconnecting)
            return
        client.send(client.headers(3, request()))
        self.assertEqual(client.status(3), b"200", "the connection no longer serves")

    label = f" (h2spec {case.h2spec})" if case.h2spec else ""
    test.__doc__ = f"{case.section}{label}: {case.name.replace('_', ' ')} -> {case.expect[0]}."
    test.__name__ = f"test_{case.name}"
    return test
