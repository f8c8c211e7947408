"""Request and response heads of the HTTP/2 server, as pure functions over header lists."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.downstream.h2heads import (
    PROTOCOL,
    Accepted,
    Malformed,
    Refused,
    RequestFacts,
    h2_request_head,
    h2_response_headers,
)
from eventgw.errors import GrpcStatus
from eventgw.exchange import Headers
from eventgw.grpc.relay import trailers_only

FACTS = RequestFacts(scheme=b"https", peer="10.1.2.3", max_header_bytes=4096)


def request(
    method: bytes = b"GET", path: bytes = b"/api/x", extra: Headers | None = None
) -> Headers:
    return [
        (b":method", method),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", b"gw.test"),
        *(extra or []),
    ]


class RequestHeadTests(SynchronousTestCase):
    def accepted(self, headers: Headers, *, end_stream: bool = True) -> Accepted:
        decided = h2_request_head(headers, FACTS, end_stream=end_stream)
        assert isinstance(decided, Accepted), decided
        return decided

    def test_pseudo_headers_become_the_head(self) -> None:
        """:method, :path and :authority fill the head; the rest stay headers, in order."""
        head = self.accepted(request(extra=[(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])).head
        self.assertEqual((head.method, head.target, head.authority), (b"GET", b"/api/x",
                                                                      b"gw.test"))
        self.assertEqual(head.headers, [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
        self.assertEqual((head.scheme, head.peer, head.protocol), (b"https", "10.1.2.3",
                                                                   PROTOCOL))

    def test_authority_falls_back_to_host(self) -> None:
        """Without :authority the host header names the authority."""
        headers = [h for h in request(extra=[(b"host", b"h.test")]) if h[0] != b":authority"]
        self.assertEqual(self.accepted(headers).head.authority, b"h.test")

    def test_content_length(self) -> None:
        """content-length is read when numeric; END_STREAM means no body (0)."""
        cl = [(b"content-length", b"12")]
        self.assertEqual(self.accepted(request(extra=cl), end_stream=False).head.content_length,
                         12)
        open_ended = self.accepted(request(), end_stream=False).head
        self.assertIsNone(open_ended.content_length)
        self.assertTrue(open_ended.body_expected)
        ended = self.accepted(request()).head
        self.assertEqual(ended.content_length, 0)
        self.assertFalse(ended.body_expected)
        junk = [(b"content-length", b"1x")]
        self.assertIsNone(
            self.accepted(request(extra=junk), end_stream=False).head.content_length
        )

    def test_declared_length(self) -> None:
        """The declared length goes to the stream; a declared 0 on an open stream is an
        unknown length for the target (END_STREAM, not the header, ends that body)."""
        twelve = self.accepted(request(extra=[(b"content-length", b"12")]), end_stream=False)
        self.assertEqual(twelve.declared_length, 12)
        zero = self.accepted(request(extra=[(b"content-length", b"0")]), end_stream=False)
        self.assertEqual((zero.declared_length, zero.head.content_length), (0, None))
        self.assertTrue(zero.head.body_expected)
        ended = self.accepted(request(extra=[(b"content-length", b"0")]))
        self.assertEqual((ended.declared_length, ended.head.content_length), (None, 0))

    def test_declared_length_on_ended_stream_is_malformed(self) -> None:
        """RFC 9113 section 8.1.1: content-length 5 with END_STREAM on HEADERS."""
        decided = h2_request_head(
            request(b"POST", extra=[(b"content-length", b"5")]), FACTS, end_stream=True
        )
        self.assertIsInstance(decided, Malformed)

    def test_method_and_path_form(self) -> None:
        """RFC 9113 section 8.3.1: :method is a token, :path origin-form or "*" for
        OPTIONS; anything else is malformed."""
        for headers in (
            request(b"G T"),
            request(b""),
            request(path=b"x"),
            request(path=b"*"),
            request(path=b"?q"),
        ):
            decided = h2_request_head(headers, FACTS, end_stream=True)
            self.assertIsInstance(decided, Malformed, headers)
        self.accepted(request(b"OPTIONS", b"*"))
        self.accepted(request(b"M-SEARCH", b"/a?b"))

    def test_expect_continue(self) -> None:
        """expect: 100-continue (any case) is reported, other expectations are not."""
        self.assertTrue(
            self.accepted(request(extra=[(b"expect", b"100-Continue")])).expect_continue
        )
        self.assertFalse(self.accepted(request(extra=[(b"expect", b"x")])).expect_continue)
        self.assertFalse(self.accepted(request()).expect_continue)

    def test_oversized_headers_are_431(self) -> None:
        """A header list over max_header_bytes is refused 431, with a log line."""
        decided = h2_request_head(request(extra=[(b"x-big", b"v" * 5000)]), FACTS,
                                  end_stream=True)
        assert isinstance(decided, Refused)
        self.assertEqual(decided.status, 431)
        self.assertIsNone(decided.reply)
        self.assertIsNotNone(decided.log)
        self.assertEqual(decided.head.target, b"/api/x")

    def test_size_counts_32_octets_per_field(self) -> None:
        """RFC 9113 section 6.5.2: a list of exactly the limit passes, one more octet not."""
        base = request()
        used = sum(len(n) + len(v) + 32 for n, v in base) + len(b"x-pad") + 32
        pad = b"v" * (FACTS.max_header_bytes - used)
        self.assertIsInstance(
            h2_request_head([*base, (b"x-pad", pad)], FACTS, end_stream=True), Accepted
        )
        self.assertIsInstance(
            h2_request_head([*base, (b"x-pad", pad + b"v")], FACTS, end_stream=True), Refused
        )

    def test_oversized_grpc_headers_are_resource_exhausted(self) -> None:
        """An oversized gRPC request gets a trailers-only RESOURCE_EXHAUSTED reply."""
        extra = [(b"content-type", b"application/grpc+proto"), (b"x-big", b"v" * 5000)]
        decided = h2_request_head(request(b"POST", b"/p.S/M", extra), FACTS, end_stream=False)
        assert isinstance(decided, Refused)
        assert decided.reply is not None
        self.assertEqual(dict(decided.reply)[b"grpc-status"], b"8")
        self.assertEqual(dict(decided.reply)[b"content-type"], b"application/grpc")
        # The one trailers-only builder the gRPC relay uses too.
        self.assertEqual(
            decided.reply,
            trailers_only(GrpcStatus.RESOURCE_EXHAUSTED, "request headers too large"),
        )

    def test_connect_is_not_implemented(self) -> None:
        """CONNECT is refused 501 with the HTTP/1.1 message, and not logged as abuse."""
        headers = [(b":method", b"CONNECT"), (b":authority", b"gw.test:443")]
        decided = h2_request_head(headers, FACTS, end_stream=False)
        assert isinstance(decided, Refused)
        self.assertEqual(
            (decided.status, decided.message, decided.log),
            (501, "CONNECT is not supported", None),
        )


class ResponseHeadersTests(SynchronousTestCase):
    def test_connection_specific_fields_dropped(self) -> None:
        """Connection-specific fields are dropped; te survives only as trailers."""
        self.assertEqual(
            h2_response_headers(
                [(b"connection", b"x"), (b"te", b"trailers"), (b"te", b"gzip"), (b"a", b"b")]
            ),
            [(b"te", b"trailers"), (b"a", b"b")],
        )

    def test_pseudo_headers_dropped(self) -> None:
        """A target cannot set :status or any other pseudo-header."""
        self.assertEqual(
            h2_response_headers([(b":status", b"500"), (b"x", b"1"), (b"", b"y")]),
            [(b"x", b"1")],
        )
