# -*- test-case-name: tests.test_h1client -*-
"""The HTTP/1.1 client codec: request heads and body framing out, response events in.

Core module: imports only the standard library and :mod:`eventgw.errors`.  It must not
import ``twisted``, ``grpc``, ``txaio`` or ``socket``, and never reads the clock.

Size: about 600 lines, the response-side mirror of the server's parser (status line,
headers, the three body framings, trailers), one state machine over one buffer.

One :class:`ClientConnection` lives as long as one upstream connection and serves its
requests one after the other (no pipelining).  Bytes go out as return values
(:meth:`~ClientConnection.send_request`, :meth:`~ClientConnection.send_body`,
:meth:`~ClientConnection.send_end`); bytes come in through
:meth:`~ClientConnection.receive_data` (``b""`` meaning the peer closed), and the caller
pulls events with :meth:`~ClientConnection.next_event` until it returns
:data:`NEED_DATA` -- the h11 shape, so back-pressure is the caller's to apply.

Theory of operation:

* Host: the request carries the *upstream's* authority in ``Host`` (nginx's
  ``proxy_set_header Host $proxy_host`` default); the client's own ``Host`` travels in
  ``X-Forwarded-Host`` (:mod:`eventgw.headers`).  An upstream with virtual hosts is
  addressed by the name configured for it, never by a name a client chose.
* Request framing: a known length is sent as ``content-length`` (omitted for an empty
  body on methods whose requests usually have none); an unknown length (a chunked
  HTTP/1.1 upload, an HTTP/2 stream without ``content-length``) as chunked.
* Response parsing is as strict as a server's request parsing: a bad status line, a
  header block over the limit, obs-fold, a header name that is not a token, NUL/CR/LF or
  other control bytes in a value, ``content-length`` together with
  ``transfer-encoding``, a malformed or repeated ``content-length``, or a transfer
  coding other than ``chunked`` all raise :class:`ResponseError` (the gateway answers
  502, and never forwards the garbage).  Only CRLF ends a line.
* Body framing follows RFC 9112 section 6.3: no body after a ``HEAD`` request or for
  1xx/204/304; else chunked (trailers kept), else ``content-length``, else the body
  runs until the connection closes.  Interim 1xx responses (``100 Continue``, ``103``)
  are skipped; ``101`` is an error unless the request asked to upgrade
  (``send_request(..., upgrade=True)``, a WebSocket handshake): then it is the
  response head, and every byte after it is :class:`Data` until the connection closes.
* Keep-alive: the connection is :attr:`~ClientConnection.reusable` only when the
  request was sent completely, the response was read completely, the response was
  HTTP/1.1 without ``Connection: close``, its body was not close-delimited, and no
  stray byte followed it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final, Literal

from eventgw.errors import ResponseError
from eventgw.headers import Headers

__all__ = [
    "MAX_CHUNK_LINE",
    "MAX_RESPONSE_HEAD",
    "NEED_DATA",
    "ClientConnection",
    "Data",
    "Ended",
    "Event",
    "LocalProtocolError",
    "ResponseHead",
]


# A response head (status line + headers), and separately the trailer block, may not
# exceed this: it bounds what one upstream can make the gateway buffer before a single
# byte is forwarded (nginx's proxy_buffer_size plays the same role, at 4-8 KiB).
MAX_RESPONSE_HEAD: Final = 64 * 1024

# A chunk-size line (size plus chunk extensions) longer than this is an attack, not a
# chunk header (h11 and Node bound it too).
MAX_CHUNK_LINE: Final = 4096

# 16 hex digits is 2**64: a larger chunk is no real chunk, and the bound keeps int()
# cheap.
_MAX_CHUNK_DIGITS: Final = 16

# 18 decimal digits is just under 10**18 bytes; longer content-length values are
# rejected rather than turned into huge integers.
_MAX_LENGTH_DIGITS: Final = 18

# Methods whose requests usually have no body: an empty body is sent without a
# content-length header (as curl and nginx do), everything else says "0".
_NO_BODY_METHODS: Final = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE"})

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([\t -~\x80-\xff]*))?")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The bytes of a token (RFC 9110 section 5.6.2), for bytes.translate checks.
_TOKEN_BYTES: Final = (
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
# Bytes allowed in a head besides CR and LF: HTAB, SP, VCHAR and obs-text (RFC 9110
# section 5.5).  bytes.translate deletes them, leaving only what needs a look.
_FIELD_BYTES: Final = bytes([9, *range(32, 127), *range(128, 256)])
_FRAMING_FIELDS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNK_SIZE: Final = re.compile(rb"[0-9a-fA-F]{1,%d}" % _MAX_CHUNK_DIGITS)
_DIGITS: Final = re.compile(rb"[0-9]{1,%d}" % _MAX_LENGTH_DIGITS)


class LocalProtocolError(Exception):
    """The caller used the codec wrongly (a body longer than declared, a request while
    another is in flight, a header value with CR/LF...)."""


class _NeedData(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`ClientConnection.next_event` when more bytes are needed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHead:
    """The final response's status line and headers were received.

    :ivar headers: as received (names lower-case), hop-by-hop ones included.
    :ivar has_body: ``False`` when :class:`Ended` follows at once (``HEAD``, 204, 304,
        ``content-length: 0``).
    """

    status: int
    reason: bytes
    headers: Headers
    http_version: bytes
    has_body: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    """A piece of the response body, de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Ended:
    """The response is complete; ``trailers`` holds a chunked body's trailer fields."""

    trailers: Headers


Event = ResponseHead | Data | Ended | Literal[_NeedData.NEED_DATA]


class _Read(enum.Enum):
    IDLE = "idle"  # no request in flight
    HEAD = "head"  # waiting for the status line and headers
    LENGTH = "length"  # content-length body
    CHUNK_SIZE = "chunk-size"
    CHUNK_DATA = "chunk-data"
    CHUNK_CRLF = "chunk-crlf"
    TRAILERS = "trailers"
    CLOSE = "close"  # body until the connection closes
    END = "end"  # body complete, Ended not yet returned
    DONE = "done"
    ERROR = "error"


class _Send(enum.Enum):
    IDLE = "idle"
    BODY = "body"
    DONE = "done"


_NO_TRAILERS: Final[Headers] = []


class ClientConnection:
    """One upstream connection's HTTP/1.1 state: at most one request in flight.

    Invariant: ``_buf[_pos:]`` holds received bytes not yet turned into events (parsing
    moves ``_pos`` instead of slicing, so many small chunks in one read cost one copy,
    not one copy each); after an error
    the connection is unusable (every call raises again) and must be closed.
    """

    __slots__ = (
        "_buf",
        "_chunked_out",
        "_eof",
        "_head_method",
        "_keep_alive",
        "_max_head",
        "_pos",
        "_read",
        "_received_any",
        "_remaining",
        "_scan",
        "_send",
        "_send_remaining",
        "_upgrade",
    )

    def __init__(self, *, max_head_bytes: int = MAX_RESPONSE_HEAD) -> None:
        self._max_head = max_head_bytes
        self._buf = b""
        self._pos = 0
        self._scan = 0
        self._eof = False
        self._read = _Read.IDLE
        self._send = _Send.IDLE
        self._head_method = False
        self._keep_alive = True
        self._remaining = 0
        self._send_remaining = 0
        self._chunked_out = False
        self._received_any = False
        self._upgrade = False

    # --- the request ------------------------------------------------------------

    def send_request(
        self,
        method: bytes,
        target: bytes,
        host: bytes,
        headers: Headers,
        *,
        content_length: int | None,
        upgrade: bool = False,
    ) -> bytes:
        """Start a request; return its serialized head.

        :param host: the ``Host`` value (the upstream's authority).
        :param headers: end-to-end headers only (see :mod:`eventgw.headers`): no
            ``host``, ``content-length`` or ``transfer-encoding``.
        :param content_length: the body's length, or ``None`` to send it chunked.
        :param upgrade: the request asks to switch protocols (the caller put the
            ``upgrade`` and ``connection`` headers in ``headers``): a ``101`` is its
            answer, after which the connection carries the new protocol.
        """
        if self._read is not _Read.IDLE or self._send is not _Send.IDLE:
            raise LocalProtocolError("a request is already in flight on this connection")
        if not _TOKEN.fullmatch(method) or not target or b" " in target:
            raise LocalProtocolError("invalid method or request target")
        lines = [b"%s %s HTTP/1.1" % (method, target), b"host: " + host]
        lines += [b": ".join(item) for item in headers]
        if content_length is None:
            lines.append(b"transfer-encoding: chunked")
            self._chunked_out = True
        else:
            self._chunked_out = False
            self._send_remaining = content_length
            if content_length or method not in _NO_BODY_METHODS:
                lines.append(b"content-length: %d" % content_length)
        lines.append(b"\r\n")
        head = b"\r\n".join(lines)
        # One C-speed scan instead of a check per value: every LF must be one of ours.
        # A CR, LF or NUL smuggled inside a name, value or target would otherwise split
        # the request (RFC 9112 section 11.2).
        newlines = len(lines)
        if (
            head.count(b"\n") != newlines
            or head.count(b"\r") != newlines
            or b"\0" in head
        ):
            raise LocalProtocolError("CR, LF or NUL in the request head")
        self._send = _Send.BODY if (content_length is None or content_length) else _Send.DONE
        self._head_method = method == b"HEAD"
        self._read = _Read.HEAD
        self._keep_alive = True
        self._received_any = False
        self._upgrade = upgrade
        return head

    def send_body(self, data: bytes) -> bytes:
        """Frame a piece of the request body."""
        if self._send is not _Send.BODY:
            raise LocalProtocolError("no request body expected now")
        if not data:
            return b""
        if self._chunked_out:
            return b"%x\r\n%s\r\n" % (len(data), data)
        if len(data) > self._send_remaining:
            raise LocalProtocolError("request body longer than its content-length")
        self._send_remaining -= len(data)
        return data

    def send_end(self, trailers: Headers | None = None) -> bytes:
        """Finish the request body (trailers are sent only when chunked)."""
        if self._send is _Send.DONE:
            return b""
        if self._send is not _Send.BODY:
            raise LocalProtocolError("no request body expected now")
        self._send = _Send.DONE
        if not self._chunked_out:
            if self._send_remaining:
                self._keep_alive = False
                raise LocalProtocolError("request body shorter than its content-length")
            return b""
        if not trailers:
            return b"0\r\n\r\n"
        block = b"".join([b"%s: %s\r\n" % item for item in trailers])
        if block.count(b"\n") != len(trailers) or block.count(b"\r") != len(trailers):
            raise LocalProtocolError("CR or LF in a request trailer")
        return b"0\r\n" + block + b"\r\n"

    @property
    def request_complete(self) -> bool:
        """Whether the whole request (head and body) has been serialized."""
        return self._send is _Send.DONE

    # --- the response -----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the upstream; ``b""`` means it closed the connection."""
        if not data:
            self._eof = True
            return
        self._received_any = True
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            self._buf = data
            self._scan = 0
        else:
            self._buf = buf[pos:] + data if pos else buf + data
            self._scan = max(0, self._scan - pos)
        self._pos = 0

    @property
    def received_any(self) -> bool:
        """Whether any byte arrived since the current request was started."""
        return self._received_any

    @property
    def response_complete(self) -> bool:
        """Whether the current response has been read to its end."""
        return self._read is _Read.DONE

    @property
    def idle(self) -> bool:
        """Whether no request has been started since the last cycle."""
        return (
            self._read is _Read.IDLE
            and self._send is _Send.IDLE
            and self._pos == len(self._buf)
        )

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection."""
        return (
            self._read is _Read.DONE
            and self._send is _Send.DONE
            and self._keep_alive
            and self._pos == len(self._buf)
            and not self._eof
        )

    def start_next_cycle(self) -> None:
        """Forget the finished exchange so the next request can be sent."""
        if not self.reusable:
            raise LocalProtocolError("this connection cannot be reused")
        self._read = _Read.IDLE
        self._send = _Send.IDLE

    def next_event(self) -> Event:
        """The next response event, or :data:`NEED_DATA`."""
        state = self._read
        if state is _Read.LENGTH:
            return self._read_length()
        if state is _Read.CHUNK_DATA or state is _Read.CHUNK_SIZE or state is _Read.CHUNK_CRLF:
            return self._read_chunked(state)
        if state is _Read.HEAD:
            return self._read_head()
        if state is _Read.END:
            self._read = _Read.DONE
            return Ended(trailers=_NO_TRAILERS)
        if state is _Read.TRAILERS:
            return self._read_trailers()
        if state is _Read.CLOSE:
            if self._pos < len(self._buf):
                data = self._buf[self._pos :] if self._pos else self._buf
                self._buf = b""
                self._pos = 0
                return Data(data=data)
            if self._eof:
                self._read = _Read.DONE
                return Ended(trailers=_NO_TRAILERS)
            return NEED_DATA
        if state is _Read.ERROR:
            raise ResponseError("the connection already failed")
        # IDLE or DONE: nothing is expected.  Stray bytes make the connection unusable
        # (reusable checks the buffer); nothing is returned for them.
        return NEED_DATA

    # --- response parsing, one method per state ---------------------------------------

    def _fail(self, message: str, *, no_response: bool = False) -> ResponseError:
        self._read = _Read.ERROR
        self._keep_alive = False
        return ResponseError(message, no_response=no_response)

    def _read_head(self) -> Event:
        while True:
            buf = self._buf
            pos = self._pos
            end = buf.find(b"\r\n\r\n", max(pos, self._scan))
            if end < 0:
                size = len(buf) - pos
                # Fail fast on garbage instead of waiting for a blank line that may
                # never come.
                if not buf.startswith(b"HTTP/"[:size], pos):
                    raise self._fail("invalid status line from upstream")
                if size > self._max_head:
                    raise self._fail("response head too large")
                if self._eof:
                    if not size:
                        raise self._fail(
                            "upstream closed the connection without a response",
                            no_response=not self._received_any,
                        )
                    raise self._fail("upstream closed the connection within the response head")
                self._scan = max(pos, len(buf) - 3)
                return NEED_DATA
            if end - pos > self._max_head:
                raise self._fail("response head too large")
            block = buf[pos:end]
            self._advance(end + 4)
            self._scan = 0
            head = self._parse_head(block)
            if head is not None:
                return head

    def _header_lines(self, block: bytes, what: str) -> Headers:
        """Parse ``name: value`` lines (CRLF-separated, no final CRLF)."""
        lines = block.split(b"\r\n")
        # What is left after deleting field bytes must be the line ends and nothing
        # else: no NUL or other control byte, no CR or LF outside a CRLF pair
        # (RFC 9112 section 2.2).  One C-speed pass instead of a regex per value.
        if block.translate(None, _FIELD_BYTES) != b"\r\n" * (len(lines) - 1):
            raise self._fail(f"control character in the response {what}")
        headers: Headers = []
        append = headers.append
        for line in lines:
            name, sep, value = line.partition(b":")
            # An obs-fold line (leading SP/HTAB), a space before the colon or a line
            # without a colon leaves a name that is not a token.
            if not sep or not name or name.translate(None, _TOKEN_BYTES):
                raise self._fail(f"malformed {what} line from upstream")
            append((name.lower(), value.strip(b" \t")))
        return headers

    def _parse_head(self, block: bytes) -> ResponseHead | None:
        line_end = block.find(b"\r\n")
        match = _STATUS_LINE.fullmatch(block if line_end < 0 else block[:line_end])
        if match is None:
            raise self._fail("invalid status line from upstream")
        minor, code, reason = match.groups()
        status = int(code)
        if status >= 600:
            raise self._fail("invalid status code from upstream")
        headers = [] if line_end < 0 else self._header_lines(block[line_end + 2 :], "head")
        length: bytes | None = None
        coding: bytes | None = None
        close = minor == b"0"
        for name, value in headers:
            if name not in _FRAMING_FIELDS:
                continue
            if name == b"content-length":
                if length is not None:
                    raise self._fail("duplicate content-length from upstream")
                if _DIGITS.fullmatch(value) is None:
                    raise self._fail("invalid content-length from upstream")
                length = value
            elif name == b"transfer-encoding":
                if coding is not None:
                    raise self._fail("duplicate transfer-encoding from upstream")
                coding = value
            else:
                tokens = {t.strip(b" \t") for t in value.lower().split(b",")}
                if b"close" in tokens:
                    close = True
                elif minor == b"0" and b"keep-alive" in tokens:
                    close = False
        if status == 101 and self._upgrade:
            # Switched: the rest of the connection is the new protocol's, read as a
            # body that runs until the connection closes.
            self._read = _Read.CLOSE
            self._keep_alive = False
            return ResponseHead(
                status=101,
                reason=reason or b"",
                headers=headers,
                http_version=b"HTTP/1." + minor,
                has_body=True,
            )
        if 100 <= status < 200:
            if status == 101:
                raise self._fail("unexpected 101 Switching Protocols from upstream")
            return None  # interim response: skip it, read the next head
        if length is not None and coding is not None:
            raise self._fail("content-length with transfer-encoding from upstream")
        version = b"HTTP/1." + minor
        if self._head_method or status == 204 or status == 304:
            self._read = _Read.END
            has_body = False
        elif coding is not None:
            if minor == b"0":
                raise self._fail("transfer-encoding in an HTTP/1.0 response")
            if coding.lower() != b"chunked":
                raise self._fail("unsupported transfer-encoding from upstream")
            self._read = _Read.CHUNK_SIZE
            has_body = True
        elif length is not None:
            self._remaining = int(length)
            has_body = self._remaining > 0
            self._read = _Read.LENGTH if has_body else _Read.END
        else:
            self._read = _Read.CLOSE
            close = True
            has_body = True
        if close:
            self._keep_alive = False
        return ResponseHead(
            status=status,
            reason=reason or b"",
            headers=headers,
            http_version=version,
            has_body=has_body,
        )

    def _advance(self, pos: int) -> None:
        """Mark ``_buf[:pos]`` consumed, dropping the buffer once all of it is."""
        if pos >= len(self._buf):
            self._buf = b""
            self._pos = 0
        else:
            self._pos = pos

    def _read_length(self) -> Event:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if not available:
            if self._eof:
                raise self._fail("upstream closed the connection within the response body")
            return NEED_DATA
        remaining = self._remaining
        if available <= remaining:
            data = buf[pos:] if pos else buf
            self._buf = b""
            self._pos = 0
            remaining -= available
        else:
            data = buf[pos : pos + remaining]
            self._pos = pos + remaining
            remaining = 0
        self._remaining = remaining
        if not remaining:
            self._read = _Read.END
        return Data(data=data)

    def _read_chunked(self, state: _Read) -> Event:
        """Decode as many chunks as the buffer holds into one :class:`Data`."""
        buf = self._buf
        pos = self._pos
        end_of_buf = len(buf)
        pieces: list[bytes] = []
        while True:
            if state is _Read.CHUNK_DATA:
                take = min(end_of_buf - pos, self._remaining)
                if not take:
                    break
                pieces.append(buf if take == end_of_buf else buf[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining:
                    break
                state = _Read.CHUNK_CRLF
            elif state is _Read.CHUNK_CRLF:
                if end_of_buf - pos < 2:
                    if pos < end_of_buf and buf[pos] != 13:
                        raise self._fail("chunk not followed by CRLF")
                    break
                if not buf.startswith(b"\r\n", pos):
                    raise self._fail("chunk not followed by CRLF")
                pos += 2
                state = _Read.CHUNK_SIZE
            else:
                end = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if end < 0:
                    if end_of_buf - pos >= MAX_CHUNK_LINE:
                        raise self._fail("chunk-size line too long")
                    break
                line = buf[pos:end]
                pos = end + 2
                size = line.split(b";", 1)[0].rstrip(b" \t")
                if _CHUNK_SIZE.fullmatch(size) is None or line.translate(None, _FIELD_BYTES):
                    raise self._fail("invalid chunk-size line from upstream")
                self._remaining = int(size, 16)
                if not self._remaining:
                    state = _Read.TRAILERS
                    break
                state = _Read.CHUNK_DATA
        self._read = state
        self._advance(pos)
        if pieces:
            return Data(data=pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if state is _Read.TRAILERS:
            return self._read_trailers()
        if self._eof:
            raise self._fail("upstream closed the connection within the response body")
        return NEED_DATA

    def _read_trailers(self) -> Event:
        buf = self._buf
        pos = self._pos
        if buf.startswith(b"\r\n", pos):
            self._advance(pos + 2)
            self._read = _Read.DONE
            return Ended(trailers=_NO_TRAILERS)
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            if len(buf) - pos > self._max_head:
                raise self._fail("response trailers too large")
            if self._eof:
                raise self._fail("upstream closed the connection within the trailers")
            return NEED_DATA
        block = buf[pos:end]
        self._advance(end + 4)
        trailers = self._header_lines(block, "trailers")
        self._read = _Read.DONE
        return Ended(trailers=trailers)
