# -*- test-case-name: tests.test_exchange -*-
"""The seam between downstream protocols and whatever serves a request.

Core module: imports the standard library, ``h2``'s error-code enum and
:mod:`eventgw.headers`.

One *exchange* is one request and its response.  The downstream protocols -- the
HTTP/1.1 server (``http1server``) and each stream of the HTTP/2 server
(``h2server``) -- turn bytes into a :class:`RequestHead` plus body events, and offer a
:class:`ResponseWriter` for the answer.  The targets -- the ``/api`` reverse proxy, the
``/events`` endpoint, the gRPC relay, local error replies -- implement
:class:`RequestHandler` and never know which protocol (or which TLS state) the client
speaks.  This is Envoy's HTTP connection manager / filter split, in two interfaces.

Names follow the two sides: a protocol's per-request object is a *writer*
(``Http1Writer``, ``H2Stream``); a flow's per-request object is a *handler*, and only
handlers are called exchanges (``ApiExchange``, ``EventExchange``, the relay's
``_RelayedCall``).

Back-pressure runs both ways through the same objects:

* request body (client -> target): the target calls
  :meth:`ResponseWriter.pause_request_body` when whatever it feeds cannot take more;
  the protocol then stops reading (HTTP/1.1: pauses the transport) or stops
  acknowledging DATA (HTTP/2: no WINDOW_UPDATE), and delivers nothing more until
  :meth:`ResponseWriter.resume_request_body`.
* response body (target -> client): the target registers a :class:`Producer` with
  :meth:`ResponseWriter.register_producer`; the protocol calls ``pause_producing`` when
  its outgoing buffer for this exchange passes its high watermark (HTTP/1.1: the
  transport paused us; HTTP/2: the stream's send window is exhausted and buffered bytes
  pass the watermark) and ``resume_producing`` when it drains.

Header lists are ``list[tuple[bytes, bytes]]`` with lower-case names, in arrival
order, repeats kept, pseudo-headers removed.  Nobody mutates a list they were given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from h2.errors import ErrorCodes

from eventgw.errors import error_body, grpc_code_for_http
from eventgw.headers import Headers

__all__ = [
    "Headers",
    "Producer",
    "RequestHandler",
    "RequestHead",
    "RequestTarget",
    "ResponseWriter",
    "StaticReply",
    "header_value",
    "send_error",
]


@dataclass(slots=True, kw_only=True)
class RequestHead:
    """A request as far as its headers: everything a target needs to route and forward.

    :ivar method: e.g. ``b"GET"``.
    :ivar target: path and query exactly as sent (origin-form), e.g. ``b"/api/x?y=1"``.
    :ivar authority: ``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2); may be ``b""``.
    :ivar scheme: ``b"https"`` on the TLS port, ``b"http"`` on the cleartext one.
    :ivar headers: the request headers without pseudo-headers, names lower-case.  For
        HTTP/1.1 the hop-by-hop framing headers are still present (``content-length``,
        ``transfer-encoding``, ``connection``...); targets drop what they must not forward.
    :ivar protocol: ``"HTTP/1.0"``, ``"HTTP/1.1"`` or ``"HTTP/2"``.
    :ivar peer: the client's IP address as text.
    :ivar content_length: the declared body length, or ``None`` when unknown (chunked,
        HTTP/2 without ``content-length``).  ``0`` means no body.
    :ivar body_expected: ``False`` when the request is complete with its head (HTTP/2
        END_STREAM on HEADERS, HTTP/1.1 without a body), so no ``body_received`` follows,
        only ``body_ended``.
    :ivar client_identity: the verified TLS client certificate's identity (first URI
        SAN, else first DNS SAN, else subject CN), or ``None`` without one; read once
        per connection.
    :ivar log_fields: fields a target adds for the access-log line (``upstream``,
        ``route``, ``grpc_status``...); the protocol emits one line per exchange.
    :ivar upgrade: ``b"websocket"`` when the request asks for a WebSocket (HTTP/1.1
        ``Upgrade: websocket``, HTTP/2 extended CONNECT with ``:protocol websocket``),
        else ``None``.  Its target answers 101 (HTTP/1.1) or 200 (HTTP/2) to accept;
        the body in both directions is then the tunnel's bytes.
    """

    method: bytes
    target: bytes
    authority: bytes
    scheme: bytes
    headers: Headers
    protocol: str
    peer: str
    content_length: int | None = None
    body_expected: bool = True
    client_identity: str | None = None
    log_fields: dict[str, object] = field(default_factory=dict)
    upgrade: bytes | None = None

    @property
    def path(self) -> bytes:
        """The target without its query string."""
        return self.target.split(b"?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        """The first value of a header (``name`` lower-case), or ``None``."""
        return header_value(self.headers, name)


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lower-case) in a header list, or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


class Producer(Protocol):
    """Something that writes a response body and can be told to stop for a while."""

    def pause_producing(self) -> None:
        """Stop calling ``write_body`` until :meth:`resume_producing`."""

    def resume_producing(self) -> None:
        """Writing may go on."""


class ResponseWriter(Protocol):
    """The downstream side of one exchange, offered by the protocol that received it.

    Call order: ``write_head`` once (unless ``abort``), then any number of
    ``write_body``, then ``end`` -- or ``abort`` at any point.  Calls after ``end`` or
    ``abort``, or after the client went away, are ignored, so a target never has to
    check first.
    """

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        """Send the status and headers; ``end=True`` means there is no body.

        The protocol frames the body itself: with a ``content-length`` header it sends
        exactly that many bytes, otherwise HTTP/1.1 uses chunked encoding (or closes
        for HTTP/1.0).  It drops the body of ``HEAD`` responses and of 1xx/204/304.
        Headers must not include hop-by-hop ones (``connection``, ``transfer-encoding``...).
        A gRPC trailers-only response is ``write_head(200, [...grpc-status...], end=True)``.
        """

    def write_body(self, data: bytes) -> None:
        """Send part of the body."""

    def end(self, trailers: Headers | None = None) -> None:
        """Finish the response, with trailers when given.

        HTTP/2 sends trailers as a final HEADERS frame; HTTP/1.1 sends them in the
        last chunk when chunked, and drops them otherwise.
        """

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        """Give up on the response: HTTP/2 resets the stream with ``error_code``,
        HTTP/1.1 closes the connection.  Use it when the head is already sent;
        before that, send a proper error response instead."""

    def pause_request_body(self) -> None:
        """Deliver no more ``body_received`` until :meth:`resume_request_body`."""

    def resume_request_body(self) -> None:
        """Deliver request body again."""

    def register_producer(self, producer: Producer) -> None:
        """Ask to be paused and resumed as the client drains the response."""

    def unregister_producer(self) -> None:
        """Stop the pause/resume calls (the target is done writing)."""

    @property
    def head_sent(self) -> bool:
        """Whether ``write_head`` has been called."""


class RequestHandler(Protocol):
    """The target side of one exchange.  Created with the head and the writer."""

    def body_received(self, data: bytes) -> None:
        """A piece of the request body (already de-chunked)."""

    def body_ended(self, trailers: Headers) -> None:
        """The request body is complete; ``trailers`` is usually empty."""

    def connection_lost(self, reason: str) -> None:
        """The client is gone (disconnect, RST_STREAM, timeout): stop and release
        everything; the writer ignores all further calls."""


class RequestTarget(Protocol):
    """What a downstream protocol hands every new exchange to (the gateway's router)."""

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        """Begin serving ``head``; may write a complete response at once."""


JSON_HEADERS: Final[Headers] = [(b"content-type", b"application/json")]


def send_error(
    writer: ResponseWriter,
    status: int,
    message: str,
    *,
    grpc_code: int | None = None,
    headers: Headers | None = None,
) -> None:
    """Answer with the gateway's JSON error body; abort instead if the head went out."""
    if writer.head_sent:
        writer.abort()
        return
    code = grpc_code if grpc_code is not None else grpc_code_for_http(status)
    body = error_body(code, message)
    all_headers = [
        *JSON_HEADERS,
        (b"content-length", str(len(body)).encode()),
        *(headers or ()),
    ]
    writer.write_head(status, all_headers)
    writer.write_body(body)
    writer.end()


class StaticReply:
    """A handler whose response was written at start; it ignores the request body.

    The protocols read and discard the rest of the body (HTTP/1.1 closes the
    connection instead when the body is large), so a pipelined next request is safe.
    """

    __slots__ = ()

    def body_received(self, data: bytes) -> None:
        pass

    def body_ended(self, trailers: Headers) -> None:
        pass

    def connection_lost(self, reason: str) -> None:
        pass
