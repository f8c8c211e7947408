"""RFC 9113 section 8 (h2spec "http2/8.*"): HTTP semantics of the downstream HTTP/2 server.

Raw-frame transcripts against the real
:class:`~eventgw.downstream.h2server.H2ServerProtocol` over a StringTransport (see
``tests/conformance/frames.py``): each case sends one request on stream 1 and asserts
the reaction the RFC requires.  All in memory.

A malformed request (section 8.1.1) is a stream error PROTOCOL_ERROR; section 5.4.1
lets an endpoint treat a stream error as a connection error.  The checks h2 makes while
it decodes a field block (pseudo-header rules, connection-specific fields, field names
and values) are connection errors in h2, so those cases end in GOAWAY PROTOCOL_ERROR;
the checks the gateway makes itself (content-length, :method, :path form) are stream
errors, and the connection goes on serving.

======================================  ==========  ============================  ===========
case                                    RFC 9113    RFC requires                  we do
======================================  ==========  ============================  ===========
missing / duplicated pseudo-headers     8.3.1       malformed                     GOAWAY (1)
unknown pseudo-header, :status          8.3         malformed                     GOAWAY (1)
pseudo-header after a regular field     8.3         malformed                     GOAWAY (1)
empty :path                             8.3.1       malformed                     GOAWAY (1)
:path not origin-form / "*"             8.3.1       malformed                     RST (1)
:method not a token                     8.3.1       malformed                     RST (1)
host differs from :authority            8.3.1       SHOULD be malformed           GOAWAY (1)
host matching :authority, host only     8.3.1       accepted                      200
connection-specific fields              8.2.2       malformed                     GOAWAY (1)
te other than "trailers"                8.2.2       malformed                     GOAWAY (1)
upper-case field name, empty name       8.2.1       malformed                     GOAWAY (1)
CR, LF, NUL; edge whitespace in value   8.2.1       malformed                     GOAWAY (1)
content-length vs DATA                  8.1.1       malformed                     RST (1)
content-length not digits / differing   8.1.1       malformed                     GOAWAY (1)
trailers with a pseudo-header           8.1         malformed                     GOAWAY (1)
trailers without END_STREAM             8.1         malformed                     GOAWAY (1)
PUSH_PROMISE from a client              8.4         connection error PROTOCOL     GOAWAY (1)
CONNECT (:method and :authority)        8.5         well-formed                   501
CONNECT with :path or no :authority     8.5         malformed                     GOAWAY (1)
response before the request ended       8.1         RST_STREAM NO_ERROR           RST (0)
======================================  ==========  ============================  ===========

(1) PROTOCOL_ERROR, (0) NO_ERROR.  No case deviates from what the RFC requires.  Two
choices the RFC leaves open: a content-length list ("1, 1") is refused, as RFC 9110
section 8.6 allows; CONNECT is not supported (501, RFC 9110 section 15.6.2).
"""

from __future__ import annotations

from collections.abc import Callable

from h2.errors import ErrorCodes
from hyperframe.frame import HeadersFrame, PushPromiseFrame, RstStreamFrame
from twisted.trial.unittest import SynchronousTestCase

from eventgw.exchange import Headers
from tests.conformance.frames import Case, RawClient, install_cases, request

PROTOCOL_ERROR = ErrorCodes.PROTOCOL_ERROR
GOAWAY = ("goaway", PROTOCOL_ERROR)
RESET = ("reset", PROTOCOL_ERROR)
OK = ("status", 200)

_PSEUDO: Headers = request()


def _plus(*fields: tuple[bytes, bytes]) -> Headers:
    return [*_PSEUDO, *fields]


def _without(name: bytes) -> Headers:
    return [field for field in _PSEUDO if field[0] != name]


def _replace(name: bytes, value: bytes) -> Headers:
    return [(n, value if n == name else v) for n, v in _PSEUDO]


def _headers(headers: Headers, *, end: bool = True) -> Callable[[RawClient], None]:
    def send(client: RawClient) -> None:
        client.send(client.headers(1, headers, end_stream=end))

    return send


def _body(
    headers: Headers, *chunks: bytes, trailers: Headers | None = None
) -> Callable[[RawClient], None]:
    """HEADERS, DATA ``chunks`` (END_STREAM on the last unless ``trailers``), trailers."""

    def send(client: RawClient) -> None:
        frames = [client.headers(1, headers, end_stream=False)]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1 and trailers is None
            frames.append(client.data(1, chunk, end_stream=last))
        if trailers is not None:
            frames.append(client.headers(1, trailers))
        client.send(*frames)

    return send


def _post(*extra: tuple[bytes, bytes]) -> Headers:
    return request(b"POST", extra=list(extra))


CL = b"content-length"

CASES = [
    # --- 8.3, 8.3.1: pseudo-header fields ------------------------------------------------
    Case("missing_method", "8.3.1", _headers(_without(b":method")), GOAWAY, "8.1.2.3/2"),
    Case("missing_scheme", "8.3.1", _headers(_without(b":scheme")), GOAWAY, "8.1.2.3/3"),
    Case("missing_path", "8.3.1", _headers(_without(b":path")), GOAWAY, "8.1.2.3/4"),
    Case("missing_authority_and_host", "8.3.1", _headers(_without(b":authority")), GOAWAY),
    Case("duplicated_method", "8.3.1", _headers(_plus((b":method", b"GET"))), GOAWAY,
         "8.1.2.3/5"),
    Case("duplicated_scheme", "8.3.1", _headers(_plus((b":scheme", b"https"))), GOAWAY,
         "8.1.2.3/6"),
    Case("duplicated_path", "8.3.1", _headers(_plus((b":path", b"/"))), GOAWAY,
         "8.1.2.3/7"),
    Case("duplicated_authority", "8.3.1", _headers(_plus((b":authority", b"a"))),
         GOAWAY),
    Case("unknown_pseudo_header", "8.3", _headers(_plus((b":foo", b"bar"))), GOAWAY,
         "8.1.2.1/1"),
    Case("response_pseudo_header_in_request", "8.3",
         _headers(_plus((b":status", b"200"))), GOAWAY, "8.1.2.1/2"),
    Case("pseudo_header_after_regular_field", "8.3",
         _headers([*_PSEUDO[:3], (b"x-a", b"1"), _PSEUDO[3]]), GOAWAY, "8.1.2.1/4"),
    Case("empty_path", "8.3.1", _headers(_replace(b":path", b"")), GOAWAY, "8.1.2.3/1"),
    Case("path_not_origin_form", "8.3.1", _headers(_replace(b":path", b"x")), RESET),
    Case("asterisk_path_for_get", "8.3.1", _headers(_replace(b":path", b"*")), RESET),
    Case("asterisk_path_for_options", "8.3.1",
         _headers([(b":method", b"OPTIONS"), *_replace(b":path", b"*")[1:]]), OK),
    Case("method_not_a_token", "8.3.1", _headers(_replace(b":method", b"G T")), RESET),
    Case("empty_method", "8.3.1", _headers(_replace(b":method", b"")), RESET),
    Case("host_differs_from_authority", "8.3.1",
         _headers(_plus((b"host", b"other.test"))), GOAWAY),
    Case("host_matches_authority", "8.3.1", _headers(_plus((b"host", b"gw.test"))), OK),
    Case("host_without_authority", "8.3.1",
         _headers([*_without(b":authority"), (b"host", b"gw.test")]), OK),
    # --- 8.2.2: connection-specific fields -----------------------------------------------
    Case("connection_field", "8.2.2", _headers(_plus((b"connection", b"close"))),
         GOAWAY, "8.1.2.2/1"),
    Case("keep_alive_field", "8.2.2", _headers(_plus((b"keep-alive", b"5"))), GOAWAY),
    Case("proxy_connection_field", "8.2.2",
         _headers(_plus((b"proxy-connection", b"close"))), GOAWAY),
    Case("transfer_encoding_field", "8.2.2",
         _headers(_plus((b"transfer-encoding", b"chunked"))), GOAWAY),
    Case("upgrade_field", "8.2.2", _headers(_plus((b"upgrade", b"h2c"))), GOAWAY),
    Case("te_trailers", "8.2.2", _headers(_plus((b"te", b"trailers"))), OK),
    Case("te_gzip", "8.2.2", _headers(_plus((b"te", b"gzip"))), GOAWAY, "8.1.2.2/2"),
    Case("te_trailers_and_gzip", "8.2.2", _headers(_plus((b"te", b"trailers, gzip"))),
         GOAWAY),
    # --- 8.2.1: field validity -------------------------------------------------------------
    Case("upper_case_field_name", "8.2.1", _headers(_plus((b"X-Upper", b"1"))), GOAWAY,
         "8.1.2/1"),
    Case("empty_field_name", "8.2.1", _headers(_plus((b"", b"1"))), GOAWAY),
    Case("space_in_field_name", "8.2.1", _headers(_plus((b"x a", b"1"))), GOAWAY),
    Case("colon_in_field_name", "8.2.1", _headers(_plus((b"x:a", b"1"))), GOAWAY),
    Case("cr_in_field_value", "8.2.1", _headers(_plus((b"x-a", b"a\rb"))), GOAWAY),
    Case("lf_in_field_value", "8.2.1", _headers(_plus((b"x-a", b"a\nb"))), GOAWAY),
    Case("nul_in_field_value", "8.2.1", _headers(_plus((b"x-a", b"a\x00b"))), GOAWAY),
    Case("leading_space_in_value", "8.2.1", _headers(_plus((b"x-a", b" a"))), GOAWAY),
    Case("trailing_tab_in_value", "8.2.1", _headers(_plus((b"x-a", b"a\t"))), GOAWAY),
    Case("split_cookies", "8.2.3",
         _headers(_plus((b"cookie", b"a=1"), (b"cookie", b"b=2"))), OK),
    # --- 8.1.1: content-length -----------------------------------------------------------
    Case("content_length_above_data", "8.1.1", _body(_post((CL, b"10")), b"abc"), RESET,
         "8.1.2.6/1"),
    Case("content_length_below_data_in_frames", "8.1.1",
         _body(_post((CL, b"4")), b"ab", b"ab", b"a"), RESET, "8.1.2.6/2"),
    Case("content_length_zero_with_data", "8.1.1", _body(_post((CL, b"0")), b"a"), RESET),
    Case("content_length_without_data", "8.1.1", _headers(_post((CL, b"3"))), RESET),
    Case("content_length_before_trailers", "8.1.1",
         _body(_post((CL, b"5")), b"abc", trailers=[(b"x-t", b"1")]), RESET),
    Case("content_length_exact", "8.1.1", _body(_post((CL, b"6")), b"abc", b"def"), OK),
    Case("content_length_exact_then_trailers", "8.1.1",
         _body(_post((CL, b"3")), b"abc", trailers=[(b"x-t", b"1")]), OK),
    Case("content_length_repeated_equal", "8.1.1",
         _body(_post((CL, b"1"), (CL, b"1")), b"a"), OK),
    Case("content_length_not_digits", "8.1.1", _headers(_post((CL, b"1x")), end=False),
         GOAWAY),
    Case("content_length_values_differ", "8.1.1",
         _headers(_post((CL, b"1"), (CL, b"2")), end=False), GOAWAY),
    Case("content_length_list", "8.1.1", _body(_post((CL, b"1, 1")), b"a"), GOAWAY),
    # --- 8.1: message framing, trailers ----------------------------------------------------
    Case("trailers_with_pseudo_header", "8.1",
         _body(_post(), b"abc", trailers=[(b":method", b"GET")]), GOAWAY, "8.1.2.1/3"),
    Case("trailers_without_end_stream", "8.1", lambda c: c.send(
        c.headers(1, _post(), end_stream=False), c.data(1, b"a"),
        c.headers(1, [(b"x-t", b"1")], end_stream=False)), GOAWAY, "8.1/1"),
    # --- 8.5: CONNECT ----------------------------------------------------------------------
    Case("connect", "8.5",
         _headers([(b":method", b"CONNECT"), (b":authority", b"h.test:443")], end=False),
         ("status", 501)),
    Case("connect_with_path_and_scheme", "8.5", _headers(
        [(b":method", b"CONNECT"), (b":authority", b"h:443"), (b":scheme", b"https"),
         (b":path", b"/")], end=False), GOAWAY),
    Case("connect_without_authority", "8.5", _headers([(b":method", b"CONNECT")], end=False),
         GOAWAY),
]


class SemanticsTests(SynchronousTestCase):
    """RFC 9113 section 8, one test per case of the table above."""

    install_cases(locals(), CASES)

    def test_push_promise_from_client(self) -> None:
        """8.4 (h2spec 8.2/1): a client may not push; PUSH_PROMISE is a connection error
        PROTOCOL_ERROR."""
        client = RawClient()
        client.send(client.headers(1, request(), end_stream=False))
        push = PushPromiseFrame(1)
        push.promised_stream_id = 2
        push.data = client.encoder.encode(request())
        push.flags.add("END_HEADERS")
        client.send(push)
        self.assertEqual(client.outcome(1), GOAWAY)

    def test_response_before_request_end(self) -> None:
        """8.1: a response complete before the request ended ends with END_STREAM; the
        rest of the request body is read away first (the RST_STREAM(NO_ERROR) that
        may follow comes only after a bounded amount or time, see
        tests.test_h2server.DiscardTests), so the client reads the answer."""
        client = RawClient()
        client.send(client.headers(1, request(b"POST", b"/missing"), end_stream=False),
                    client.data(1, b"part"))
        frames = [f for f in client.all_frames() if f.stream_id == 1]
        self.assertIsInstance(frames[0], HeadersFrame)
        self.assertIn("END_STREAM", frames[-1].flags)
        self.assertNotIn(RstStreamFrame, [type(f) for f in frames])
        self.assertEqual(client.status(1), b"404")

    def test_case_count(self) -> None:
        """The table covers the h2spec http2/8.* cases it names, and more."""
        self.assertEqual(len(CASES), 54)
        self.assertEqual(len({case.name for case in CASES}), len(CASES))
