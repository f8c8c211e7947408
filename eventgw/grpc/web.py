# -*- test-case-name: tests.test_grpcweb -*-
"""gRPC-Web calls (browsers), relayed as native gRPC by the same relay.

Shell module: it wraps the exchange the downstream protocol offers and hands it to
the gRPC relay (:class:`~eventgw.grpc.target.GrpcRelay`), which relays it as it
relays any gRPC call -- the allow/deny policy, ``grpc-timeout`` deadlines, metadata,
cancellation and back-pressure all apply unchanged, and so does whatever the gateway
checks before a flow.  The wire rules are :mod:`eventgw.grpc.webcodec`'s.

* The request: a :class:`~eventgw.exchange.RequestHead` with the native content type
  and ``te: trailers`` (:func:`~eventgw.grpc.webcodec.native_request_headers`); the
  text flavour's body is base64-decoded on its way in (:class:`_TextRequestBody`).
* The response: :class:`GrpcWebWriter` is the writer the relay writes to.  Its
  ``write_head`` maps the content type (a trailers-only answer stays in the headers),
  ``write_body`` passes messages (base64 for text, each chunk padded on its own, so
  a streamed message goes out as it comes), and ``end(trailers)`` appends the trailers
  as the ``0x80`` frame and ends the body; the status is always 200.  A request that
  carries ``Origin`` gets ``grpc-status``, ``grpc-message`` and
  ``grpc-status-details-bin`` in ``Access-Control-Expose-Headers``.

Works over HTTP/1.1 (chunked body, the trailers in the body) as over HTTP/2.
"""

from __future__ import annotations

from dataclasses import replace

from h2.errors import ErrorCodes

from eventgw.errors import GrpcStatus
from eventgw.exchange import (
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
    RequestTarget,
    ResponseWriter,
)
from eventgw.grpc.webcodec import (
    Base64Decoder,
    Flavour,
    MalformedText,
    encode_text_chunk,
    flavour_of,
    native_request_headers,
    trailers_frame,
    web_response_headers,
)
from eventgw.grpcwire import trailers_only

__all__ = ["GrpcWebAdapter", "GrpcWebWriter"]


class GrpcWebAdapter:
    """The gRPC-Web target: each call becomes a native call on ``relay``.

    :ivar relay: the gRPC relay (or anything that serves native gRPC exchanges).
    """

    def __init__(self, relay: RequestTarget) -> None:
        self.relay = relay

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        content_type = head.header(b"content-type") or b""
        flavour = flavour_of(content_type) or Flavour.BINARY
        head.log_fields["grpc_web"] = flavour.value
        native = replace(
            head,
            headers=native_request_headers(head.headers, flavour),
            content_length=head.content_length if flavour is Flavour.BINARY else (
                0 if head.content_length == 0 else None
            ),
        )
        web_writer = GrpcWebWriter(writer, flavour, cors=head.header(b"origin") is not None)
        handler = self.relay.start_exchange(native, web_writer)
        if flavour is Flavour.TEXT:
            return _TextRequestBody(handler, web_writer, head)
        return handler


class GrpcWebWriter:
    """The :class:`~eventgw.exchange.ResponseWriter` the relay writes a gRPC-Web
    call's answer to; it writes the gRPC-Web form to the client's writer.

    Invariant: the client's response is always status 200, and a response that was
    not trailers-only ends with exactly one trailers frame unless it was aborted or
    ended without trailers by the upstream.
    """

    __slots__ = ("_cors", "_ended", "flavour", "inner")

    def __init__(self, inner: ResponseWriter, flavour: Flavour, *, cors: bool) -> None:
        self.inner = inner
        self.flavour = flavour
        self._cors = cors
        self._ended = False

    @property
    def head_sent(self) -> bool:
        return self.inner.head_sent

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        if end:
            self._ended = True
        self.inner.write_head(
            200, web_response_headers(headers, self.flavour, cors=self._cors), end=end
        )

    def write_body(self, data: bytes) -> None:
        if self._ended or not data:
            return
        if self.flavour is Flavour.TEXT:
            data = encode_text_chunk(data)
        self.inner.write_body(data)

    def end(self, trailers: Headers | None = None) -> None:
        if self._ended:
            return
        if trailers is not None:
            self.write_body(trailers_frame(trailers))
        self._ended = True
        self.inner.end(None)

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        self._ended = True
        self.inner.abort(error_code)

    def fail(self, code: int, message: str) -> None:
        """End the call with ``code`` ourselves (the relay has been told to stop)."""
        if self._ended:
            return
        if not self.inner.head_sent:
            self.write_head(200, trailers_only(code, message), end=True)
        else:
            self.abort(ErrorCodes.CANCEL)

    def pause_request_body(self) -> None:
        self.inner.pause_request_body()

    def resume_request_body(self) -> None:
        self.inner.resume_request_body()

    def register_producer(self, producer: Producer) -> None:
        self.inner.register_producer(producer)

    def unregister_producer(self) -> None:
        self.inner.unregister_producer()


class _TextRequestBody:
    """The relay's handler behind a base64 decoder (the text flavour's request)."""

    __slots__ = ("_decoder", "_failed", "handler", "head", "writer")

    def __init__(self, handler: RequestHandler, writer: GrpcWebWriter, head: RequestHead) -> None:
        self.handler = handler
        self.writer = writer
        self.head = head
        self._decoder = Base64Decoder()
        self._failed = False

    def body_received(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            decoded = self._decoder.feed(data)
        except MalformedText as error:
            self._fail(str(error))
            return
        if decoded:
            self.handler.body_received(decoded)

    def body_ended(self, trailers: Headers) -> None:
        if self._failed:
            return
        try:
            self._decoder.finish()
        except MalformedText as error:
            self._fail(str(error))
            return
        self.handler.body_ended(trailers)

    def connection_lost(self, reason: str) -> None:
        if not self._failed:
            self.handler.connection_lost(reason)

    def _fail(self, message: str) -> None:
        """A body that is not base64: the upstream call is cancelled, the client hears
        INTERNAL (what gRPC answers for a message it cannot read)."""
        self._failed = True
        self.handler.connection_lost("malformed grpc-web-text body")
        self.head.log_fields["grpc_status"] = int(GrpcStatus.INTERNAL)
        self.writer.fail(GrpcStatus.INTERNAL, message)
