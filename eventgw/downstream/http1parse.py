# -*- test-case-name: tests.test_http1parse -*-
"""The HTTP/1.1 request parser: request bytes in, request events out.

Core module: imports only the standard library and ``eventgw.errors``; it must never
import ``twisted``, ``grpc``, ``txaio`` or ``socket``, and never reads the clock.

This module also holds the types both halves of the HTTP/1.1 codec share: the
:data:`Headers` field list, :class:`RequestError` and :class:`RequestHeadParsed`.  The
response half -- framing decisions and serialization -- is
:mod:`eventgw.downstream.http1frame`.

Size: a little over 600 lines, most of them the smuggling defences -- one reader per
framing rule of RFC 9112, each with the reason it refuses what it refuses.  They are
one state machine over one buffer; splitting them would only spread that state.

Theory of operation
===================

:class:`RequestParser` has an h11-style pull API.  :meth:`RequestParser.receive_data`
only buffers; :meth:`RequestParser.next_event` returns one event at a time --
:class:`RequestHeadParsed`, then any number of :class:`BodyData`, then
:class:`MessageEnded` -- or :data:`NEED_DATA` when the buffer holds no complete event.
After :class:`MessageEnded` it returns :data:`PAUSED` until the caller has finished the
response and calls :meth:`RequestParser.start_next`, so pipelined requests are handled
strictly one at a time and the caller decides when to read on (back-pressure).

The parser is deliberately strict.  A gateway that reads a request one way while the
upstream reads it another is a request-smuggling vector (RFC 9112 section 11.2), so
every ambiguity in the framing is an error rather than a guess:

* line endings must be CRLF; a bare CR or LF anywhere in the head is a 400
  (RFC 9112 section 2.2 allows accepting bare LF; we don't);
* obs-fold, whitespace between a field name and its colon, invalid token characters in
  names, and control characters (NUL, CR, LF...) in values are 400 (RFC 9112 sections
  5.1, 5.2; RFC 9110 section 5.5);
* ``Content-Length`` must be one field holding only digits; duplicates, even identical
  ones, and lists are 400 (RFC 9110 section 8.6 permits folding identical values; being
  stricter closes the CL.CL class of attacks);
* ``Transfer-Encoding`` must be exactly ``chunked`` (case-insensitive); with
  ``Content-Length`` too, more than once, on HTTP/1.0, or with ``chunked`` not last it is a
  400 (RFC 9112 sections 6.1, 6.3); a well-formed list of other codings ending in
  ``chunked`` is 501 (we decode no other coding);
* an HTTP/1.1 request needs exactly one ``Host`` (RFC 9112 section 3.2);
* chunk sizes are 1 to 16 hex digits, chunk lines and extensions are bounded, and the
  CRLF after chunk data is required (RFC 9112 section 7.1).

Errors raise :class:`RequestError`, which carries the HTTP status to answer with; the
parser stays broken afterwards (every later call raises the same error), because after
a framing error nothing later on the connection can be trusted.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from eventgw.errors import RequestError
from eventgw.headers import Headers

__all__ = [
    "MAX_CHUNK_EXTENSION_BYTES",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_CONTENT_LENGTH_DIGITS",
    "MAX_HEADER_COUNT",
    "MAX_REQUEST_LINE_BYTES",
    "NEED_DATA",
    "PAUSED",
    "BodyData",
    "Event",
    "Headers",
    "MessageEnded",
    "RequestHeadParsed",
    "RequestParser",
    "Signal",
]


# A request line longer than this is answered with 414.  8 KiB is what nginx
# (large_client_header_buffers) and most servers allow; longer URLs are not portable.
MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
# The request line of the HTTP/2 connection preface (RFC 9113 section 3.4).
_PREFACE_LINE: Final = b"PRI * HTTP/2.0"

# More header fields than this is a 431 even when they fit in max_header_bytes: every
# field costs a tuple and a validation, and no real client sends hundreds.
MAX_HEADER_COUNT: Final = 256

# A chunk-size line (size plus extensions) longer than this is a 400: extensions carry
# nothing we use, and an unbounded line is unbounded buffering.
MAX_CHUNK_LINE_BYTES: Final = 4 * 1024

# Total chunk-extension bytes accepted per message.  Tiny chunks with long extensions
# make a cheap-to-send, expensive-to-parse body (cf. CVE-2023-39326 in Go's net/http).
MAX_CHUNK_EXTENSION_BYTES: Final = 16 * 1024

# Content-Length values longer than this many digits are a 400 (10**18 bytes is far
# beyond any limit, and it keeps int() on attacker input cheap).  The response side
# applies the same bound to a handler's content-length.
MAX_CONTENT_LENGTH_DIGITS: Final = 18


class Signal(enum.Enum):
    """What :meth:`RequestParser.next_event` returns when there is no event."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


NEED_DATA: Final = Signal.NEED_DATA
PAUSED: Final = Signal.PAUSED


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHeadParsed:
    """A complete, validated request head.

    :ivar method: the method token, case kept (``b"GET"``).
    :ivar target: the request target in origin-form (``/path?query``) or ``b"*"``; an
        absolute-form target is reduced to its path and query.
    :ivar version: ``b"HTTP/1.1"`` or ``b"HTTP/1.0"``.
    :ivar headers: all fields in arrival order, names lower-case, values trimmed.
    :ivar content_length: the body length; ``0`` when the request has no body, ``None``
        when the body is chunked.
    :ivar chunked: whether the body uses the chunked transfer coding.
    :ivar keep_alive: whether the connection may serve another request afterwards.
    :ivar expect_continue: an HTTP/1.1 ``Expect: 100-continue`` was sent.
    :ivar host: the authority (absolute-form target, else ``Host``), ``b""`` if none.
    :ivar accepts_trailers: the client sent ``TE: trailers``.
    :ivar upgrade: ``b"websocket"`` for a WebSocket opening handshake (RFC 6455
        section 4.1: an HTTP/1.1 ``GET`` without a body, ``Upgrade: websocket`` and
        ``upgrade`` among the ``Connection`` options), else ``None``.  Other upgrades
        are not offered: the request is served as if ``Upgrade`` were absent.  Once
        the target accepts, the bytes after the head belong to the new protocol
        (:meth:`RequestParser.take_tunnel_bytes`).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    host: bytes
    accepts_trailers: bool = False
    upgrade: bytes | None = None


@dataclass(frozen=True, slots=True)
class BodyData:
    """A piece of the request body, already de-chunked."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnded:
    """The request body is complete; ``trailers`` holds chunked trailer fields."""

    trailers: Headers


Event = RequestHeadParsed | BodyData | MessageEnded


class _State(enum.Enum):
    HEAD = enum.auto()
    BODY = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_DATA_END = enum.auto()
    TRAILERS = enum.auto()
    DONE = enum.auto()
    TUNNEL = enum.auto()  # an upgrade was accepted: the rest is not HTTP
    ERROR = enum.auto()


# tchar (RFC 9110 section 5.6.2).
_TOKEN_RE: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than HTAB, CR and LF (those are checked by counting lines).
_CTL_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Visible ASCII except "#" (a fragment is never part of a request target).
_TARGET_RE: Final = re.compile(rb"[!\"$-~]+")
_VERSION_RE: Final = re.compile(rb"HTTP/[0-9]\.[0-9]")
# uri-host [ ":" port ], reg-name or IP-literal (RFC 3986 section 3.2.2), loosely.
_HOST_RE: Final = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%\[\]:]*")
_HEX_RE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Validated field names -> lower-case form.  Most requests repeat the same dozen names,
# and a dict hit is several times cheaper than the regex plus lower().
_NAME_CACHE: dict[bytes, bytes] = {}
_NAME_CACHE_MAX: Final = 1024

_SPECIAL: Final = frozenset(
    (
        b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"te",
        b"upgrade",
    )
)

# Fields a trailer section may not carry: framing, routing, connection management
# (RFC 9110 section 6.5.1).  They are dropped rather than passed on.
_FORBIDDEN_TRAILERS: Final = frozenset(
    (
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"content-type",
        b"content-encoding",
        b"content-range",
    )
)


def _lower_name(name: bytes) -> bytes:
    lowered = _NAME_CACHE.get(name)
    if lowered is not None:
        return lowered
    if _TOKEN_RE.fullmatch(name) is None:
        raise RequestError("invalid header field name")
    lowered = name.lower()
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = lowered
    return lowered


def _check_lines(block: bytes, lines: list[bytes]) -> None:
    """Reject control characters and any CR or LF that is not part of a CRLF."""
    if _CTL_RE.search(block) is not None:
        raise RequestError("control character in request head")
    separators = len(lines) - 1
    if block.count(b"\n") != separators or block.count(b"\r") != separators:
        raise RequestError("bare CR or LF in request head")


def _parse_fields(lines: list[bytes], start: int, headers: Headers) -> None:
    """Append ``name: value`` lines from ``lines[start:]`` to ``headers``."""
    append = headers.append
    cached = _NAME_CACHE.get
    for index in range(start, len(lines)):
        line = lines[index]
        if line[0] in (0x20, 0x09):
            raise RequestError("obsolete line folding in header")
        name, colon, value = line.partition(b":")
        if not colon:
            raise RequestError("header line without colon")
        lowered = cached(name)
        if lowered is None:
            lowered = _lower_name(name)
        append((lowered, value.strip(b" \t")))


def _split_tokens(value: bytes) -> list[bytes]:
    return [part.strip(b" \t").lower() for part in value.split(b",")]


class RequestParser:
    """Turns the bytes of one HTTP/1.x connection into request events.

    Invariant: the buffer holds only bytes not yet returned as events; in state
    ``DONE`` nothing is parsed until :meth:`start_next`; in state ``ERROR`` every call
    re-raises the error that broke the connection.

    :param max_header_bytes: the largest request head (request line and fields, and
        separately the trailer section) accepted; beyond it, 431.
    :param max_body_bytes: the largest body accepted (declared or chunked), or ``None``
        for no limit; beyond it, 413.
    """

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_error",
        "_ext_budget",
        "_max_body",
        "_max_header",
        "_received_body",
        "_remaining",
        "_scan_from",
        "_state",
        "consumed",
    )

    def __init__(self, max_header_bytes: int, max_body_bytes: int | None = None) -> None:
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._buf = bytearray()
        self._state = _State.HEAD
        self._scan_from = 0
        self._remaining = 0
        self._chunk_left = 0
        self._received_body = 0
        self._ext_budget = MAX_CHUNK_EXTENSION_BYTES
        self._error: RequestError | None = None
        #: Bytes of the stream consumed by events so far (for access-log byte counts).
        self.consumed = 0

    # -- input ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the connection; parses nothing by itself."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many received bytes no event has consumed yet."""
        return len(self._buf)

    @property
    def waiting_for_head(self) -> bool:
        """Whether the parser is between messages, waiting for a request head."""
        return self._state is _State.HEAD

    @property
    def remaining_body(self) -> int | None:
        """Body bytes still to come for a Content-Length body, ``None`` if chunked,
        ``0`` when not inside a body."""
        if self._state is _State.BODY:
            return self._remaining
        if self._state in (_State.CHUNK_SIZE, _State.CHUNK_DATA, _State.CHUNK_DATA_END,
                           _State.TRAILERS):
            return None
        return 0

    def start_next(self) -> None:
        """The response to the last message is done: parse the next request."""
        if self._state is _State.ERROR:
            assert self._error is not None
            raise self._error
        if self._state is not _State.DONE:
            raise RuntimeError("start_next() before the request body ended")
        self._state = _State.HEAD
        self._scan_from = 0

    def take_tunnel_bytes(self) -> bytes:
        """The upgrade was accepted: hand over the bytes received after the request
        (they belong to the new protocol); nothing is parsed from now on."""
        if self._state is not _State.DONE:
            raise RuntimeError("take_tunnel_bytes() before the upgrade request ended")
        data = bytes(self._buf)
        self._buf.clear()
        self.consumed += len(data)
        self._state = _State.TUNNEL
        return data

    # -- events --------------------------------------------------------------------

    def next_event(self) -> Event | Signal:
        """The next event, :data:`NEED_DATA` or :data:`PAUSED`; raises RequestError."""
        state = self._state
        try:
            if state is _State.HEAD:
                return self._next_head()
            if state is _State.BODY:
                return self._next_body()
            if state is _State.DONE or state is _State.TUNNEL:
                return PAUSED
            if state is _State.ERROR:
                assert self._error is not None
                raise self._error
            return self._next_chunked()
        except RequestError as error:
            self._state = _State.ERROR
            self._error = error
            self._buf.clear()
            raise

    def _consume(self, count: int) -> None:
        del self._buf[:count]
        self.consumed += count

    def _next_head(self) -> Event | Signal:
        buf = self._buf
        # RFC 9112 section 2.2: ignore empty lines before the request line (some
        # clients send an extra CRLF after a POST body).
        while buf.startswith(b"\r\n"):
            self._consume(2)
            self._scan_from = 0
        if not buf:
            return NEED_DATA
        end = buf.find(b"\r\n\r\n", self._scan_from)
        if end < 0:
            self._check_partial_head()
            return NEED_DATA
        if end + 4 > self._max_header:
            raise RequestError("request head too large", 431)
        head = bytes(buf[:end])
        self._consume(end + 4)
        self._scan_from = 0
        return self._parse_head(head)

    def _check_partial_head(self) -> None:
        """Fail early on a head that can never become valid (too long, bare LF)."""
        buf = self._buf
        size = len(buf)
        start = self._scan_from
        newline = buf.find(b"\n", start)
        while newline >= 0:
            if newline == 0 or buf[newline - 1] != 0x0D:
                raise RequestError("bare LF in request head")
            newline = buf.find(b"\n", newline + 1)
        if size > MAX_REQUEST_LINE_BYTES and buf.find(b"\r\n", 0, MAX_REQUEST_LINE_BYTES + 2) < 0:
            raise RequestError("request line too long", 414)
        if size > self._max_header:
            raise RequestError("request head too large", 431)
        self._scan_from = max(0, size - 3)

    def _parse_head(self, head: bytes) -> RequestHeadParsed:
        lines = head.split(b"\r\n")
        _check_lines(head, lines)
        if len(lines) - 1 > MAX_HEADER_COUNT:
            raise RequestError("too many header fields", 431)
        request_line = lines[0]
        if len(request_line) > MAX_REQUEST_LINE_BYTES:
            raise RequestError("request line too long", 414)
        parts = request_line.split(b" ")
        if len(parts) != 3:
            raise RequestError("malformed request line")
        method, target, version = parts
        if request_line == _PREFACE_LINE:
            # HTTP/2 with prior knowledge on a TLS connection that negotiated no ALPN
            # (RFC 9113 section 3.3: over TLS, HTTP/2 is chosen by ALPN only).
            raise RequestError("HTTP/2 over TLS needs ALPN h2 (prior knowledge is for cleartext)")
        # RFC 9112 section 3: the line's form first (an invalid line is a 400 whatever
        # its version says), then whether we speak its version (505), then the method.
        if _TOKEN_RE.fullmatch(method) is None:
            raise RequestError("invalid method")
        http11 = version == b"HTTP/1.1"
        supported = http11 or version == b"HTTP/1.0"
        if not supported and _VERSION_RE.fullmatch(version) is None:
            raise RequestError("malformed HTTP version")
        target_host: bytes | None = None
        if method != b"CONNECT":
            if _TARGET_RE.fullmatch(target) is None:
                raise RequestError("invalid request target")
            if target[0] != 0x2F:  # not "/": asterisk-form or absolute-form
                if target == b"*":
                    if method != b"OPTIONS":
                        raise RequestError("asterisk-form target is only for OPTIONS")
                else:
                    target, target_host = _absolute_form(target)
        if not supported:
            raise RequestError("HTTP version not supported", 505)
        if method == b"CONNECT":
            raise RequestError("CONNECT is not supported", 501)

        headers: Headers = []
        _parse_fields(lines, 1, headers)

        host: bytes | None = None
        host_count = 0
        content_length: bytes | None = None
        transfer_encoding: bytes | None = None
        connection: list[bytes] = []
        expect_continue = False
        accepts_trailers = False
        upgrade: list[bytes] = []
        for name, value in headers:
            if name not in _SPECIAL:
                continue
            if name == b"host":
                host_count += 1
                host = value
            elif name == b"content-length":
                if content_length is not None:
                    raise RequestError("duplicate Content-Length")
                content_length = value
            elif name == b"transfer-encoding":
                if transfer_encoding is not None:
                    raise RequestError("duplicate Transfer-Encoding")
                transfer_encoding = value
            elif name == b"connection":
                connection.extend(_split_tokens(value))
            elif name == b"expect":
                if value.lower() == b"100-continue":
                    expect_continue = http11
            elif name == b"upgrade":
                upgrade.extend(_split_tokens(value))
            elif b"trailers" in _split_tokens(value):  # te
                accepts_trailers = True

        if host_count > 1 or (http11 and host_count == 0):
            raise RequestError("an HTTP/1.1 request needs exactly one Host header")
        if host is not None and _HOST_RE.fullmatch(host) is None:
            raise RequestError("invalid Host header")
        if target_host is not None and host != target_host:
            # RFC 9112 section 3.2.2: the target's authority replaces Host, so whoever
            # reads the header list later sees the authority the request was routed by.
            headers = [(b"host", target_host) if n == b"host" else (n, v) for n, v in headers]
            if host is None:
                headers.append((b"host", target_host))

        length: int | None = 0
        chunked = False
        if transfer_encoding is not None:
            if content_length is not None:
                raise RequestError("both Content-Length and Transfer-Encoding")
            if not http11:
                raise RequestError("Transfer-Encoding in an HTTP/1.0 request")
            _check_transfer_encoding(transfer_encoding)
            chunked = True
            length = None
        elif content_length is not None:
            if not content_length.isdigit() or len(content_length) > MAX_CONTENT_LENGTH_DIGITS:
                raise RequestError("invalid Content-Length")
            length = int(content_length)
            if self._max_body is not None and length > self._max_body:
                raise RequestError("request body too large", 413)

        if http11:
            keep_alive = b"close" not in connection
        else:
            keep_alive = b"keep-alive" in connection and b"close" not in connection

        websocket = (
            http11
            and method == b"GET"
            and not chunked
            and not length
            and b"websocket" in upgrade
            and b"upgrade" in connection
        )

        if chunked:
            self._state = _State.CHUNK_SIZE
            self._received_body = 0
            self._ext_budget = MAX_CHUNK_EXTENSION_BYTES
        elif length:
            self._state = _State.BODY
            self._remaining = length
        else:
            self._state = _State.BODY
            self._remaining = 0

        return RequestHeadParsed(
            method=method,
            target=target,
            version=version,
            headers=headers,
            content_length=length,
            chunked=chunked,
            keep_alive=keep_alive,
            expect_continue=expect_continue,
            host=target_host if target_host is not None else (host or b""),
            accepts_trailers=accepts_trailers,
            upgrade=b"websocket" if websocket else None,
        )

    def _next_body(self) -> Event | Signal:
        remaining = self._remaining
        if remaining == 0:
            self._state = _State.DONE
            return MessageEnded([])
        buf = self._buf
        size = len(buf)
        if size == 0:
            return NEED_DATA
        if size <= remaining:
            data = bytes(buf)
            buf.clear()
            self.consumed += size
            self._remaining = remaining - size
        else:
            data = bytes(buf[:remaining])
            self._consume(remaining)
            self._remaining = 0
        return BodyData(data)

    def _next_chunked(self) -> Event | Signal:
        buf = self._buf
        while True:
            state = self._state
            if state is _State.CHUNK_DATA:
                size = len(buf)
                if size == 0:
                    return NEED_DATA
                left = self._chunk_left
                if size <= left:
                    data = bytes(buf)
                    buf.clear()
                    self.consumed += size
                    self._chunk_left = left - size
                else:
                    data = bytes(buf[:left])
                    self._consume(left)
                    self._chunk_left = 0
                if self._chunk_left == 0:
                    self._state = _State.CHUNK_DATA_END
                return BodyData(data)
            if state is _State.CHUNK_DATA_END:
                if len(buf) < 2:
                    if buf and buf[0] != 0x0D:
                        raise RequestError("missing CRLF after chunk data")
                    return NEED_DATA
                if buf[0] != 0x0D or buf[1] != 0x0A:
                    raise RequestError("missing CRLF after chunk data")
                self._consume(2)
                self._state = _State.CHUNK_SIZE
                continue
            if state is _State.CHUNK_SIZE:
                end = buf.find(b"\r\n", 0, MAX_CHUNK_LINE_BYTES + 2)
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE_BYTES:
                        raise RequestError("chunk size line too long")
                    if b"\n" in buf:
                        raise RequestError("bare LF in chunk size line")
                    return NEED_DATA
                line = bytes(buf[:end])
                self._consume(end + 2)
                self._chunk_size_line(line)
                continue
            # TRAILERS
            return self._next_trailers()

    def _chunk_size_line(self, line: bytes) -> None:
        size_text, semicolon, extensions = line.partition(b";")
        if semicolon:
            # chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )
            size_text = size_text.rstrip(b" \t")
            self._ext_budget -= len(extensions) + 1
            if self._ext_budget < 0:
                raise RequestError("too many chunk extension bytes")
            if _CTL_RE.search(extensions) is not None or b"\r" in extensions or (
                b"\n" in extensions
            ):
                raise RequestError("control character in chunk extension")
        if _HEX_RE.fullmatch(size_text) is None:
            raise RequestError("invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            self._state = _State.TRAILERS
            return
        self._received_body += size
        if self._max_body is not None and self._received_body > self._max_body:
            raise RequestError("request body too large", 413)
        self._chunk_left = size
        self._state = _State.CHUNK_DATA

    def _next_trailers(self) -> Event | Signal:
        buf = self._buf
        if buf.startswith(b"\r\n"):
            self._consume(2)
            self._state = _State.DONE
            return MessageEnded([])
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self._max_header:
                raise RequestError("trailer section too large", 431)
            newline = buf.find(b"\n")
            while newline >= 0:
                if newline == 0 or buf[newline - 1] != 0x0D:
                    raise RequestError("bare LF in trailer section")
                newline = buf.find(b"\n", newline + 1)
            return NEED_DATA
        if end + 4 > self._max_header:
            raise RequestError("trailer section too large", 431)
        block = bytes(buf[:end])
        self._consume(end + 4)
        lines = block.split(b"\r\n")
        _check_lines(block, lines)
        if len(lines) > MAX_HEADER_COUNT:
            raise RequestError("too many trailer fields", 431)
        fields: Headers = []
        _parse_fields(lines, 0, fields)
        self._state = _State.DONE
        return MessageEnded([field for field in fields if field[0] not in _FORBIDDEN_TRAILERS])


def _absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """Split an absolute-form target into (origin-form target, authority)."""
    lowered = target[:8].lower()
    if lowered.startswith(b"http://"):
        rest = target[7:]
    elif lowered.startswith(b"https://"):
        rest = target[8:]
    else:
        raise RequestError("request target is not origin-form or absolute-form")
    cut = len(rest)
    for stop in (b"/", b"?"):
        index = rest.find(stop)
        if 0 <= index < cut:
            cut = index
    authority = rest[:cut]
    path = rest[cut:]
    if not authority or b"@" in authority or _HOST_RE.fullmatch(authority) is None:
        raise RequestError("invalid authority in request target")
    if not path:
        path = b"/"
    elif path[0] == 0x3F:  # "?"
        path = b"/" + path
    return path, authority


def _check_transfer_encoding(value: bytes) -> None:
    """Accept exactly ``chunked``; 501 for a valid list ending in chunked; else 400."""
    if value.strip(b" \t").lower() == b"chunked":
        return
    codings = _split_tokens(value)
    for coding in codings:
        if _TOKEN_RE.fullmatch(coding) is None:
            raise RequestError("malformed Transfer-Encoding")
    if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        raise RequestError("chunked is not the final transfer coding")
    raise RequestError("unsupported transfer coding", 501)
