"""Fuzz target: the downstream HTTP/2 server, fed a fuzzed frame sequence.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/h2_server.py -runs=1000000 \
        -dict=fuzz/h2.dict fuzz/corpus/h2_server

One :class:`~eventgw.downstream.h2server.H2ServerProtocol` per input, on a
``StringTransport`` with a ``Clock``, in front of a small in-memory target that answers
at once, after the body, with trailers, or not at all.  The client sends the valid
preface, then what the input describes, step by step (atheris' FuzzedDataProvider):
mostly well-formed frame headers with fuzzed types, flags, stream ids and payloads
(HEADERS and CONTINUATION payloads are usually valid HPACK of a fuzzed header list),
sometimes raw bytes; steps are grouped into reads, and the clock moves between some.

Invariants checked on every input:

* no exception escapes ``dataReceived`` (or the clock's timers);
* everything the server wrote parses as a sequence of whole HTTP/2 frames;
* once a GOAWAY is written, nothing follows it, and the transport is being closed.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["eventgw", "h2"]):
    from hpack import Encoder
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogBeginner

    from eventgw.config import Limits
    from eventgw.downstream.h2server import H2ServerProtocol
    from eventgw.exchange import Headers, RequestHead, ResponseWriter, StaticReply

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GOAWAY = 7
MAX_STEPS = 64

# Header names and values the fuzzer combines; the last name is replaced by a fuzzed one.
NAMES = [
    b":method", b":path", b":scheme", b":authority", b":protocol", b":status",
    b"content-type", b"content-length", b"te", b"connection", b"host", b"cookie",
    b"grpc-timeout", b"x-a", b"Upper", b"",
]
VALUES = [
    b"GET", b"POST", b"HEAD", b"CONNECT", b"/", b"/api/x?y=1", b"/events", b"*",
    b"https", b"http", b"gw.test", b"application/grpc", b"trailers", b"0", b"5",
    b"-1", b"keep-alive", b"a\x00b", b" x ", b"",
]


class Handler:
    """Answers according to the request path's last byte, once told to."""

    def __init__(self, head: RequestHead, writer: ResponseWriter) -> None:
        self.writer = writer
        self.mode = head.path[-1:] if head.path else b""
        self.body = 0

    def body_received(self, data: bytes) -> None:
        self.body += len(data)
        if self.mode == b"p":
            self.writer.pause_request_body()
        elif self.mode == b"w":
            if not self.writer.head_sent:
                self.writer.write_head(200, [])
            self.writer.write_body(b"x" * 70000)

    def body_ended(self, trailers: Headers) -> None:
        writer = self.writer
        if self.mode == b"n" or (writer.head_sent and self.mode == b"w"):
            return
        if self.mode == b"t":
            writer.write_head(200, [(b"content-type", b"application/grpc")])
            writer.write_body(b"\x00\x00\x00\x00\x01x")
            writer.end([(b"grpc-status", b"0")])
            return
        if self.mode == b"a":
            writer.abort()
            return
        writer.write_head(200, [(b"content-length", b"%d" % len(b"%d" % self.body))])
        writer.write_body(b"%d" % self.body)
        writer.end()

    def connection_lost(self, reason: str) -> None:
        pass


class Target:
    """Paths ending in ``s`` are answered at once; everything else gets a Handler."""

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> Any:
        if head.path.endswith(b"s"):
            writer.write_head(204, [], end=True)
            return StaticReply()
        return Handler(head, writer)


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame: 9-byte header and payload."""
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + (
        payload
    )


def header_list(fdp: Any) -> list[tuple[bytes, bytes]]:
    """A header list that is usually a plausible request, sometimes not."""
    headers: list[tuple[bytes, bytes]] = []
    if fdp.ConsumeIntInRange(0, 3):
        headers = [
            (b":method", fdp.PickValueInList([b"GET", b"POST", b"HEAD"])),
            (b":path", fdp.PickValueInList([b"/s", b"/e", b"/t", b"/p", b"/w", b"/n", b"/a"])),
            (b":scheme", b"https"),
            (b":authority", b"gw.test"),
        ]
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = fdp.PickValueInList(NAMES) or fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        value = fdp.PickValueInList(VALUES) or fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        headers.append((name, value))
    return headers


def payload_for(fdp: Any, kind: int, encoder: Encoder) -> bytes:
    """A payload that fits ``kind`` most of the time."""
    if not fdp.ConsumeIntInRange(0, 7):
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    if kind in (1, 9):
        return bytes(encoder.encode(header_list(fdp)))
    if kind == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40000 if fdp.ConsumeBool() else 64))
    if kind == 2:
        return fdp.ConsumeBytes(5)
    if kind == 3:
        return struct.pack(">I", fdp.ConsumeIntInRange(0, 14))
    if kind == 4:
        out = b""
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            out += struct.pack(">HI", fdp.ConsumeIntInRange(0, 9), fdp.ConsumeUInt(4))
        return out
    if kind == 6:
        return fdp.ConsumeBytes(8).ljust(8, b"\0")
    if kind == 7:
        return struct.pack(">II", fdp.ConsumeUInt(4) & 0x7FFFFFFF, fdp.ConsumeIntInRange(0, 14))
    if kind == 8:
        return struct.pack(">I", fdp.ConsumeUInt(4) & 0x7FFFFFFF)
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))


def step(fdp: Any, encoder: Encoder) -> bytes | float:
    """One step: bytes to send, or a number of seconds for the clock to move."""
    choice = fdp.ConsumeIntInRange(0, 15)
    if choice == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32))
    if choice == 1:
        return float(fdp.PickValueInList([0.5, 5, 31, 61, 301]))
    kind = fdp.ConsumeIntInRange(0, 10)
    flags = fdp.PickValueInList([0, 1, 4, 5, 8, 0x20, 0x25]) if fdp.ConsumeBool() else (
        fdp.ConsumeUInt(1)
    )
    stream_id = fdp.PickValueInList([0, 1, 1, 3, 5, 7, 2, 0x7FFFFFFF]) if fdp.ConsumeIntInRange(
        0, 3
    ) else fdp.ConsumeUInt(4)
    return frame(kind, flags, stream_id, payload_for(fdp, kind, encoder))


def frames_of(output: bytes) -> list[tuple[int, int, int, bytes]]:
    """Parse the server's output into (type, flags, stream, payload); assert it is whole."""
    frames = []
    at = 0
    while at < len(output):
        assert len(output) - at >= 9, ("partial frame header", output[at:])
        length = int.from_bytes(output[at : at + 3], "big")
        kind, flags, stream_id = struct.unpack(">BBI", output[at + 3 : at + 9])
        assert length <= 16384, ("frame larger than the default MAX_FRAME_SIZE", length)
        assert len(output) - at - 9 >= length, ("partial frame payload", output[at:])
        assert kind <= 9, ("unknown frame type written", kind)
        frames.append((kind, flags, stream_id & 0x7FFFFFFF, output[at + 9 : at + 9 + length]))
        at += 9 + length
    return frames


def check_output(transport: StringTransport) -> None:
    """The output invariants, for the bytes written so far."""
    frames = frames_of(transport.value())
    kinds = [kind for kind, _, _, _ in frames]
    if GOAWAY in kinds:
        assert kinds.index(GOAWAY) == len(kinds) - 1, ("frames after GOAWAY", kinds)
        assert transport.disconnecting or transport.disconnected, "GOAWAY without close"


def check(data: bytes) -> None:
    """Drive one connection with ``data``; raises AssertionError on a violation."""
    fdp = atheris.FuzzedDataProvider(data)
    clock = Clock()
    transport = StringTransport()
    server = H2ServerProtocol(Target(), Limits(), scheme=b"https", reactor=clock)  # type: ignore[arg-type]
    server.makeConnection(transport)
    encoder = Encoder()
    pending = PREFACE
    for _ in range(MAX_STEPS):
        if not fdp.remaining_bytes():
            break
        item = step(fdp, encoder)
        if isinstance(item, bytes):
            pending += item
            if fdp.ConsumeIntInRange(0, 2):
                continue  # more steps into the same read
        server.dataReceived(pending)
        pending = b""
        if isinstance(item, float):
            clock.advance(item)
        check_output(transport)
    if pending:
        server.dataReceived(pending)
    clock.advance(1000)
    check_output(transport)


def main() -> None:
    globalLogBeginner.beginLoggingTo([lambda event: None], redirectStandardIO=False)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
