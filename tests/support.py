"""Shared test helpers: in-memory stand-ins for the two sides of an exchange."""

from __future__ import annotations

from dataclasses import dataclass, field

from h2.errors import ErrorCodes

from eventgw.exchange import (
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    send_error,
)


def make_head(
    method: bytes = b"GET",
    target: bytes = b"/api/x",
    headers: Headers | None = None,
    *,
    protocol: str = "HTTP/1.1",
    scheme: bytes = b"https",
    authority: bytes = b"gateway.test",
    peer: str = "127.0.0.1",
    content_length: int | None = 0,
    body_expected: bool = False,
) -> RequestHead:
    """A RequestHead with test defaults."""
    return RequestHead(
        method=method,
        target=target,
        authority=authority,
        scheme=scheme,
        headers=list(headers or []),
        protocol=protocol,
        peer=peer,
        content_length=content_length,
        body_expected=body_expected,
    )


@dataclass
class RecordingWriter:
    """A ResponseWriter that records what a target wrote, with manual back-pressure."""

    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: Headers | None = None
    ended: bool = False
    aborted: int | None = None
    request_paused: bool = False
    producer: Producer | None = None
    head_ended: bool = False

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        assert self.status is None, "write_head called twice"
        self.status = status
        self.headers = list(headers)
        if end:
            self.head_ended = True
            self.ended = True

    def write_body(self, data: bytes) -> None:
        assert self.status is not None and not self.ended
        self.body += data

    def end(self, trailers: Headers | None = None) -> None:
        self.trailers = trailers
        self.ended = True

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        self.aborted = error_code

    def pause_request_body(self) -> None:
        self.request_paused = True

    def resume_request_body(self) -> None:
        self.request_paused = False

    def register_producer(self, producer: Producer) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    @property
    def head_sent(self) -> bool:
        return self.status is not None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class EchoHandler:
    """Answers 200 with a description of the request and its body once it has ended."""

    def __init__(self, head: RequestHead, writer: ResponseWriter) -> None:
        self.head = head
        self.writer = writer
        self.body = bytearray()
        self.lost: str | None = None

    def body_received(self, data: bytes) -> None:
        self.body += data

    def body_ended(self, trailers: Headers) -> None:
        text = b"%s %s %d\n" % (self.head.method, self.head.target, len(self.body))
        self.writer.write_head(
            200, [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(text))]
        )
        self.writer.write_body(text)
        self.writer.end()

    def connection_lost(self, reason: str) -> None:
        self.lost = reason


class EchoTarget:
    """A RequestTarget: ``/missing`` gets a JSON 404, everything else an EchoHandler."""

    def __init__(self) -> None:
        self.handlers: list[EchoHandler] = []

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        if head.path == b"/missing":
            send_error(writer, 404, "no route")
            from eventgw.exchange import StaticReply

            return StaticReply()
        handler = EchoHandler(head, writer)
        self.handlers.append(handler)
        return handler
