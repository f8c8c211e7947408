# -*- test-case-name: tests.test_http1server -*-
"""The writer of one HTTP/1.1 request: the :class:`~eventgw.exchange.ResponseWriter` a
flow's handler answers through, and the interface it needs from its connection.

Shell module: it sits between a handler and the connection
(:class:`~eventgw.downstream.http1server.Http1ServerProtocol`), frames the response
with :mod:`eventgw.downstream.http1frame`, and reaches the connection only through
:class:`WriterHost`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from h2.errors import ErrorCodes
from twisted.logger import Logger

from eventgw.downstream.http1frame import (
    SWITCH_PLAN,
    BodyFraming,
    ResponsePlan,
    frame_chunk,
    last_chunk,
    plan_response,
    serialize_interim_response,
    serialize_response_head,
    serialize_switching_protocols,
)
from eventgw.downstream.http1parse import (
    RequestHeadParsed,
)
from eventgw.downstream.stamp import stamp
from eventgw.errors import error_body, grpc_code_for_http
from eventgw.exchange import (
    Headers,
    Producer,
    RequestHandler,
    RequestHead,
)
from eventgw.requestid import assign_request_id

if TYPE_CHECKING:
    pass

__all__ = ["Http1Writer", "WriterHost"]


class WriterHost(Protocol):
    """What an exchange may ask of the connection it runs on.

    :class:`Http1ServerProtocol` implements it; an exchange sees its connection only
    through these members, so the connection's buffering, pausing and closing stay its
    own business.
    """

    @property
    def log(self) -> Logger:
        """The connection's logger."""

    @property
    def peer(self) -> str:
        """The client address as text."""

    @property
    def output_paused(self) -> bool:
        """Whether the transport has asked us to stop writing (the client is slow)."""

    def closes_after(self, exchange: Http1Writer) -> bool:
        """Whether the connection closes after ``exchange``'s response (asked when its
        head is written, so ``connection: close`` can be sent)."""

    def send(self, data: bytes) -> None:
        """Queue response bytes for the client; they are flushed in batches."""

    def response_complete(self, exchange: Http1Writer) -> None:
        """``exchange``'s response has been fully written."""

    def abort_exchange(self, exchange: Http1Writer) -> None:
        """``exchange``'s handler gave up on its response: close the connection."""

    def tunnel_opened(self, exchange: Http1Writer) -> None:
        """``exchange`` switched protocols (101): from now on the bytes in both
        directions are its body, until the connection closes."""

    def pause_request_body(self) -> None:
        """Stop reading and delivering the request body."""

    def resume_request_body(self) -> None:
        """Read and deliver the request body again."""


class Http1Writer:
    """The :class:`~eventgw.exchange.ResponseWriter` of one request on a connection.

    Invariant: once ``closed`` is true every writer call is a no-op, so a handler may
    keep calling after the response ended, after an abort, or after the client left.
    """

    __slots__ = (
        "body_left",
        "broken",
        "bytes_in",
        "bytes_out",
        "channel",
        "closed",
        "continue_sent",
        "discarding",
        "handler",
        "head",
        "head_written",
        "plan",
        "producer",
        "request",
        "request_ended",
        "request_id",
        "request_paused",
        "response_ended",
        "started",
        "status",
    )

    def __init__(
        self,
        channel: WriterHost,
        request: RequestHeadParsed,
        head: RequestHead,
        started: float,
    ) -> None:
        self.channel = channel
        self.request = request
        self.head = head
        # Before the target sees the head: it forwards the id, the response returns it.
        self.request_id = assign_request_id(head)
        self.started = started
        self.handler: RequestHandler | None = None
        self.head_written = False
        self.plan: ResponsePlan | None = None
        self.status = 0
        self.body_left = 0
        self.bytes_in = 0  # request body bytes (de-chunked), for the access log
        self.bytes_out = 0  # response body bytes, for the access log
        self.response_ended = False
        self.request_ended = False
        self.request_paused = False
        self.continue_sent = False
        self.discarding = False
        # The body sent did not match its framing (too long or too short): the
        # connection cannot be reused.
        self.broken = False
        self.closed = False
        self.producer: Producer | None = None

    # -- ResponseWriter --------------------------------------------------------------

    @property
    def head_sent(self) -> bool:
        return self.head_written

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        if self.closed or self.head_written:
            return
        channel = self.channel
        if status == 101 and self.request.upgrade is not None and not end:
            self._switch_protocols(headers)
            return
        if status < 200:
            self._write_interim(status, headers)
            return
        request = self.request
        headers = stamp(headers, self.request_id)
        plan = plan_response(
            request, status, headers, ends_now=end, close=channel.closes_after(self)
        )
        try:
            data = serialize_response_head(status, headers, plan)
        except ValueError:
            channel.log.error(
                "{peer} dropped a response with CR/LF in a header", peer=channel.peer
            )
            self._replace_with_error(502, "invalid response header")
            return
        self.head_written = True
        self.status = status
        self.plan = plan
        self.body_left = plan.body_length
        channel.send(data)
        if end:
            self.end()

    def _switch_protocols(self, headers: Headers) -> None:
        """``101 Switching Protocols`` for an upgrade request (the parser only offers
        WebSocket ones); the body both ways is then raw bytes until a close."""
        request = self.request
        assert request.upgrade is not None
        headers = stamp(headers, self.request_id)
        try:
            data = serialize_switching_protocols(headers, request.upgrade)
        except ValueError:
            self.channel.log.error(
                "{peer} dropped a response with CR/LF in a header", peer=self.channel.peer
            )
            self._replace_with_error(502, "invalid response header")
            return
        self.head_written = True
        self.status = 101
        self.plan = SWITCH_PLAN
        self.channel.send(data)
        self.channel.tunnel_opened(self)

    def _write_interim(self, status: int, headers: Headers) -> None:
        # 1xx responses are for HTTP/1.1 clients only (RFC 9110 section 15.2); 101
        # switches protocols only for the upgrade requests the parser recognises.
        if status == 101 or self.request.version != b"HTTP/1.1":
            return
        if status == 100:
            if self.continue_sent:
                return
            self.continue_sent = True
        try:
            data = serialize_interim_response(status, headers)
        except ValueError:
            return
        self.channel.send(data)

    def _replace_with_error(self, status: int, message: str) -> None:
        body = error_body(grpc_code_for_http(status), message)
        headers = stamp(
            [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
            self.request_id,
        )
        plan = plan_response(self.request, status, headers, close=True)
        data = serialize_response_head(status, headers, plan)
        if plan.framing is BodyFraming.LENGTH:
            data += body
            self.bytes_out += len(body)
        self.head_written = True
        self.status = status
        self.plan = plan
        self.channel.send(data)
        self.response_ended = True
        self.channel.response_complete(self)

    def write_body(self, data: bytes) -> None:
        if self.closed or self.response_ended or not self.head_written or not data:
            return
        plan = self.plan
        assert plan is not None
        framing = plan.framing
        if framing is BodyFraming.LENGTH:
            left = self.body_left
            if len(data) > left:
                # More than content-length promised: the extra would be read as the
                # next response.  Drop it and close after this response.
                self.broken = True
                data = data[:left]
                if not data:
                    return
            self.body_left = left - len(data)
        elif framing is BodyFraming.NONE:
            return
        # The access log counts body bytes, without the head or the chunk framing.
        self.bytes_out += len(data)
        if framing is BodyFraming.CHUNKED:
            data = frame_chunk(data)
        self.channel.send(data)

    def end(self, trailers: Headers | None = None) -> None:
        if self.closed or self.response_ended:
            return
        if not self.head_written:
            self.channel.log.error(
                "{peer} handler ended a response it never started", peer=self.channel.peer
            )
            self._replace_with_error(500, "no response")
            return
        plan = self.plan
        assert plan is not None
        if plan.framing is BodyFraming.CHUNKED:
            try:
                data = last_chunk(trailers if plan.send_trailers else None)
            except ValueError:
                data = last_chunk()
            self.channel.send(data)
        elif plan.framing is BodyFraming.LENGTH and self.body_left:
            self.broken = True  # shorter than promised: only closing tells the client
        self.response_ended = True
        self.channel.response_complete(self)

    def abort(self, error_code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        if self.closed or self.response_ended:
            return
        self.closed = True
        self.channel.abort_exchange(self)

    def pause_request_body(self) -> None:
        if self.closed or self.request_paused or self.request_ended:
            return
        self.request_paused = True
        self.channel.pause_request_body()

    def resume_request_body(self) -> None:
        if self.closed or not self.request_paused:
            return
        self.request_paused = False
        self.channel.resume_request_body()

    def register_producer(self, producer: Producer) -> None:
        if self.closed:
            return
        self.producer = producer
        if self.channel.output_paused:
            producer.pause_producing()

    def unregister_producer(self) -> None:
        self.producer = None
