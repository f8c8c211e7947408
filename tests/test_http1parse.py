# -*- test-case-name: tests.test_http1parse -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.downstream.http1parse: the strict HTTP/1.1 request parser."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.downstream.http1frame import frame_chunk, last_chunk
from eventgw.downstream.http1parse import (
    MAX_CHUNK_EXTENSION_BYTES,
    MAX_HEADER_COUNT,
    MAX_REQUEST_LINE_BYTES,
    NEED_DATA,
    PAUSED,
    BodyData,
    Event,
    Headers,
    MessageEnded,
    RequestHeadParsed,
    RequestParser,
)
from eventgw.errors import GatewayError, RequestError

MAX_HEADER = 8192


def parse(
    data: bytes,
    *,
    step: int | None = None,
    max_header: int = MAX_HEADER,
    max_body: int | None = None,
) -> list[Event]:
    """Feed ``data`` (in ``step``-byte pieces) and collect every event, pipelining on."""
    parser = RequestParser(max_header, max_body)
    events: list[Event] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                parser.start_next()
                continue
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
    return events


def merged(events: list[Event]) -> list[Event]:
    """Join consecutive BodyData events, so byte-at-a-time runs compare equal."""
    out: list[Event] = []
    for event in events:
        if isinstance(event, BodyData) and out and isinstance(out[-1], BodyData):
            out[-1] = BodyData(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def head_of(events: list[Event]) -> RequestHeadParsed:
    head = events[0]
    assert isinstance(head, RequestHeadParsed)
    return head


GET = b"GET /api/x?y=1 HTTP/1.1\r\nHost: gw.test\r\nAccept: */*\r\n\r\n"


class RequestParserTests(SynchronousTestCase):
    """Well-formed requests produce the expected events."""

    def test_simple_get(self) -> None:
        """A GET without body is a head and an immediate MessageEnded."""
        events = parse(GET)
        head = head_of(events)
        self.assertEqual(head.method, b"GET")
        self.assertEqual(head.target, b"/api/x?y=1")
        self.assertEqual(head.version, b"HTTP/1.1")
        self.assertEqual(head.headers, [(b"host", b"gw.test"), (b"accept", b"*/*")])
        self.assertEqual(head.content_length, 0)
        self.assertFalse(head.chunked)
        self.assertTrue(head.keep_alive)
        self.assertFalse(head.expect_continue)
        self.assertEqual(head.host, b"gw.test")
        self.assertEqual(events[1:], [MessageEnded([])])

    def test_header_names_lowercased_values_trimmed(self) -> None:
        """Field names are lower-cased, values lose surrounding SP/HTAB, order and
        repeats are kept."""
        events = parse(
            b"GET / HTTP/1.1\r\nHOST:gw\r\nX-A: \t one \t\r\nx-a: two\r\nX-Empty:\r\n\r\n"
        )
        self.assertEqual(
            head_of(events).headers,
            [(b"host", b"gw"), (b"x-a", b"one"), (b"x-a", b"two"), (b"x-empty", b"")],
        )

    def test_content_length_body(self) -> None:
        """A Content-Length body comes out as BodyData then MessageEnded."""
        events = parse(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(head_of(events).content_length, 5)
        self.assertEqual(events[1:], [BodyData(b"hello"), MessageEnded([])])

    def test_chunked_body_with_trailers(self) -> None:
        """Chunked bodies are de-chunked; extensions are ignored; trailers are returned,
        framing fields among them dropped."""
        data = (
            b"POST /e HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;name=value\r\nhello\r\n"
            b"6 ; x\r\n world\r\n"
            b"0\r\nX-Checksum: abc\r\nContent-Length: 99\r\n\r\n"
        )
        events = merged(parse(data))
        head = head_of(events)
        self.assertTrue(head.chunked)
        self.assertIsNone(head.content_length)
        self.assertEqual(
            events[1:], [BodyData(b"hello world"), MessageEnded([(b"x-checksum", b"abc")])]
        )

    def test_transfer_encoding_case_and_whitespace(self) -> None:
        """``Transfer-Encoding: CHUNKED`` with surrounding spaces is accepted."""
        data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  ChUnKeD \r\n\r\n0\r\n\r\n"
        self.assertEqual(parse(data)[1:], [MessageEnded([])])

    def test_byte_at_a_time(self) -> None:
        """Feeding one byte at a time gives the same events as feeding everything."""
        cases = [
            GET,
            b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /e HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;a=b\r\n!\r\n0\r\nX-T: 1\r\n\r\n",
        ]
        for data in cases:
            self.assertEqual(merged(parse(data, step=1)), merged(parse(data)))

    def test_pipelining(self) -> None:
        """Several requests in one buffer come out in order, one at a time, with PAUSED
        between them until start_next()."""
        second = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(GET + second + GET)
        self.assertIsInstance(parser.next_event(), RequestHeadParsed)
        self.assertEqual(parser.next_event(), MessageEnded([]))
        self.assertIs(parser.next_event(), PAUSED)
        self.assertIs(parser.next_event(), PAUSED)
        self.assertEqual(parser.buffered, len(second) + len(GET))
        parser.start_next()
        head = parser.next_event()
        assert isinstance(head, RequestHeadParsed)
        self.assertEqual(head.target, b"/b")
        self.assertEqual(parser.next_event(), BodyData(b"ok"))
        self.assertEqual(parser.next_event(), MessageEnded([]))
        parser.start_next()
        self.assertIsInstance(parser.next_event(), RequestHeadParsed)
        self.assertEqual(parser.next_event(), MessageEnded([]))
        parser.start_next()
        self.assertIs(parser.next_event(), NEED_DATA)

    def test_start_next_mid_body(self) -> None:
        """start_next() before the body ended is a programming error."""
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n")
        parser.next_event()
        self.assertRaises(RuntimeError, parser.start_next)

    def test_leading_empty_lines_ignored(self) -> None:
        """CRLFs before a request line are skipped (RFC 9112 section 2.2)."""
        self.assertEqual(parse(b"\r\n\r\n" + GET), parse(GET))

    def test_consumed_counts_bytes(self) -> None:
        """``consumed`` counts every byte the events covered."""
        data = (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nab\r\n0\r\n\r\n"
        )
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(data)
        while parser.next_event() is not PAUSED:
            pass
        self.assertEqual(parser.consumed, len(data))

    def test_remaining_body(self) -> None:
        """remaining_body reports what a Content-Length body still owes, None when
        chunked."""
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
        parser.next_event()
        parser.next_event()
        self.assertEqual(parser.remaining_body, 7)
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        parser.next_event()
        self.assertIsNone(parser.remaining_body)

    def test_http10(self) -> None:
        """HTTP/1.0 needs no Host and is keep-alive only with Connection: keep-alive."""
        head = head_of(parse(b"GET / HTTP/1.0\r\n\r\n"))
        self.assertEqual(head.version, b"HTTP/1.0")
        self.assertFalse(head.keep_alive)
        self.assertEqual(head.host, b"")
        head = head_of(parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))
        self.assertTrue(head.keep_alive)

    def test_http10_ignores_expect(self) -> None:
        """Expect: 100-continue from an HTTP/1.0 client is ignored (RFC 9110 10.1.1)."""
        head = head_of(parse(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n"))
        self.assertFalse(head.expect_continue)

    def test_connection_close(self) -> None:
        """Connection: close on HTTP/1.1 turns keep-alive off, whatever its case."""
        head = head_of(parse(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, CLOSE\r\n\r\n"))
        self.assertFalse(head.keep_alive)

    def test_expect_continue_and_te_trailers(self) -> None:
        """Expect: 100-continue and TE: trailers are reported."""
        head = head_of(
            parse(
                b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                b"TE: gzip, trailers\r\nContent-Length: 1\r\n\r\n"
            )
        )
        self.assertTrue(head.expect_continue)
        self.assertTrue(head.accepts_trailers)

    def test_absolute_form(self) -> None:
        """An absolute-form target is reduced to origin-form; its authority wins over
        Host (RFC 9112 section 3.2.2)."""
        head = head_of(parse(b"GET http://api.test:80?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"))
        self.assertEqual(head.target, b"/?q=1")
        self.assertEqual(head.host, b"api.test:80")
        self.assertEqual(head.headers, [(b"host", b"api.test:80")])
        head = head_of(parse(b"GET HTTPS://api.test/a/b HTTP/1.1\r\nHost: x\r\n\r\n"))
        self.assertEqual(head.target, b"/a/b")

    def test_asterisk_form_for_options(self) -> None:
        """``OPTIONS *`` is accepted."""
        self.assertEqual(head_of(parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")).target, b"*")

    def test_h2_preface_without_alpn(self) -> None:
        """The HTTP/2 preface reaching the HTTP/1.1 parser (TLS without ALPN) is a 400
        that says what to do, not a complaint about its asterisk-form target."""
        error = self.assertRaises(RequestError, parse, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        self.assertEqual(error.http_status, 400)
        self.assertIn("ALPN h2", str(error))

    def test_body_limit_declared(self) -> None:
        """A declared Content-Length over the body limit is a 413 at the head."""
        error = self.assertRaises(
            RequestError,
            parse,
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n",
            max_body=10,
        )
        self.assertEqual(error.http_status, 413)

    def test_body_limit_chunked(self) -> None:
        """A chunked body growing over the body limit is a 413."""
        data = (
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"6\r\nabcdef\r\n6\r\nabcdef\r\n"
        )
        error = self.assertRaises(RequestError, parse, data, max_body=10)
        self.assertEqual(error.http_status, 413)

    def test_error_is_sticky(self) -> None:
        """After an error every call raises it again and nothing more is parsed."""
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n" + GET)
        first = self.assertRaises(RequestError, parser.next_event)
        second = self.assertRaises(RequestError, parser.next_event)
        self.assertIs(first, second)
        self.assertEqual(parser.buffered, 0)

    def test_request_error_is_gateway_error(self) -> None:
        """RequestError is a GatewayError with a matching gRPC code."""
        error = RequestError("too big", 431)
        self.assertIsInstance(error, GatewayError)
        self.assertEqual(error.http_status, 431)
        self.assertEqual(error.grpc_status, 8)


# (name, request bytes, expected status).  Every case must be refused before any
# event that would let a body or a second request through.
REJECTED: list[tuple[str, bytes, int]] = [
    # --- Content-Length / Transfer-Encoding conflicts (RFC 9112 6.1, 6.3, 11.2) ---
    ("cl-and-te", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"Content-Length: 3\r\n\r\n", 400),
    ("duplicate-cl-identical", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
     b"Content-Length: 3\r\n\r\nabc", 400),
    ("duplicate-cl-different", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
     b"Content-Length: 4\r\n\r\nabcd", 400),
    ("cl-list", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("cl-minus", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("cl-empty", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400),
    ("cl-underscore", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1_0\r\n\r\n", 400),
    ("cl-unicode-digit", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \xd9\xa3\r\n\r\n",
     400),
    ("cl-too-long", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1" + b"0" * 19
     + b"\r\n\r\n", 400),
    ("cl-inner-space", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n", 400),
    ("te-identity-after", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, "
     b"identity\r\n\r\n", 400),
    ("te-xchunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("te-chunked-x", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n", 400),
    ("te-quoted", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n",
     400),
    ("te-vtab", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\x0b\r\n\r\n", 400),
    ("te-formfeed", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0cchunked\r\n\r\n",
     400),
    ("te-obs-fold", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
     400),
    ("te-duplicate", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),
    ("te-chunked-twice", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, "
     b"chunked\r\n\r\n", 400),
    ("te-gzip-only", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    ("te-empty", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", 400),
    ("te-gzip-chunked", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, "
     b"chunked\r\n\r\n", 501),
    ("te-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-space-before-colon", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : "
     b"chunked\r\n\r\n", 400),
    # --- header syntax (RFC 9112 5.1, 5.2; RFC 9110 5.5) ---
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tcontinued\r\n\r\n", 400),
    ("obs-fold-space", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n continued\r\n\r\n", 400),
    ("first-header-folded", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    ("cr-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400),
    ("lf-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nb\r\n\r\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n", 400),
    ("tab-before-colon", b"GET / HTTP/1.1\r\nHost: h\r\nX-A\t: 1\r\n\r\n", 400),
    ("bad-name-char", b"GET / HTTP/1.1\r\nHost: h\r\nX(A): 1\r\n\r\n", 400),
    ("name-with-slash", b"GET / HTTP/1.1\r\nHost: h\r\nX/A: 1\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\nHost: h\r\n: 1\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: h\r\nX-A 1\r\n\r\n", 400),
    ("non-ascii-name", b"GET / HTTP/1.1\r\nHost: h\r\nX-\xc3\xa9: 1\r\n\r\n", 400),
    # --- line endings ---
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    ("bare-lf-in-head", b"GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: h\r\n\r\n", 400),
    ("bare-cr", b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
    ("lf-cr-terminator", b"GET / HTTP/1.1\r\nHost: h\n\r\n", 400),
    # --- request line ---
    ("double-space", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", 400),
    ("leading-space", b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("tab-separator", b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("missing-version", b"GET /\r\nHost: h\r\n\r\n", 400),
    ("http09", b"GET /\r\n\r\n", 400),
    ("lowercase-version", b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    ("bad-version", b"GET / HTTP/1.x\r\nHost: h\r\n\r\n", 400),
    ("version-2", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    ("version-12", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
    ("bad-method", b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # An invalid line is a 400 whatever its version says: the form before the version.
    ("bad-method-bad-version", b"G@T / HTTP/9.9\r\nHost: h\r\n\r\n", 400),
    ("bad-method-version-2", b"G(T / HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    ("bad-target-bad-version", b"GET a\x01 HTTP/9.9\r\nHost: h\r\n\r\n", 400),
    ("relative-target-version-2", b"GET api/x HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    ("asterisk-get-version-2", b"GET * HTTP/2.0\r\nHost: h\r\n\r\n", 400),
    ("valid-line-version-99", b"GET /x HTTP/9.9\r\nHost: h\r\n\r\n", 505),
    ("empty-method", b" / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("connect", b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n", 501),
    ("relative-target", b"GET api/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("authority-form-get", b"GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("asterisk-get", b"GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("fragment", b"GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("control-in-target", b"GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("non-ascii-target", b"GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("absolute-userinfo", b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("absolute-no-host", b"GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("absolute-ftp", b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    # --- Host (RFC 9112 3.2) ---
    ("no-host", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two-hosts-http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    # --- chunked framing (RFC 9112 7.1) ---
    ("chunk-size-not-hex", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"g\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-plus", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"+3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-minus", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"-3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-0x", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0x3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-underscore", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n", 400),
    ("chunk-size-leading-space", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
     b"chunked\r\n\r\n 3\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-trailing-space", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
     b"chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-empty", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-size-too-long", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n" + b"0" * 16 + b"1\r\na\r\n0\r\n\r\n", 400),
    ("chunk-size-bare-lf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n3\nabc\r\n0\r\n\r\n", 400),
    ("chunk-data-no-crlf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("chunk-data-bare-lf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n3\r\nabc\n0\r\n\r\n", 400),
    ("chunk-data-too-long", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n2\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-extension-control", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
     b"chunked\r\n\r\n3;a=\x00\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-extension-bare-cr", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
     b"chunked\r\n\r\n3;a=\rb\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk-line-too-long", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n3;" + b"a" * 5000 + b"\r\nabc\r\n0\r\n\r\n", 400),
    ("trailer-obs-fold", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\nX-A: 1\r\n folded\r\n\r\n", 400),
    ("trailer-bare-lf", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\nX-A: 1\n\r\n", 400),
    ("trailer-bad-name", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\nX A: 1\r\n\r\n", 400),
    # --- sizes ---
    ("head-too-large", b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * MAX_HEADER
     + b"\r\n\r\n", 431),
    ("head-too-large-unterminated", b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "
     + b"a" * MAX_HEADER, 431),
    ("too-many-fields", b"GET / HTTP/1.1\r\nHost: h\r\n" + b"a:\r\n" * MAX_HEADER_COUNT
     + b"\r\n", 431),
    ("trailers-too-large", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
     b"\r\n0\r\nX-Big: " + b"a" * MAX_HEADER + b"\r\n\r\n", 431),
]


class SmugglingTests(SynchronousTestCase):
    """Every ambiguous or malformed framing is refused with the right status, whole or
    byte by byte, before any body byte or second request can get through."""

    def _check(self, name: str, data: bytes, status: int, step: int | None) -> None:
        parser = RequestParser(MAX_HEADER)
        events: list[Event] = []
        pieces = [data] if step is None else [data[i : i + step] for i in range(len(data))]
        try:
            for piece in pieces:
                parser.receive_data(piece)
                while True:
                    event = parser.next_event()
                    if event is NEED_DATA or event is PAUSED:
                        break
                    assert not isinstance(event, type(NEED_DATA))
                    events.append(event)
        except RequestError as error:
            self.assertEqual(error.http_status, status, f"{name}: {error!r}")
        else:
            self.fail(f"{name}: accepted, events {events!r}")
        # Nothing after the head may have been produced for head errors.
        if not data.startswith(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"):
            self.assertEqual(events, [], name)

    def test_rejected_whole(self) -> None:
        """Each case fed at once is refused with the table's status."""
        for name, data, status in REJECTED:
            self._check(name, data, status, None)

    def test_rejected_byte_at_a_time(self) -> None:
        """Each case fed one byte at a time is refused with the same status."""
        for name, data, status in REJECTED:
            self._check(name, data, status, 1)

    def test_request_line_too_long(self) -> None:
        """A request line beyond MAX_REQUEST_LINE_BYTES is a 414, even unterminated."""
        target = b"/" + b"a" * MAX_REQUEST_LINE_BYTES
        for data in (b"GET " + target, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n"):
            error = self.assertRaises(RequestError, parse, data, max_header=64 * 1024)
            self.assertEqual(error.http_status, 414)

    def test_chunk_extension_budget(self) -> None:
        """Chunk extensions are accepted but bounded per message."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"1;" + b"e" * 1000 + b"\r\na\r\n"
        count = MAX_CHUNK_EXTENSION_BYTES // 1000 + 1
        self.assertRaises(RequestError, parse, head + chunk * count)
        events = merged(parse(head + chunk * 3 + b"0\r\n\r\n"))
        self.assertEqual(events[1:], [BodyData(b"aaa"), MessageEnded([])])

    def test_bare_lf_detected_before_terminator(self) -> None:
        """A bare LF fails at once, without waiting for a head that never completes."""
        parser = RequestParser(MAX_HEADER)
        parser.receive_data(b"GET / HTTP/1.1\nHost")
        self.assertRaises(RequestError, parser.next_event)


# --- property tests ---------------------------------------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1,
                 max_size=12).map(str.encode)
_value = st.binary(max_size=30).map(
    lambda raw: bytes(b for b in raw if b == 9 or 0x20 <= b < 0x7F or b >= 0x80).strip(b" \t")
)
_path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", max_size=30).map(
    lambda text: b"/" + text.encode()
)
_reserved = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"te"}


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, bytes, bytes, Headers, bytes, bool]:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"X-CUSTOM"]))
    target = draw(_path)
    fields = [
        (name, value)
        for name, value in draw(st.lists(st.tuples(_token, _value), max_size=8))
        if name not in _reserved
    ]
    body = draw(st.binary(max_size=200))
    chunked = draw(st.booleans())
    return method, target, b"gw.test", fields, body, chunked



def _serialize_request(
    method: bytes, target: bytes, host: bytes, fields: Headers, body: bytes, chunked: bool,
    sizes: list[int],
) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: " + host]
    lines += [b"%s: %s" % (name, value) for name, value in fields]
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        out = bytearray(b"\r\n".join(lines) + b"\r\n\r\n")
        position = 0
        for size in sizes:
            piece = body[position : position + size]
            if piece:
                out += frame_chunk(piece)
            position += size
        if position < len(body):
            out += frame_chunk(body[position:])
        out += last_chunk()
        return bytes(out)
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class PropertyTests(SynchronousTestCase):
    """Hypothesis: serialized requests round-trip; garbage only ever raises RequestError."""

    @settings(max_examples=150, deadline=None)
    @given(_requests(), st.lists(st.integers(1, 64), max_size=5), st.integers(1, 7))
    def test_round_trip(
        self,
        request: tuple[bytes, bytes, bytes, Headers, bytes, bool],
        sizes: list[int],
        step: int,
    ) -> None:
        """A valid request parses back to what was serialized, in any feeding."""
        method, target, host, fields, body, chunked = request
        data = _serialize_request(method, target, host, fields, body, chunked, sizes)
        for events in (merged(parse(data * 2)), merged(parse(data * 2, step=step))):
            self.assertEqual(len(events), 2 * (3 if body else 2))
            head = head_of(events)
            self.assertEqual((head.method, head.target, head.host), (method, target, host))
            self.assertEqual(head.chunked, chunked)
            self.assertEqual(
                [(n, v) for n, v in head.headers if n not in _reserved],
                [(n.lower(), v) for n, v in fields],
            )
            got = b"".join(e.data for e in events if isinstance(e, BodyData))
            self.assertEqual(got, body * 2)
            self.assertIsInstance(events[-1], MessageEnded)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=300), st.integers(1, 50))
    def test_garbage_only_raises_request_error(self, data: bytes, step: int) -> None:
        """Arbitrary bytes produce events or RequestError, never another exception."""
        try:
            parse(data, step=step, max_header=256, max_body=1000)
        except RequestError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [b"GET", b" ", b"/", b"HTTP/1.1", b"HTTP/1.0", b"\r\n", b"\n", b"\r", b":",
                 b"Host", b"Content-Length", b"Transfer-Encoding", b"chunked", b"0", b"5",
                 b"a", b"\t", b",", b";", b"\x00", b"x-a", b"\r\n\r\n"]
            ),
            max_size=60,
        ),
        st.integers(1, 9),
    )
    def test_structured_garbage(self, parts: list[bytes], step: int) -> None:
        """HTTP-shaped garbage likewise never raises anything but RequestError, and
        feeding in pieces never changes the outcome."""
        data = b"".join(parts)
        outcomes = []
        for piece_step in (None, step):
            try:
                outcomes.append(merged(parse(data, step=piece_step)))
            except RequestError as error:
                outcomes.append([error.http_status])  # type: ignore[list-item]
        self.assertEqual(outcomes[0], outcomes[1])
