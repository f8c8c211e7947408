# -*- test-case-name: tests.test_h2heads -*-
"""Heads of the downstream HTTP/2 server: a request stream's headers in, a response's out.

Core module: pure functions over header lists; no ``twisted``, ``grpc``, ``txaio``,
``socket`` or clock.

:func:`h2_request_head` turns the header list of a RequestReceived event (which h2
has validated: pseudo-headers well-formed, no connection-specific fields) and the
connection's facts into the :class:`~eventgw.exchange.RequestHead` a target gets,
with the declared content-length the stream enforces -- or into a refusal the server
answers itself, without a target: a header list larger than we advertised (431, or
a trailers-only RESOURCE_EXHAUSTED for gRPC, whose clients read the status from
trailers) and CONNECT (501 Not Implemented; an extended CONNECT of RFC 8441 with
``:protocol websocket`` is a request like any other, its head's ``upgrade`` set) -- or
into a
malformed request the server resets (a :method that is not a token, a :path that is
neither origin-form nor ``*`` for OPTIONS, a content-length on a stream that ended with
its HEADERS).
:func:`h2_response_headers` filters what a target passes for a response or trailers
block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from eventgw.errors import GrpcStatus
from eventgw.exchange import Headers, RequestHead
from eventgw.grpcwire import trailers_only
from eventgw.headers import CONNECTION_SPECIFIC
from eventgw.routing import is_grpc

__all__ = [
    "PROTOCOL",
    "Accepted",
    "Malformed",
    "Refused",
    "RequestFacts",
    "h2_request_head",
    "h2_response_headers",
]

PROTOCOL: Final = "HTTP/2"

# tchar (RFC 9110 section 5.6.2): a method is a token (section 9.1).
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the connection knows that goes into every request head."""

    scheme: bytes
    peer: str
    max_header_bytes: int
    # The TLS client certificate's identity (read once per connection).
    client_identity: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request for the target; ``expect_continue`` when it asked for ``100-continue``.

    ``declared_length`` is the content-length the client sent, which the stream holds
    its DATA against (RFC 9113 section 8.1.1); ``None`` when there was none.
    """

    head: RequestHead
    expect_continue: bool
    declared_length: int | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A request the server answers itself.

    ``head`` is still built (the access log needs it).  The answer is ``reply`` as a
    trailers-only response when given, else the gateway's JSON error with ``status``
    and ``message``.  ``log`` is the protocol-error line to write, if any.
    """

    head: RequestHead
    status: int
    message: str
    reply: Headers | None = None
    log: str | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A malformed request (RFC 9113 section 8.1.1): a stream error PROTOCOL_ERROR,
    never shown to a target.  ``head`` is still built for the access log."""

    head: RequestHead
    reason: str


def h2_request_head(
    headers: Headers, facts: RequestFacts, *, end_stream: bool
) -> Accepted | Refused | Malformed:
    """The head of a request stream (``end_stream``: END_STREAM was on its HEADERS).

    The size is counted as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 section
    6.5.2), pseudo-headers included.
    """
    method = path = authority = host = content_length = protocol = None
    expect_continue = False
    regular: Headers = []
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[0] == 58:  # b":"; h2 has checked the pseudo-headers
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
        else:
            regular.append((name, value))
            if name == b"content-length":
                content_length = value
            elif name == b"host":
                host = value
            elif name == b"expect":
                expect_continue = value.lower() == b"100-continue"
    body_expected = not end_stream
    declared = (
        int(content_length) if content_length is not None and content_length.isdigit() else None
    )
    head = RequestHead(
        method=method or b"",
        target=path or b"",
        authority=authority or host or b"",
        scheme=facts.scheme,
        headers=regular,
        protocol=PROTOCOL,
        peer=facts.peer,
        client_identity=facts.client_identity,
        # A declared 0 on a stream still open is not a complete request until
        # END_STREAM proves it (DATA may follow, which makes it malformed): the target
        # gets an unknown length and the body's end, so nothing upstream completes
        # before the stream has.
        content_length=(
            (None if declared == 0 and body_expected else declared)
            if declared is not None
            else (None if body_expected else 0)
        ),
        body_expected=body_expected,
        upgrade=b"websocket" if protocol is not None and protocol.lower() == b"websocket"
        else None,
    )
    # RFC 9113 section 8.3.1 (h2 checks the pseudo-headers are there, once, first):
    # :method is a token; :path is origin-form, or "*" for OPTIONS; CONNECT has none.
    if method is None or _TOKEN.fullmatch(method) is None:
        return Malformed(head, "invalid :method")
    if (method != b"CONNECT" or protocol is not None) and not (
        (path or b"")[:1] == b"/" or (path == b"*" and method == b"OPTIONS")
    ):
        return Malformed(head, "invalid :path")
    if declared and end_stream:
        return Malformed(head, f"content-length {declared} on a request without DATA")
    if size > facts.max_header_bytes:
        log = f"header list of {size} bytes exceeds {facts.max_header_bytes}"
        content_type = head.header(b"content-type")
        if content_type is not None and is_grpc(content_type):
            # gRPC clients read the status from trailers.
            reply = trailers_only(GrpcStatus.RESOURCE_EXHAUSTED, "request headers too large")
            return Refused(head, 431, "request header fields too large", reply, log)
        return Refused(head, 431, "request header fields too large", log=log)
    if method == b"CONNECT" and head.upgrade is None:
        # RFC 9110 section 15.6.2: a method the server does not support, as HTTP/1.1
        # answers it.  RFC 8441 extended CONNECT is offered for WebSockets only.
        if protocol is not None:
            what = protocol.decode("ascii", "replace")
            return Refused(head, 501, f"CONNECT with :protocol {what} is not supported")
        return Refused(head, 501, "CONNECT is not supported")
    return Accepted(head, expect_continue, declared if body_expected else None)


def h2_response_headers(headers: Headers) -> Headers:
    """``headers`` fit for an HTTP/2 response or trailers block.

    Drops connection-specific fields (``te`` is kept only as ``trailers``) and
    pseudo-headers (``:status`` is ours to set), so a target cannot make us send a
    malformed block.
    """
    return [
        (name, value)
        for name, value in headers
        if name
        and name not in CONNECTION_SPECIFIC
        and name[0] != 58  # b":"
        and (name != b"te" or value == b"trailers")
    ]
