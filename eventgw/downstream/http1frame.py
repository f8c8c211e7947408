# -*- test-case-name: tests.test_http1frame -*-
"""The HTTP/1.1 response side: framing decisions, status lines, fields, chunks, trailers.

Core module: imports only the standard library, ``eventgw.errors`` and the request
half of the codec (:mod:`eventgw.downstream.http1parse`, which owns the shared types);
it must never import ``twisted``, ``grpc``, ``txaio`` or ``socket``, and never reads the
clock.

Everything here is a pure function of the request head and the handler's status and
fields: :func:`plan_response` decides the framing (length, chunked, close-delimited,
none), :func:`serialize_response_head`, :func:`serialize_interim_response`,
:func:`frame_chunk` and :func:`last_chunk` produce the bytes, and
:func:`serialize_error_response` builds a complete local error reply.  A field that
would break the framing (CR or LF in a name or value) raises ``ValueError`` rather than
split the response.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from eventgw.downstream.http1parse import MAX_CONTENT_LENGTH_DIGITS, Headers, RequestHeadParsed
from eventgw.errors import error_body, grpc_code_for_http

__all__ = [
    "SWITCH_PLAN",
    "BodyFraming",
    "ResponsePlan",
    "body_allowed",
    "frame_chunk",
    "last_chunk",
    "plan_response",
    "serialize_error_response",
    "serialize_interim_response",
    "serialize_response_head",
    "serialize_switching_protocols",
]


class BodyFraming(enum.Enum):
    """How a response body is delimited on the wire (RFC 9112 section 6.3)."""

    NONE = "none"  # HEAD, 1xx, 204, 304: no body at all
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # read until the connection closes (HTTP/1.0 without a length)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """How a response goes out.

    :ivar framing: the body delimitation.
    :ivar content_length: the value sent in ``content-length``, or ``None`` for none.
    :ivar body_length: the body bytes to send for ``LENGTH`` framing.
    :ivar keep_alive: whether the connection stays open after the response.
    :ivar send_trailers: trailers go into the last chunk (chunked, client sent
        ``TE: trailers``); otherwise they are dropped.
    :ivar connection: the ``connection`` header value to add, or ``None``.
    """

    framing: BodyFraming
    content_length: bytes | None
    body_length: int
    keep_alive: bool
    send_trailers: bool
    connection: bytes | None


# Hop-by-hop and framing fields the codec writes itself; a handler's copies are dropped.
_RESPONSE_DROPPED: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
    )
)


def _status_lines() -> dict[int, bytes]:
    lines = {}
    for status in HTTPStatus:
        lines[status.value] = b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    return lines


_STATUS_LINES: Final = _status_lines()


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def body_allowed(method: bytes, status: int) -> bool:
    """Whether a response to ``method`` with ``status`` carries a body."""
    return not (method == b"HEAD" or status < 200 or status == 204 or status == 304)


def _declared_length(headers: Headers) -> bytes | None:
    """The handler's content-length if it is one well-formed value, else ``None``."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"content-length":
            value = value.strip(b" \t")
            if not value.isdigit() or len(value) > MAX_CONTENT_LENGTH_DIGITS:
                return None
            if found is not None and int(found) != int(value):
                return None
            found = value
    return found


def plan_response(
    request: RequestHeadParsed,
    status: int,
    headers: Headers,
    *,
    ends_now: bool = False,
    close: bool = False,
) -> ResponsePlan:
    """Decide the framing of a final response to ``request``.

    :param ends_now: the response has no body beyond its head (``write_head(end=True)``),
        so a missing length can be sent as ``content-length: 0`` instead of chunking.
    :param close: the caller closes the connection after this response regardless.
    """
    http11 = request.version == b"HTTP/1.1"
    keep_alive = request.keep_alive and not close
    declared = _declared_length(headers)
    content_length: bytes | None = None
    body_length = 0
    if status < 200 or status == 204:
        framing = BodyFraming.NONE  # RFC 9110 section 8.6: no Content-Length here
    elif request.method == b"HEAD" or status == 304:
        framing = BodyFraming.NONE
        content_length = declared  # describes the GET body; passed through as is
    elif declared is not None:
        framing = BodyFraming.LENGTH
        content_length = declared
        body_length = int(declared)
    elif ends_now:
        framing = BodyFraming.LENGTH
        content_length = b"0"
    elif http11:
        framing = BodyFraming.CHUNKED
    else:
        framing = BodyFraming.CLOSE
        keep_alive = False
    if keep_alive:
        connection = None if http11 else b"keep-alive"
    else:
        connection = b"close"
    return ResponsePlan(
        framing=framing,
        content_length=content_length,
        body_length=body_length,
        keep_alive=keep_alive,
        send_trailers=framing is BodyFraming.CHUNKED and request.accepts_trailers,
        connection=connection,
    )


def serialize_response_head(status: int, headers: Headers, plan: ResponsePlan) -> bytes:
    """The status line and fields of a final response, ending with the empty line.

    Raises ValueError when a header name or value would break the framing (CR, LF):
    that is a bug upstream of us, and sending it would split the response.
    """
    parts = [_status_line(status)]
    append = parts.append
    count = 0
    for name, value in headers:
        if name in _RESPONSE_DROPPED:
            continue
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
        count += 1
    if plan.content_length is not None:
        append(b"content-length: ")
        append(plan.content_length)
        append(b"\r\n")
        count += 1
    if plan.framing is BodyFraming.CHUNKED:
        append(b"transfer-encoding: chunked\r\n")
        count += 1
    if plan.connection is not None:
        append(b"connection: ")
        append(plan.connection)
        append(b"\r\n")
        count += 1
    append(b"\r\n")
    head = b"".join(parts)
    if head.count(b"\n") != count + 2 or head.count(b"\r") != count + 2:
        raise ValueError("CR or LF in a response header")
    return head


#: How a ``101 Switching Protocols`` goes out: no length, no chunks, the connection is
#: the new protocol's until it closes.
SWITCH_PLAN: Final = ResponsePlan(BodyFraming.CLOSE, None, 0, False, False, b"upgrade")


def serialize_switching_protocols(headers: Headers, protocol: bytes) -> bytes:
    """A ``101 Switching Protocols`` head to ``protocol`` (``b"websocket"``): the
    handler's headers (hop-by-hop ones dropped), ``upgrade`` and ``connection``."""
    head = serialize_response_head(101, headers, SWITCH_PLAN)
    return head[:-2] + b"upgrade: " + protocol + b"\r\n\r\n"


def serialize_interim_response(status: int, headers: Headers | None = None) -> bytes:
    """A 1xx response (``100 Continue``, ``103 Early Hints``), HTTP/1.1 clients only."""
    if not 100 <= status < 200 or status == 101:
        raise ValueError(f"not an interim status: {status}")
    if not headers:
        return _status_line(status) + b"\r\n"
    plan = ResponsePlan(BodyFraming.NONE, None, 0, True, False, None)
    return serialize_response_head(status, headers, plan)


def frame_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``data`` must not be empty: that would end it)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None = None) -> bytes:
    """The zero-size chunk, the trailer fields (if any) and the final CRLF."""
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for name, value in trailers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"\r\n")
    block = b"".join(parts)
    if block.count(b"\n") != len(trailers) + 2 or block.count(b"\r") != len(trailers) + 2:
        raise ValueError("CR or LF in a trailer field")
    return block


def serialize_error_response(
    status: int, message: str, headers: Headers | None = None
) -> bytes:
    """A complete JSON error response (gateway error shape) that closes the connection.

    ``headers`` are added as they are (``date``, ``server``, ``x-request-id``); they must
    not hold CR or LF.
    """
    body = error_body(grpc_code_for_http(status), message)
    extra = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers or ())
    return b"%scontent-type: application/json\r\ncontent-length: %d\r\n%s%s\r\n%s" % (
        _status_line(status),
        len(body),
        extra,
        b"connection: close\r\n",
        body,
    )
