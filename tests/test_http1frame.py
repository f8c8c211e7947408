# -*- test-case-name: tests.test_http1frame -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.downstream.http1frame: HTTP/1.1 response framing and serialization."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.downstream.http1frame import (
    BodyFraming,
    body_allowed,
    frame_chunk,
    last_chunk,
    plan_response,
    serialize_error_response,
    serialize_interim_response,
    serialize_response_head,
)
from eventgw.downstream.http1parse import RequestHeadParsed
from tests.test_http1parse import GET, head_of, parse


class ResponseTests(SynchronousTestCase):
    """Response framing decisions and serialization."""

    def _request(self, data: bytes = GET) -> RequestHeadParsed:
        return head_of(parse(data))

    def test_content_length_passthrough(self) -> None:
        """A handler's content-length selects LENGTH framing and is sent once."""
        request = self._request()
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        plan = plan_response(request, 200, headers)
        self.assertEqual(plan.framing, BodyFraming.LENGTH)
        self.assertEqual(plan.body_length, 5)
        self.assertTrue(plan.keep_alive)
        self.assertEqual(
            serialize_response_head(200, headers, plan),
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n",
        )

    def test_chunked_for_http11(self) -> None:
        """Without a length, HTTP/1.1 responses are chunked; hop-by-hop fields from the
        handler are dropped."""
        request = self._request()
        headers = [(b"transfer-encoding", b"gzip"), (b"connection", b"x"), (b"x-a", b"1")]
        plan = plan_response(request, 200, headers)
        self.assertEqual(plan.framing, BodyFraming.CHUNKED)
        self.assertEqual(
            serialize_response_head(200, headers, plan),
            b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        )

    def test_close_for_http10(self) -> None:
        """Without a length, HTTP/1.0 responses are close-delimited."""
        request = self._request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        plan = plan_response(request, 200, [])
        self.assertEqual(plan.framing, BodyFraming.CLOSE)
        self.assertFalse(plan.keep_alive)
        self.assertEqual(plan.connection, b"close")

    def test_http10_keep_alive(self) -> None:
        """An HTTP/1.0 keep-alive request with a length answer gets connection: keep-alive."""
        request = self._request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        plan = plan_response(request, 200, [(b"content-length", b"0")])
        self.assertTrue(plan.keep_alive)
        self.assertEqual(plan.connection, b"keep-alive")

    def test_ends_now_gets_zero_length(self) -> None:
        """A response that ends with its head is sent with content-length: 0."""
        plan = plan_response(self._request(), 404, [], ends_now=True)
        self.assertEqual(plan.framing, BodyFraming.LENGTH)
        self.assertEqual(plan.content_length, b"0")

    def test_no_body_statuses(self) -> None:
        """HEAD, 1xx, 204 and 304 have no body; 204 loses content-length, HEAD and 304
        keep the handler's."""
        headers = [(b"content-length", b"10")]
        head_request = self._request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        plan = plan_response(head_request, 200, headers)
        self.assertEqual((plan.framing, plan.content_length), (BodyFraming.NONE, b"10"))
        plan = plan_response(self._request(), 304, headers)
        self.assertEqual((plan.framing, plan.content_length), (BodyFraming.NONE, b"10"))
        plan = plan_response(self._request(), 204, headers)
        self.assertEqual((plan.framing, plan.content_length), (BodyFraming.NONE, None))
        plan = plan_response(head_request, 200, [], ends_now=True)
        self.assertIsNone(plan.content_length)
        self.assertFalse(body_allowed(b"HEAD", 200))
        self.assertFalse(body_allowed(b"GET", 204))
        self.assertTrue(body_allowed(b"GET", 200))

    def test_bad_handler_length_ignored(self) -> None:
        """A malformed or conflicting content-length from the handler is not sent."""
        request = self._request()
        for headers in (
            [(b"content-length", b"x")],
            [(b"content-length", b"1"), (b"content-length", b"2")],
        ):
            plan = plan_response(request, 200, headers)
            self.assertEqual(plan.framing, BodyFraming.CHUNKED)
            self.assertNotIn(b"content-length", serialize_response_head(200, headers, plan))

    def test_trailers_only_when_asked(self) -> None:
        """Trailers go out only in chunked responses to clients that sent TE: trailers."""
        plain = self._request()
        asking = self._request(b"GET / HTTP/1.1\r\nHost: h\r\nTE: trailers\r\n\r\n")
        self.assertFalse(plan_response(plain, 200, []).send_trailers)
        self.assertTrue(plan_response(asking, 200, []).send_trailers)
        self.assertFalse(plan_response(asking, 200, [(b"content-length", b"1")]).send_trailers)

    def test_close_requested(self) -> None:
        """close=True and Connection: close requests add connection: close."""
        plan = plan_response(self._request(), 200, [], close=True)
        self.assertFalse(plan.keep_alive)
        self.assertIn(b"connection: close\r\n", serialize_response_head(200, [], plan))
        request = self._request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        self.assertFalse(plan_response(request, 200, []).keep_alive)

    def test_response_splitting_refused(self) -> None:
        """A header value with CR or LF raises instead of splitting the response."""
        plan = plan_response(self._request(), 200, [])
        self.assertRaises(
            ValueError, serialize_response_head, 200, [(b"x", b"a\r\nx-evil: 1")], plan
        )
        self.assertRaises(ValueError, last_chunk, [(b"x", b"a\nb")])

    def test_unknown_status_reason(self) -> None:
        """A status without a known reason phrase gets an empty one."""
        plan = plan_response(self._request(), 599, [], ends_now=True)
        self.assertTrue(serialize_response_head(599, [], plan).startswith(b"HTTP/1.1 599 \r\n"))

    def test_chunks(self) -> None:
        """Chunk framing and the last chunk with and without trailers."""
        self.assertEqual(frame_chunk(b"hello world!!!!!"), b"10\r\nhello world!!!!!\r\n")
        self.assertEqual(last_chunk(), b"0\r\n\r\n")
        self.assertEqual(last_chunk([(b"grpc-status", b"0")]), b"0\r\ngrpc-status: 0\r\n\r\n")

    def test_interim(self) -> None:
        """Interim responses are a status line and fields only."""
        self.assertEqual(serialize_interim_response(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(
            serialize_interim_response(103, [(b"link", b"</a>")]),
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n",
        )
        self.assertRaises(ValueError, serialize_interim_response, 101)

    def test_error_response(self) -> None:
        """A local error response carries the JSON error body and closes."""
        data = serialize_error_response(431, "request head too large")
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        self.assertIn(b"connection: close", head)
        self.assertIn(b"content-length: %d" % len(body), head)
        self.assertEqual(body, b'{"code":8,"message":"request head too large","details":[]}\n')
