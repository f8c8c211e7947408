# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.headers: hop-by-hop removal and the X-Forwarded-* headers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.headers import (
    HOP_BY_HOP,
    connection_tokens,
    request_headers_for_upstream,
    response_headers_for_downstream,
)

Headers = list[tuple[bytes, bytes]]


def forward(headers: Headers, peer: str = "10.0.0.9") -> Headers:
    return request_headers_for_upstream(
        headers, peer=peer, authority=b"gw.example:9001", scheme=b"https"
    )


class ConnectionTokensTests(SynchronousTestCase):
    def test_tokens_are_lower_case_and_trimmed(self) -> None:
        """Tokens are split on commas, stripped and lower-cased; close/keep-alive vanish."""
        self.assertEqual(
            connection_tokens(b"Keep-Alive, X-Foo ,\tx-bar,close,,"), {b"x-foo", b"x-bar"}
        )


class RequestHeadersTests(SynchronousTestCase):
    def test_hop_by_hop_dropped(self) -> None:
        """Every fixed hop-by-hop header and every header named in Connection goes."""
        headers = [(name, b"v") for name in sorted(HOP_BY_HOP)]
        headers += [(b"connection", b"x-secret, keep-alive"), (b"x-secret", b"1")]
        headers += [(b"accept", b"*/*")]
        out = forward(headers)
        self.assertEqual(
            out,
            [
                (b"accept", b"*/*"),
                (b"x-forwarded-for", b"10.0.0.9"),
                (b"x-forwarded-host", b"gw.example:9001"),
                (b"x-forwarded-proto", b"https"),
            ],
        )

    def test_framing_host_and_expect_dropped(self) -> None:
        """host, content-length and expect are left to the client codec and the gateway."""
        out = forward(
            [
                (b"host", b"gw.example"),
                (b"content-length", b"5"),
                (b"expect", b"100-continue"),
                (b"content-type", b"text/plain"),
            ]
        )
        self.assertEqual(out[0], (b"content-type", b"text/plain"))
        names = [name for name, _ in out]
        for gone in (b"host", b"content-length", b"expect"):
            self.assertNotIn(gone, names)

    def test_forwarded_for_chain_appended(self) -> None:
        """An existing X-Forwarded-For chain (even split over headers) gets the peer."""
        out = forward(
            [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b"3.3.3.3")]
        )
        self.assertEqual(
            [v for n, v in out if n == b"x-forwarded-for"],
            [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"],
        )

    def test_client_forwarded_host_and_proto_replaced(self) -> None:
        """A client cannot choose X-Forwarded-Host/-Proto: the gateway's values win."""
        out = forward([(b"x-forwarded-host", b"evil"), (b"x-forwarded-proto", b"http")])
        self.assertEqual(
            out,
            [
                (b"x-forwarded-for", b"10.0.0.9"),
                (b"x-forwarded-host", b"gw.example:9001"),
                (b"x-forwarded-proto", b"https"),
            ],
        )

    def test_empty_authority_sends_no_forwarded_host(self) -> None:
        """Without a Host/:authority there is no X-Forwarded-Host."""
        out = request_headers_for_upstream([], peer="::1", authority=b"", scheme=b"http")
        self.assertEqual(out, [(b"x-forwarded-for", b"::1"), (b"x-forwarded-proto", b"http")])

    def test_trace_headers_and_repeats_kept_in_order(self) -> None:
        """Trace headers and repeated end-to-end headers keep order and values."""
        headers = [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (b"cookie", b"a=1"),
            (b"tracestate", b"congo=t61rcWkgMzE"),
            (b"cookie", b"b=2"),
            (b"x-request-id", b"abc"),
        ]
        self.assertEqual(forward(headers)[:5], headers)

    def test_input_not_mutated(self) -> None:
        """The caller's list is left as it was."""
        headers = [(b"connection", b"x-a"), (b"x-a", b"1"), (b"b", b"2")]
        copy = list(headers)
        forward(headers)
        self.assertEqual(headers, copy)


class ResponseHeadersTests(SynchronousTestCase):
    def test_hop_by_hop_dropped_content_length_kept(self) -> None:
        """Responses lose hop-by-hop headers but keep content-length for framing."""
        out = response_headers_for_downstream(
            [
                (b"content-length", b"3"),
                (b"connection", b"keep-alive, x-hop"),
                (b"keep-alive", b"timeout=5"),
                (b"x-hop", b"1"),
                (b"transfer-encoding", b"chunked"),
                (b"set-cookie", b"a=1"),
                (b"set-cookie", b"b=2"),
            ]
        )
        self.assertEqual(
            out,
            [(b"content-length", b"3"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
        )


_names = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP)),
    st.sampled_from([b"accept", b"x-a", b"x-b", b"traceparent", b"cookie", b"x-request-id"]),
    st.from_regex(rb"\A[a-z][a-z0-9-]{0,12}\Z"),
)
_values = st.from_regex(rb"\A[!-~]([ !-~]{0,20}[!-~])?\Z")
_header_lists = st.lists(st.tuples(_names, _values), max_size=20)
_connection_values = st.lists(
    st.sampled_from([b"close", b"keep-alive", b"x-a", b"X-B", b"cookie"]), max_size=3
).map(b", ".join)


def _named(headers: Headers) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named |= connection_tokens(value)
    return named


class HeaderPropertyTests(SynchronousTestCase):
    @given(_header_lists, _connection_values)
    def test_request_no_hop_by_hop_survives(self, headers: Headers, conn: bytes) -> None:
        """No hop-by-hop or Connection-named header reaches the upstream; every other
        header keeps its order and value, and X-Forwarded-* come last."""
        headers = [*headers, (b"connection", conn)]
        out = forward(headers)
        named = _named(headers)
        removed = HOP_BY_HOP | named | {
            b"host", b"content-length", b"expect",
            b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto",
        }
        expected = [item for item in headers if item[0] not in removed]
        self.assertEqual(out[: len(expected)], expected)
        self.assertEqual(
            [name for name, _ in out[len(expected):]],
            [b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto"],
        )
        for name, _ in out:
            self.assertNotIn(name, HOP_BY_HOP)

    @given(_header_lists, _connection_values)
    def test_response_no_hop_by_hop_survives(self, headers: Headers, conn: bytes) -> None:
        """No hop-by-hop header reaches the client; the rest keeps order and values."""
        headers = [(b"connection", conn), *headers]
        out = response_headers_for_downstream(headers)
        removed = HOP_BY_HOP | _named(headers)
        self.assertEqual(out, [item for item in headers if item[0] not in removed])
