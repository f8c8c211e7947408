# -*- test-case-name: tests.test_grpcweb -*-
"""gRPC-Web on the wire (gRPC's ``PROTOCOL-WEB.md``): what differs from native gRPC.

Core module: imports the standard library and eventgw's other core modules only --
never ``twisted``, ``grpc``, ``txaio``, ``socket`` or a clock.

A gRPC-Web call is a native gRPC call with three changes, all undone or redone here:

* the content type: ``application/grpc-web`` / ``application/grpc-web+proto`` (binary)
  or ``application/grpc-web-text`` / ``application/grpc-web-text+proto`` (base64);
  :func:`flavour_of` tells them apart and :func:`native_content_type` /
  :func:`web_content_type` map them to ``application/grpc(+proto)`` and back;
* the trailers: browsers cannot read HTTP trailers, so the response's trailers travel
  as the body's last length-prefixed frame, its flag byte ``0x80``, holding lower-case
  ``name: value\\r\\n`` lines (:func:`trailers_frame`, read back by
  :func:`parse_trailers_frame`); a trailers-only answer stays in the headers;
* the text flavour: request and response bodies are base64.  Each side may pad every
  chunk it sends on its own, so a stream is a run of 4-character quanta in which
  ``=`` may end any quantum, not only the last.  :class:`Base64Decoder` follows that
  across arbitrary read boundaries; :func:`encode_text_chunk` pads each chunk the
  gateway sends, so a streamed message is never held back waiting for the next one.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable
from typing import Final

from eventgw.exchange import Headers
from eventgw.grpcwire import CONTENT_TYPE, MessageDecoder

__all__ = [
    "EXPOSE_HEADERS",
    "TRAILERS_FLAG",
    "WEB_CONTENT_TYPE",
    "Base64Decoder",
    "Flavour",
    "MalformedText",
    "encode_text_chunk",
    "expose_headers",
    "flavour_of",
    "native_content_type",
    "native_request_headers",
    "parse_trailers_frame",
    "split_frames",
    "trailers_frame",
    "web_content_type",
    "web_response_headers",
]

#: The content type of a gRPC-Web call (``+proto``, ``-text`` and ``-text+proto`` follow).
WEB_CONTENT_TYPE: Final = b"application/grpc-web"
_TEXT: Final = b"-text"

#: The flag byte of the frame that carries the trailers (the MSB of the flag byte).
TRAILERS_FLAG: Final = 0x80

#: What a browser script must be allowed to read on a gRPC-Web answer: the status
#: (a trailers-only answer carries it in the headers) and its details.
EXPOSE_HEADERS: Final = b"grpc-status, grpc-message, grpc-status-details-bin"
_EXPOSED: Final = (b"grpc-status", b"grpc-message", b"grpc-status-details-bin")


class Flavour(enum.Enum):
    """The two gRPC-Web body encodings (the metric and access-log label too)."""

    BINARY = "binary"
    TEXT = "text"


class MalformedText(ValueError):
    """A ``grpc-web-text`` body that is not base64."""


def flavour_of(content_type: bytes) -> Flavour | None:
    """The flavour of a gRPC-Web content type, ``None`` for anything else.

    ``application/grpc-web``, ``...grpc-web+proto``, ``...grpc-web-text``,
    ``...grpc-web-text+proto``, each optionally followed by ``;`` parameters.
    """
    value = content_type.strip().lower()
    if not value.startswith(WEB_CONTENT_TYPE):
        return None
    rest = value[len(WEB_CONTENT_TYPE) :]
    flavour = Flavour.BINARY
    if rest.startswith(_TEXT):
        flavour = Flavour.TEXT
        rest = rest[len(_TEXT) :]
    if rest[:1] in (b"", b"+", b";"):
        return flavour
    return None


def _suffix(content_type: bytes) -> bytes:
    """What follows ``grpc-web`` / ``grpc-web-text``: ``b""``, ``b"+proto"``, ``b";..."``."""
    value = content_type.strip()
    rest = value[len(WEB_CONTENT_TYPE) :]
    if rest[: len(_TEXT)].lower() == _TEXT:
        rest = rest[len(_TEXT) :]
    return rest


def native_content_type(content_type: bytes) -> bytes:
    """The native gRPC content type for a gRPC-Web one
    (``application/grpc-web-text+proto`` -> ``application/grpc+proto``)."""
    return CONTENT_TYPE + _suffix(content_type)


def web_content_type(native: bytes | None, flavour: Flavour) -> bytes:
    """The gRPC-Web content type for a native response's (``application/grpc+proto``
    -> ``application/grpc-web+proto``, or ``-text+proto`` for the text flavour)."""
    base = WEB_CONTENT_TYPE + (_TEXT if flavour is Flavour.TEXT else b"")
    if native is None or not native.startswith(CONTENT_TYPE):
        return base
    return base + native[len(CONTENT_TYPE) :]


def expose_headers(headers: Headers) -> Headers:
    """``headers`` with the gRPC status headers in ``access-control-expose-headers``:
    added to a value that is there (each name once), or as a header of its own."""
    out: Headers = []
    merged = False
    for name, value in headers:
        if name == b"access-control-expose-headers" and not merged:
            merged = True
            present = {token.strip().lower() for token in value.split(b",")}
            missing = [token for token in _EXPOSED if token not in present]
            if b"*" not in present and missing:
                value = b", ".join([value.strip(), *missing]) if value.strip() else (
                    b", ".join(missing)
                )
        out.append((name, value))
    if not merged:
        out.append((b"access-control-expose-headers", EXPOSE_HEADERS))
    return out


# --- the trailers frame --------------------------------------------------------------


def trailers_frame(trailers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The body's last frame: flag ``0x80``, length, ``name: value\\r\\n`` lines."""
    block = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in trailers)
    return bytes((TRAILERS_FLAG,)) + len(block).to_bytes(4, "big") + block


def parse_trailers_frame(block: bytes) -> Headers:
    """The header list in a trailers frame's payload (names lower-case; lines without
    a colon are skipped, as a tolerant reader does)."""
    out: Headers = []
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            out.append((name.strip().lower(), value.strip()))
    return out


def split_frames(body: bytes) -> tuple[list[bytes], Headers | None]:
    """A whole binary gRPC-Web response body as its messages and its trailers
    (``None`` when there is no trailers frame).  For tests and tools."""
    messages: list[bytes] = []
    trailers: Headers | None = None
    for message in MessageDecoder().feed(body):
        if message.flag & TRAILERS_FLAG:
            trailers = parse_trailers_frame(message.data)
        else:
            messages.append(message.data)
    return messages, trailers


# --- the text flavour ------------------------------------------------------------------


def encode_text_chunk(data: bytes) -> bytes:
    """One response chunk of the text flavour: ``data`` in base64, padded on its own."""
    return binascii.b2a_base64(data, newline=False)


_WHITESPACE: Final = (b" ", b"\r", b"\n", b"\t")


class Base64Decoder:
    """Decodes a base64 stream whose sender may have padded each chunk on its own.

    Input arrives in arbitrary pieces; whole 4-character quanta are decoded as soon as
    they are complete, and at most three characters wait for the rest of theirs.
    Whitespace (which some clients insert at line ends) is skipped.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    @property
    def at_boundary(self) -> bool:
        """Whether everything fed so far has been decoded (no partial quantum)."""
        return not self._pending

    def feed(self, text: bytes) -> bytes:
        """The bytes decoded from ``text`` and what was waiting before it.

        :raises MalformedText: for characters outside base64, or ``=`` where a
            quantum cannot end.
        """
        data = self._pending + text
        if any(c in data for c in _WHITESPACE):
            data = b"".join(data.split())
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        if not usable:
            return b""
        whole = data[:usable]
        if b"=" not in whole[:-4]:
            return _decode(whole)
        # Padding inside the stream: decode quantum run by quantum run.
        out: list[bytes] = []
        start = 0
        while start < usable:
            pad = whole.find(b"=", start)
            if pad < 0:
                out.append(_decode(whole[start:]))
                break
            end = (pad // 4 + 1) * 4
            out.append(_decode(whole[start:end]))
            start = end
        return b"".join(out)

    def finish(self) -> None:
        """The stream ended.

        :raises MalformedText: when a quantum was left incomplete.
        """
        if self._pending:
            raise MalformedText("grpc-web-text body ends inside a base64 quantum")


def _decode(quanta: bytes) -> bytes:
    try:
        return binascii.a2b_base64(quanta, strict_mode=True)
    except binascii.Error as error:
        raise MalformedText(f"grpc-web-text body is not base64: {error}") from None



def native_request_headers(headers: Headers, flavour: Flavour) -> Headers:
    """The request headers of a gRPC-Web call as a native gRPC call's: the content
    type mapped, ``te: trailers`` (which gRPC requires and browsers cannot send), and
    for the text flavour no ``content-length`` (it counts base64 characters)."""
    out: Headers = []
    for name, value in headers:
        if name == b"content-type":
            out.append((name, native_content_type(value)))
        elif name == b"te" or (name == b"content-length" and flavour is Flavour.TEXT):
            continue
        else:
            out.append((name, value))
    out.append((b"te", b"trailers"))
    return out


def web_response_headers(headers: Headers, flavour: Flavour, *, cors: bool) -> Headers:
    """The headers of a native gRPC response (or trailers-only answer) for a gRPC-Web
    client: the content type mapped, no ``content-length`` (the trailers frame is
    added to the body), and with ``cors`` the status headers exposed to scripts."""
    out: Headers = []
    typed = False
    for name, value in headers:
        if name == b"content-type":
            typed = True
            out.append((name, web_content_type(value, flavour)))
        elif name == b"content-length":
            continue
        else:
            out.append((name, value))
    if not typed:
        out.insert(0, (b"content-type", web_content_type(None, flavour)))
    return expose_headers(out) if cors else out
