# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.upstream.h1client: request serialization and strict response parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import ResponseError
from eventgw.upstream.h1client import (
    NEED_DATA,
    ClientConnection,
    Data,
    Ended,
    Event,
    LocalProtocolError,
    ResponseHead,
)

Headers = list[tuple[bytes, bytes]]


def started(method: bytes = b"GET") -> ClientConnection:
    """A connection with a bodiless request sent."""
    conn = ClientConnection()
    conn.send_request(method, b"/x", b"up:80", [], content_length=0)
    return conn


def drain(conn: ClientConnection) -> list[Event]:
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, Ended):
            return events


def feed(conn: ClientConnection, data: bytes, *, bytewise: bool = False) -> list[Event]:
    """Feed ``data`` (whole or one byte at a time), collecting events until Ended."""
    if not bytewise:
        conn.receive_data(data)
        return drain(conn)
    events: list[Event] = []
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
        events += drain(conn)
    return events


def merged(events: list[Event]) -> tuple[ResponseHead, bytes, Headers | None]:
    """The head, the joined body and the trailers (None if not Ended)."""
    head = events[0]
    assert isinstance(head, ResponseHead)
    body = b"".join(e.data for e in events if isinstance(e, Data))
    ended = [e for e in events if isinstance(e, Ended)]
    return head, body, ended[0].trailers if ended else None


class RequestSerializationTests(SynchronousTestCase):
    def test_get_head(self) -> None:
        """A bodiless GET has the upstream's Host, the headers in order, no framing."""
        conn = ClientConnection()
        head = conn.send_request(
            b"GET", b"/api/x?y=1", b"up.example:8080", [(b"accept", b"*/*"), (b"a", b"1")],
            content_length=0,
        )
        self.assertEqual(
            head,
            b"GET /api/x?y=1 HTTP/1.1\r\nhost: up.example:8080\r\naccept: */*\r\na: 1\r\n\r\n",
        )
        self.assertTrue(conn.request_complete)

    def test_empty_post_says_zero(self) -> None:
        """An empty POST body is announced as content-length: 0."""
        head = ClientConnection().send_request(b"POST", b"/", b"h", [], content_length=0)
        self.assertIn(b"\r\ncontent-length: 0\r\n", head)

    def test_known_length_body(self) -> None:
        """A known length goes out as content-length and the body is passed through."""
        conn = ClientConnection()
        head = conn.send_request(b"PUT", b"/", b"h", [], content_length=5)
        self.assertTrue(head.endswith(b"content-length: 5\r\n\r\n"))
        self.assertEqual(conn.send_body(b"abc"), b"abc")
        self.assertRaises(LocalProtocolError, conn.send_body, b"def")
        self.assertEqual(conn.send_body(b"de"), b"de")
        self.assertEqual(conn.send_end(), b"")
        self.assertTrue(conn.request_complete)

    def test_short_body_is_an_error(self) -> None:
        """Ending a body before its content-length is reached raises."""
        conn = ClientConnection()
        conn.send_request(b"PUT", b"/", b"h", [], content_length=5)
        conn.send_body(b"ab")
        self.assertRaises(LocalProtocolError, conn.send_end)

    def test_unknown_length_is_chunked(self) -> None:
        """An unknown length is sent chunked, with trailers at the end."""
        conn = ClientConnection()
        head = conn.send_request(b"POST", b"/", b"h", [], content_length=None)
        self.assertTrue(head.endswith(b"transfer-encoding: chunked\r\n\r\n"))
        self.assertEqual(conn.send_body(b"hello world!"), b"c\r\nhello world!\r\n")
        self.assertEqual(conn.send_body(b""), b"")
        self.assertEqual(conn.send_end([(b"x-sum", b"1")]), b"0\r\nx-sum: 1\r\n\r\n")

    def test_chunked_end_without_trailers(self) -> None:
        """The last chunk without trailers is 0 CRLF CRLF."""
        conn = ClientConnection()
        conn.send_request(b"POST", b"/", b"h", [], content_length=None)
        self.assertEqual(conn.send_end(), b"0\r\n\r\n")

    def test_injection_rejected(self) -> None:
        """CR, LF or NUL in a value, or a space in the target, never reach the wire."""
        for headers in ([(b"a", b"x\r\nevil: 1")], [(b"a", b"x\nb")], [(b"a", b"\0")]):
            self.assertRaises(
                LocalProtocolError,
                ClientConnection().send_request, b"GET", b"/", b"h", headers, content_length=0,
            )
        self.assertRaises(
            LocalProtocolError,
            ClientConnection().send_request, b"GET", b"/ HTTP/1.1", b"h", [], content_length=0,
        )

    def test_one_request_at_a_time(self) -> None:
        """A second request before the first response ended is refused."""
        conn = started()
        self.assertRaises(
            LocalProtocolError, conn.send_request, b"GET", b"/", b"h", [], content_length=0
        )


class ResponseParsingTests(SynchronousTestCase):
    def check_both_ways(self, raw: bytes, method: bytes = b"GET") -> list[Event]:
        """Parse whole and byte by byte; both must give the same head, body, trailers."""
        whole = feed(started(method), raw)
        bytewise = feed(started(method), raw, bytewise=True)
        self.assertEqual(merged(whole), merged(bytewise))
        return whole

    def test_content_length(self) -> None:
        """A content-length body ends after exactly that many bytes; keep-alive holds."""
        conn = started()
        events = feed(
            conn, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhello"
        )
        head, body, trailers = merged(events)
        self.assertEqual((head.status, head.reason, head.http_version), (200, b"OK", b"HTTP/1.1"))
        self.assertEqual(head.headers, [(b"content-length", b"5"), (b"x-a", b"b")])
        self.assertTrue(head.has_body)
        self.assertEqual((body, trailers), (b"hello", []))
        self.assertTrue(conn.reusable)
        conn.start_next_cycle()
        conn.send_request(b"GET", b"/", b"h", [], content_length=0)

    def test_bytewise_equivalence(self) -> None:
        """Every framing parses the same whether fed whole or one byte at a time."""
        cases = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nx-t: 1\r\ny: 2\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nz",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
        for raw in cases:
            events = self.check_both_ways(raw)
            self.assertIsNotNone(merged(events)[2])

    def test_chunked_with_trailers(self) -> None:
        """A chunked body is de-chunked and its trailers come with Ended."""
        conn = started()
        events = feed(
            conn,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nGrpc-Status: 0\r\n\r\n",
        )
        _, body, trailers = merged(events)
        self.assertEqual(body, b"hello world")
        self.assertEqual(trailers, [(b"grpc-status", b"0")])
        self.assertTrue(conn.reusable)

    def test_small_chunks_coalesce(self) -> None:
        """Many chunks that arrive in one read come out as one Data event."""
        conn = started()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(b"line %d;" % i), b"line %d;" % i)
                          for i in range(1000))
        events = feed(
            conn,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
        )
        self.assertEqual([type(e) for e in events], [ResponseHead, Data, Ended])
        self.assertEqual(merged(events)[1], b"".join(b"line %d;" % i for i in range(1000)))
        self.assertTrue(conn.reusable)

    def test_interim_responses_skipped(self) -> None:
        """100 Continue and 103 Early Hints are skipped; the final response follows."""
        events = feed(
            started(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        )
        head, body, trailers = merged(events)
        self.assertEqual((head.status, head.has_body, body, trailers), (200, False, b"", []))

    def test_no_body_cases(self) -> None:
        """HEAD responses, 204 and 304 have no body whatever their headers say."""
        for method, raw in [
            (b"HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"),
            (b"GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n"),
            (b"GET", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"),
        ]:
            conn = started(method)
            head, body, trailers = merged(feed(conn, raw))
            self.assertFalse(head.has_body)
            self.assertEqual((body, trailers), (b"", []))
            self.assertTrue(conn.reusable)

    def test_close_delimited(self) -> None:
        """Without framing headers the body runs until the upstream closes."""
        conn = started()
        events = feed(conn, b"HTTP/1.1 200 OK\r\n\r\npart one ")
        self.assertIsNone(merged(events)[2])
        conn.receive_data(b"part two")
        conn.receive_data(b"")
        events += drain(conn)
        self.assertEqual(merged(events)[1:], (b"part one part two", []))
        self.assertFalse(conn.reusable)

    def test_connection_close_not_reusable(self) -> None:
        """Connection: close, HTTP/1.0 and stray bytes after a response prevent reuse."""
        for raw in [
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nextra",
        ]:
            conn = started()
            self.assertIsInstance(feed(conn, raw)[-1], Ended)
            self.assertFalse(conn.reusable, raw)

    def test_not_reusable_before_request_sent(self) -> None:
        """A response that ends while the request body is unsent leaves it unusable."""
        conn = ClientConnection()
        conn.send_request(b"POST", b"/", b"h", [], content_length=10)
        feed(conn, b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
        self.assertTrue(conn.response_complete)
        self.assertFalse(conn.reusable)

    def test_garbage_status_line(self) -> None:
        """A response that does not start like a status line fails at once."""
        for raw in [b"garbage\r\n\r\n", b"SSH-2.0-OpenSSH\r\n", b"X"]:
            self.assertRaises(ResponseError, feed, started(), raw)
        for raw in [
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 700 Odd\r\n\r\n",
            b"HTTP/1.1 200 OK\x01\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
        ]:
            self.assertRaises(ResponseError, feed, started(), raw)

    def test_garbage_bytewise(self) -> None:
        """Byte-at-a-time garbage fails as soon as it cannot be a status line."""
        conn = started()
        conn.receive_data(b"H")
        self.assertIs(conn.next_event(), NEED_DATA)
        conn.receive_data(b"X")
        self.assertRaises(ResponseError, conn.next_event)
        self.assertRaises(ResponseError, conn.next_event)
        self.assertFalse(conn.reusable)

    def test_bad_headers_rejected(self) -> None:
        """CL+TE, bad or duplicate CL, odd codings, obs-fold and control bytes fail."""
        bad = [
            b"content-length: 3\r\ntransfer-encoding: chunked",
            b"content-length: -3",
            b"content-length: +3",
            b"content-length: 3, 3",
            b"content-length: 3\r\ncontent-length: 3",
            b"content-length: ",
            b"content-length: 1234567890123456789",
            b"transfer-encoding: gzip, chunked",
            b"transfer-encoding: chunked\r\ntransfer-encoding: chunked",
            b"x-a: 1\r\n folded",
            b"x-a: 1\r\n\tfolded",
            b"x a: 1",
            b"x-a : 1",
            b"x-a: nul\0byte",
            b"x-a: bare\rcr",
            b"x-a: bare\nlf",
            b": empty-name",
            b"no colon",
        ]
        for header in bad:
            raw = b"HTTP/1.1 200 OK\r\n" + header + b"\r\n\r\nabc"
            self.assertRaises(ResponseError, feed, started(), raw)

    def test_te_in_http10_rejected(self) -> None:
        """Transfer-Encoding in an HTTP/1.0 response means faulty framing."""
        raw = b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        self.assertRaises(ResponseError, feed, started(), raw)

    def test_switching_protocols_rejected(self) -> None:
        """101 is never asked for, so it is an error."""
        raw = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"
        self.assertRaises(ResponseError, feed, started(), raw)

    def test_head_too_large(self) -> None:
        """A response head over the limit fails, with or without its blank line."""
        conn = ClientConnection(max_head_bytes=1024)
        conn.send_request(b"GET", b"/", b"h", [], content_length=0)
        conn.receive_data(b"HTTP/1.1 200 OK\r\n" + b"x-a: " + b"a" * 2000)
        self.assertRaises(ResponseError, conn.next_event)
        conn = ClientConnection(max_head_bytes=1024)
        conn.send_request(b"GET", b"/", b"h", [], content_length=0)
        conn.receive_data(b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 2000 + b"\r\n\r\n")
        self.assertRaises(ResponseError, conn.next_event)

    def test_bad_chunks_rejected(self) -> None:
        """Bad chunk sizes, missing CRLF after data and bad trailers fail."""
        prefix = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        for body in [
            b"x\r\n",
            b"-1\r\n",
            b"0x3\r\nabc\r\n",
            b"3\r\nabcXX",
            b"3\nabc\r\n",
            b"11111111111111111\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"3;" + b"e" * 5000 + b"\r\n",
        ]:
            self.assertRaises(ResponseError, feed, started(), prefix + body)

    def test_early_close(self) -> None:
        """EOF before any byte is flagged no_response; EOF mid-body is an error."""
        conn = started()
        conn.receive_data(b"")
        with self.assertRaises(ResponseError) as caught:
            conn.next_event()
        self.assertTrue(caught.exception.no_response)
        for raw in [
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
        ]:
            conn = started()
            conn.receive_data(raw)
            drain(conn)
            conn.receive_data(b"")
            with self.assertRaises(ResponseError) as caught:
                drain(conn)
            self.assertFalse(caught.exception.no_response)

    def test_error_status_is_502(self) -> None:
        """ResponseError carries the 502 the gateway answers with."""
        self.assertEqual(ResponseError("x").http_status, 502)

    def test_large_body_streams(self) -> None:
        """Body bytes are handed out as they arrive, without waiting for the end."""
        conn = started()
        conn.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
        head = conn.next_event()
        self.assertIsInstance(head, ResponseHead)
        total = 0
        for _ in range(10):
            conn.receive_data(b"x" * 10000)
            event = conn.next_event()
            assert isinstance(event, Data)
            total += len(event.data)
            self.assertEqual(len(event.data), 10000)
        self.assertEqual(total, 100000)
        self.assertIsInstance(conn.next_event(), Ended)


_VALID = [
    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: b\r\n\r\nabc",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n1;x=y\r\nd\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n",
]


class ResponseFuzzTests(SynchronousTestCase):
    @given(st.binary(max_size=200))
    def test_garbage_only_raises_response_error(self, data: bytes) -> None:
        """Arbitrary bytes (then EOF) give events or ResponseError, nothing else."""
        conn = started()
        try:
            feed(conn, data)
            conn.receive_data(b"")
            drain(conn)
        except ResponseError:
            self.assertFalse(conn.reusable)

    @given(st.sampled_from(_VALID), st.lists(st.integers(0, 300), max_size=6))
    def test_any_split_gives_the_same_response(self, raw: bytes, cuts: list[int]) -> None:
        """However a valid response is split into reads, the result is the same."""
        expected = merged(feed(started(), raw))
        conn = started()
        events: list[Event] = []
        start = 0
        for cut in sorted(cuts):
            if raw[start:cut]:  # b"" would mean EOF
                conn.receive_data(raw[start:cut])
                events += drain(conn)
            start = max(start, cut)
        conn.receive_data(raw[start:])
        events += drain(conn)
        self.assertEqual(merged(events), expected)

    @given(
        st.binary(min_size=1, max_size=40).filter(
            lambda v: v.strip(b" \t") == v and b"\r\n" not in v
        )
    )
    def test_header_values_with_control_bytes_rejected(self, value: bytes) -> None:
        """A header value is accepted exactly when it holds no control byte but HTAB."""
        raw = b"HTTP/1.1 200 OK\r\nx-v: " + value + b"\r\ncontent-length: 0\r\n\r\n"
        clean = all(b == 9 or 32 <= b != 127 for b in value)
        try:
            head = feed(started(), raw)[0]
        except ResponseError:
            self.assertFalse(clean, value)
        else:
            self.assertTrue(clean, value)
            assert isinstance(head, ResponseHead)
            self.assertEqual(head.headers[0], (b"x-v", value))
