# -*- test-case-name: tests.test_websocket -*-
"""WebSockets through ``/api``: the handshake's header rules and a frame-header scanner.

Core module: imports the standard library and eventgw's other core modules only --
never ``twisted``, ``grpc``, ``txaio``, ``socket`` or a clock.

The gateway relays a WebSocket without decoding it: frames pass as bytes, masked as
the client masked them.  It reads only what it needs:

* the opening handshake (RFC 6455 section 4): :func:`handshake_problem` checks the
  client's request, :func:`upstream_handshake_headers` builds the HTTP/1.1 upgrade
  request to the Master API with the same forwarding headers as any ``/api`` request
  (:mod:`eventgw.headers`); an HTTP/2 client (RFC 8441 extended CONNECT) sends no
  ``Sec-WebSocket-Key``, so the gateway makes one and checks the Master API's
  ``Sec-WebSocket-Accept`` itself (:func:`accept_key`); :func:`downstream_accept_headers`
  is what the client gets with the ``101`` (HTTP/1.1) or ``200`` (HTTP/2);
* the frame headers (RFC 6455 section 5.2), in :class:`FrameScanner`: a message (a
  data frame and its continuations) larger than the limit is stopped before its
  header passes, and both sides get a Close frame with 1009 (message too big).  The
  scanner holds at most one incomplete frame header (13 bytes); payloads are never
  copied.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Final

from eventgw.exchange import Headers, RequestHead
from eventgw.headers import request_headers_for_upstream, response_headers_for_downstream

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_PROTOCOL_ERROR",
    "VERSION",
    "FrameScanner",
    "accept_key",
    "close_frame",
    "downstream_accept_headers",
    "handshake_problem",
    "new_key",
    "upstream_handshake_headers",
]

#: RFC 6455 section 1.3: the GUID appended to the key for ``Sec-WebSocket-Accept``.
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: The only protocol version (``Sec-WebSocket-Version``) there is.
VERSION: Final = b"13"

#: Close codes (RFC 6455 section 7.4.1).
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_MESSAGE_TOO_BIG: Final = 1009

# Control frames (opcode 0x8 and above) carry at most 125 bytes (section 5.5).
_MAX_CONTROL_PAYLOAD: Final = 125
_CONTINUATION: Final = 0x0


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(key.strip() + _GUID, usedforsecurity=False).digest()
    return base64.b64encode(digest)


def new_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes in base64."""
    return base64.b64encode(os.urandom(16))


def handshake_problem(head: RequestHead) -> str | None:
    """What is wrong with a client's opening handshake, or ``None``.

    HTTP/1.1 needs a ``Sec-WebSocket-Key`` of 16 bytes in base64; both protocols need
    ``Sec-WebSocket-Version: 13`` (section 4.2.1).
    """
    if head.protocol != "HTTP/2":
        key = head.header(b"sec-websocket-key")
        try:
            decoded = base64.b64decode(key or b"", validate=True)
        except ValueError:
            decoded = b""
        if len(decoded) != 16:
            return "a WebSocket handshake needs a Sec-WebSocket-Key of 16 bytes"
    if (head.header(b"sec-websocket-version") or b"").strip() != VERSION:
        return "a WebSocket handshake needs Sec-WebSocket-Version: 13"
    return None


def upstream_handshake_headers(
    head: RequestHead, key: bytes | None
) -> Headers:
    """The headers of the HTTP/1.1 upgrade request to the Master API.

    The client's end-to-end headers (``Sec-WebSocket-Protocol``, ``Origin``, cookies,
    trace headers...) with ``X-Forwarded-*`` as on every ``/api`` request, then
    ``Upgrade`` and ``Connection``; ``key`` replaces the client's key (HTTP/2 clients
    send none).
    """
    headers = request_headers_for_upstream(
        head.headers, peer=head.peer, authority=head.authority, scheme=head.scheme
    )
    if key is not None:
        headers = [item for item in headers if item[0] != b"sec-websocket-key"]
        headers.append((b"sec-websocket-key", key))
    headers.append((b"upgrade", b"websocket"))
    headers.append((b"connection", b"upgrade"))
    return headers


def downstream_accept_headers(
    headers: Headers, *, http2: bool, key: bytes | None
) -> Headers | str:
    """The headers the client gets when the Master API accepted (its ``101``), or
    why the acceptance is not valid (the text of a 502).

    :param key: the key the gateway sent in the client's place (HTTP/2), whose
        ``Sec-WebSocket-Accept`` it checks; ``None`` when the client sent its own.
    """
    upgrade = b""
    accept = b""
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"sec-websocket-accept":
            accept = value.strip()
    if upgrade.strip().lower() != b"websocket":
        return "the upstream switched to a protocol other than websocket"
    if key is not None and accept != accept_key(key):
        return "the upstream's Sec-WebSocket-Accept does not match"
    kept = response_headers_for_downstream(headers)
    if http2:
        # RFC 8441 section 5: no Sec-WebSocket-Key/Accept over HTTP/2.
        kept = [item for item in kept if item[0] != b"sec-websocket-accept"]
    return kept


def close_frame(code: int, reason: str = "", *, masked: bool) -> bytes:
    """A Close frame with ``code`` (``masked`` for the client-to-server direction)."""
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[: _MAX_CONTROL_PAYLOAD - 2]
    if not masked:
        return bytes((0x88, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x88, 0x80 | len(payload))) + mask + body


class FrameScanner:
    """Follows the frame headers of one direction of a WebSocket.

    :meth:`feed` returns the bytes that may pass on.  A frame header is passed only
    once it is complete, so the scanner can stop a frame before any of it went out.

    :ivar violation: ``None``, or the close code and reason once a frame broke a rule
        (then nothing more passes).
    :ivar at_boundary: whether the bytes passed so far end between two frames (a
        Close frame may be sent in this direction).
    """

    __slots__ = ("_held", "_max_message", "_message", "_remaining", "violation")

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._held = b""
        self._remaining = 0
        self._message = 0  # bytes of the data message in progress (its frames so far)
        self.violation: tuple[int, str] | None = None

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._held

    def feed(self, data: bytes) -> bytes:
        """The part of ``data`` (and of what was held before it) that may pass."""
        if self.violation is not None:
            return b""
        buf = self._held + data if self._held else data
        self._held = b""
        pos = 0
        size = len(buf)
        while pos < size:
            remaining = self._remaining
            if remaining:
                step = min(remaining, size - pos)
                self._remaining = remaining - step
                pos += step
                continue
            if size - pos < 2:
                self._held = buf[pos:]
                return buf[:pos]
            first, second = buf[pos], buf[pos + 1]
            short = second & 0x7F
            extended = 2 if short == 126 else 8 if short == 127 else 0
            header = 2 + extended + (4 if second & 0x80 else 0)
            if size - pos < header:
                self._held = buf[pos:]
                return buf[:pos]
            if extended:
                length = int.from_bytes(buf[pos + 2 : pos + 2 + extended], "big")
            else:
                length = short
            opcode = first & 0x0F
            if opcode >= 0x8:
                if length > _MAX_CONTROL_PAYLOAD or not first & 0x80:
                    self.violation = (CLOSE_PROTOCOL_ERROR, "invalid control frame")
                    return buf[:pos]
            else:
                message = (self._message if opcode == _CONTINUATION else 0) + length
                if message > self._max_message:
                    self.violation = (
                        CLOSE_MESSAGE_TOO_BIG,
                        f"message larger than {self._max_message} bytes",
                    )
                    return buf[:pos]
                self._message = 0 if first & 0x80 else message
            pos += header
            self._remaining = length
        return buf
