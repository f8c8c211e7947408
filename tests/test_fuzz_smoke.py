# mypy: disable-error-code="no-untyped-call"
"""Short property runs of the fuzz targets' invariants (fuzz/), and the inputs the
fuzzer found as regression tests.

The long coverage-guided runs are ``fuzz/run`` (atheris, see fuzz/README.md); these are
the same properties driven by Hypothesis for a few hundred examples each, so a
regression shows up in the ordinary test suite.  No atheris here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import yaml
from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.config import Limits, load_config
from eventgw.downstream.h2server import H2ServerProtocol
from eventgw.downstream.http1parse import NEED_DATA, PAUSED, BodyData, RequestParser
from eventgw.errors import (
    BadRequest,
    ConfigError,
    GatewayError,
    InvalidEvent,
    MethodNotAllowed,
    RequestError,
    ResponseError,
    RouteNotFound,
    UnsupportedMediaType,
)
from eventgw.events.cloudevents import parse_batch, parse_event, parse_structured
from eventgw.events.transcode import (
    RouteTable,
    build_request,
    path_of,
    query_of,
    response_body,
    status_body,
)
from eventgw.exchange import Headers, RequestHead, ResponseWriter, StaticReply
from eventgw.upstream.h1client import NEED_DATA as H1_NEED_DATA
from eventgw.upstream.h1client import ClientConnection, Data, Ended
from tests._proto.topics.v1 import topics_pb2

SMOKE = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes, cycled; one piece if none."""
    if not sizes:
        return [data]
    out: list[bytes] = []
    at = index = 0
    while at < len(data):
        out.append(data[at : at + sizes[index % len(sizes)]])
        at += sizes[index % len(sizes)]
        index += 1
    return out


def joined(events: list[Any], event: Any, body_type: type) -> None:
    """Append ``event``, joining it to a preceding body piece; drop empty pieces."""
    if isinstance(event, body_type) and events and isinstance(events[-1], body_type):
        events[-1] = body_type(data=events[-1].data + event.data)
    elif not (isinstance(event, body_type) and not event.data):
        events.append(event)


# --- HTTP/1.1 request parser (fuzz/http1_request.py) -----------------------------------

HTTP1_TOKENS = st.sampled_from([
    b"GET", b"POST", b"OPTIONS", b" ", b"/", b"*", b"http://h", b"?q", b" HTTP/1.1",
    b" HTTP/1.0", b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"Host: h", b"Content-Length: ",
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Connection: close",
    b"Expect: 100-continue", b"TE: trailers", b"0", b"5", b"a", b"ffff", b";x=y", b":",
    b"\x00", b"\t", b"hello",
])


def http1_stream() -> st.SearchStrategy[bytes]:
    """Request-like byte streams: HTTP tokens and raw bytes, concatenated."""
    return st.lists(HTTP1_TOKENS | st.binary(max_size=8), max_size=40).map(b"".join)


def run_request_parser(chunks: list[bytes]) -> tuple[list[Any], RequestError | None]:
    parser = RequestParser(4096, 1 << 16)
    events: list[Any] = []
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if event is PAUSED:
                    parser.start_next()
                    continue
                joined(events, event, BodyData)
    except RequestError as error:
        return events, error
    return events, None


def check_request_parser(stream: bytes, sizes: list[int]) -> None:
    """The http1_request target's properties for one stream and split."""
    whole, whole_error = run_request_parser([stream])
    split, split_error = run_request_parser(pieces(stream, sizes))
    assert (whole_error is None) == (split_error is None), (whole_error, split_error)
    common = min(len(whole), len(split))
    assert whole[:common] == split[:common], (whole, split)
    if whole_error is None:
        assert whole == split, (whole, split)


class RequestParserSmokeTests(SynchronousTestCase):
    """The request parser only raises RequestError and does not depend on the split."""

    @SMOKE
    @given(http1_stream(), st.lists(st.integers(1, 16), max_size=7))
    def test_split_does_not_matter(self, stream: bytes, sizes: list[int]) -> None:
        """Any stream gives the same events, or the same failure, however it is cut."""
        check_request_parser(stream, sizes)


# --- HTTP/1.1 response parser of the upstream client (fuzz/h1_response.py) -------------

H1_RESPONSE_TOKENS = st.sampled_from([
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n", b"HTTP/1.1 304 x\r\n", b"HTTP/1.1 101 x\r\n",
    b"Content-Length: 3\r\n", b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"X: y\r\n", b"\r\n",
    b"3\r\nabc\r\n", b"0\r\n\r\n", b"0\r\nT: 1\r\n\r\n", b"abc", b"\n", b"\x00",
])


def run_client(chunks: list[bytes], head: bool, close: bool) -> tuple[list[Any], bool]:
    conn = ClientConnection(max_head_bytes=4096)
    method = b"HEAD" if head else b"GET"
    conn.send_request(method, b"/", b"up.test", [], content_length=0)
    events: list[Any] = []
    requests = 1
    try:
        for chunk in [*chunks, b""] if close else chunks:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is H1_NEED_DATA:
                    break
                joined(events, event, Data)
                if isinstance(event, Ended):
                    if requests == 8 or not conn.reusable:
                        return events, False
                    conn.start_next_cycle()
                    conn.send_request(method, b"/", b"up.test", [], content_length=0)
                    requests += 1
    except ResponseError:
        return events, True
    return events, False


class ResponseParserSmokeTests(SynchronousTestCase):
    """The upstream client only raises ResponseError and does not depend on the split."""

    @SMOKE
    @given(
        st.lists(H1_RESPONSE_TOKENS | st.binary(max_size=6), max_size=30).map(b"".join),
        st.lists(st.integers(1, 16), max_size=7),
        st.booleans(),
        st.booleans(),
    )
    def test_split_does_not_matter(
        self, stream: bytes, sizes: list[int], head: bool, close: bool
    ) -> None:
        """The responses read are the same however the bytes arrive (up to reuse)."""
        whole, whole_failed = run_client([stream] if stream else [], head, close)
        split, split_failed = run_client(pieces(stream, sizes) if stream else [], head, close)
        common = min(len(whole), len(split))
        self.assertEqual(whole[:common], split[:common])
        if not whole_failed and not split_failed:
            # More responses are read when stray bytes had not arrived yet at an end.
            self.assertTrue(split[: len(whole)] == whole or whole[: len(split)] == split)


# --- HTTP/2 server (fuzz/h2_server.py) ----------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _H2Handler:
    def __init__(self, writer: ResponseWriter) -> None:
        self.writer = writer

    def body_received(self, data: bytes) -> None:
        pass

    def body_ended(self, trailers: Headers) -> None:
        self.writer.write_head(200, [(b"content-length", b"2")])
        self.writer.write_body(b"ok")
        self.writer.end()

    def connection_lost(self, reason: str) -> None:
        pass


class _H2Target:
    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> Any:
        if head.path.endswith(b"s"):
            writer.write_head(204, [], end=True)
            return StaticReply()
        return _H2Handler(writer)


def h2_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + (
        payload
    )


REQUEST_HEADERS = [
    (b":method", b"GET"), (b":path", b"/s"), (b":scheme", b"https"), (b":authority", b"gw"),
]

H2_FRAME = st.tuples(
    st.integers(0, 10),
    st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0xFF]),
    st.sampled_from([0, 1, 3, 5, 2, 0x7FFFFFFF]),
    st.one_of(
        st.binary(max_size=24),
        st.just(b"hpack"),  # replaced by a valid header block
        st.integers(0, 2**31 - 1).map(lambda n: struct.pack(">I", n)),
    ),
)


def check_h2(frames: list[tuple[int, int, int, bytes]], cut: int) -> None:
    """Drive one connection; the h2_server target's invariants hold."""
    clock = Clock()
    transport = StringTransport()
    server = H2ServerProtocol(
        _H2Target(), Limits(), scheme=b"https", reactor=clock  # type: ignore[arg-type]
    )
    server.makeConnection(transport)
    encoder = Encoder()
    stream = PREFACE + b"".join(
        h2_frame(kind, flags, sid, encoder.encode(REQUEST_HEADERS) if p == b"hpack" else p)
        for kind, flags, sid, p in frames
    )
    server.dataReceived(stream[:cut])
    server.dataReceived(stream[cut:])
    clock.advance(1000)
    output = transport.value()
    kinds = []
    at = 0
    while at < len(output):
        assert len(output) - at >= 9, output[at:]
        length = int.from_bytes(output[at : at + 3], "big")
        assert len(output) - at - 9 >= length, output[at:]
        kinds.append(output[at + 3])
        at += 9 + length
    assert all(kind <= 9 for kind in kinds), kinds
    if 7 in kinds:
        assert kinds.index(7) == len(kinds) - 1, kinds
        assert transport.disconnecting


class H2ServerSmokeTests(SynchronousTestCase):
    """Arbitrary frame sequences never crash the server or garble its output."""

    @SMOKE
    @given(st.lists(H2_FRAME, max_size=12), st.integers(0, 400))
    def test_frame_sequences(self, frames: list[tuple[int, int, int, bytes]], cut: int) -> None:
        """No exception escapes, the output is whole frames, nothing follows a GOAWAY."""
        check_h2(frames, cut)


# --- CloudEvents (fuzz/ce_binding.py) ----------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8)
    | st.sampled_from(["1.0", "/s", "2024-05-01T12:00:00Z", "text/plain", "\ud800"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
ATTRIBUTE_NAMES = st.sampled_from([
    "specversion", "id", "source", "type", "time", "data", "data_base64", "datacontenttype",
    "dataschema", "subject", "ext", "Bad",
])
EVENTS = st.dictionaries(ATTRIBUTE_NAMES, JSON_VALUES, max_size=8).map(
    lambda d: {"specversion": "1.0", "id": "1", "source": "/", "type": "t", **d}
)


def only_gateway_errors(call: Any, *args: Any) -> None:
    try:
        result = call(*args)
    except GatewayError:
        return
    for event in result if isinstance(result, list) else [result]:
        event.SerializeToString()


class CloudEventsSmokeTests(SynchronousTestCase):
    """The CloudEvents binding raises only the gateway's own errors."""

    @SMOKE
    @given(EVENTS, st.booleans())
    def test_structured_and_batch(self, event: dict[str, Any], batch: bool) -> None:
        """Any JSON event (or a batch of it) parses or is an InvalidEvent."""
        body = json.dumps([event, event] if batch else event).encode("utf-8", "surrogatepass")
        only_gateway_errors(parse_batch if batch else parse_structured, body)

    @SMOKE
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([b"ce-id", b"ce-source", b"ce-type", b"ce-specversion",
                                 b"ce-time", b"ce-x", b"ce-", b"content-type"]),
                st.binary(max_size=12) | st.sampled_from([b"1.0", b"%FF", b"%", b"/s"]),
            ),
            max_size=8,
        ),
        st.binary(max_size=32),
    )
    def test_binary(self, headers: Headers, body: bytes) -> None:
        """Any ce-* headers and body parse (in whatever mode content-type picks) or fail
        with a GatewayError."""
        only_gateway_errors(parse_event, headers, body)

    @SMOKE
    @given(st.binary(max_size=64))
    def test_any_body(self, body: bytes) -> None:
        """Arbitrary bytes in the JSON modes are an InvalidEvent at worst."""
        only_gateway_errors(parse_structured, body)
        only_gateway_errors(parse_batch, body)


# --- the transcoder (fuzz/transcode.py) ---------------------------------------------------

TABLE = RouteTable.from_services([
    eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"],
    topics_pb2.DESCRIPTOR.services_by_name["Topics"],
])
PATH_PIECES = st.sampled_from([
    "/events", "/events/v1/topics", "/a", "/log/", ":replace", "/", "%2F", "%", "x", "**",
])


class TranscodeSmokeTests(SynchronousTestCase):
    """Route matching, request building and rendering raise only the gateway's errors."""

    @SMOKE
    @given(
        st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        st.lists(PATH_PIECES, max_size=6).map("".join),
        st.binary(max_size=32),
        st.sampled_from([None, b"application/json", b"application/cloudevents-batch+json"]),
        st.binary(max_size=32) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=24),
    )
    def test_requests_and_responses(
        self,
        method: str,
        path: str,
        query: bytes,
        content_type: bytes | None,
        body: bytes,
        response: bytes,
    ) -> None:
        """A request is matched, built and answered, or fails with a GatewayError."""
        headers = [] if content_type is None else [(b"content-type", content_type)]
        try:
            match = TABLE.match(method, path_of(path.encode()), content_type)
        except (RouteNotFound, MethodNotAllowed, UnsupportedMediaType):
            return
        try:
            build_request(match, query_of(b"?" + query), headers, body).SerializeToString()
        except GatewayError:
            pass
        reply = match.route.response_class()
        try:
            reply.ParseFromString(response)
        except Exception:  # DecodeError: not a message at all
            return
        json.loads(response_body(match.route, reply))

    @SMOKE
    @given(st.integers(0, 16), st.text(max_size=16), st.binary(max_size=48))
    def test_status_body(self, code: int, message: str, details: bytes) -> None:
        """Any trailer bytes render as a google.rpc.Status JSON object."""
        self.assertIsInstance(json.loads(status_body(code, message, details)), dict)


# --- the configuration loader (fuzz/config_loader.py) ----------------------------------

CONFIG_DOCUMENTS = st.dictionaries(
    st.sampled_from(["listen", "tls", "master_api", "event_broker", "grpc", "limits", "log",
                     "workers", "bogus"]),
    st.dictionaries(
        st.sampled_from(["tls", "http", "grpc", "allow", "cert", "max_header_bytes", "access",
                         "deadline", "interface", "x"]),
        JSON_VALUES | st.sampled_from(["http://h:1", "h:1", "grpcs://h:1", "http://\u0399"]),
        max_size=4,
    ) | JSON_VALUES,
    max_size=5,
)


def check_config(text: str) -> None:
    try:
        load_config(text, source="gateway.yaml")
    except ConfigError as error:
        line = str(error)
        assert error.key and line.startswith(f"{error.key}: "), line
        assert "\n" not in line and "\r" not in line, line


class ConfigSmokeTests(SynchronousTestCase):
    """The loader raises only ConfigError, one line naming a key."""

    @SMOKE
    @given(CONFIG_DOCUMENTS)
    def test_documents(self, document: dict[str, Any]) -> None:
        """Any document of plausible shape loads or is one ConfigError line."""
        check_config(yaml.safe_dump(document, allow_unicode=True))

    @SMOKE
    @given(st.text(max_size=64))
    def test_text(self, text: str) -> None:
        """Any text loads or is one ConfigError line."""
        check_config(text)


# --- inputs the fuzzer found -----------------------------------------------------------


class FoundByFuzzingTests(SynchronousTestCase):
    """Inputs of fuzz/crashes/, each once an exception other than the gateway's own."""

    def assert_invalid_event(self, call: Any, body: bytes, attribute: str) -> None:
        with self.assertRaises(InvalidEvent) as caught:
            call(body)
        self.assertEqual(caught.exception.attribute, attribute)

    def test_lone_surrogate_escape(self) -> None:
        """A JSON ``\\ud800`` escape (a lone surrogate: no protobuf string holds it) in a
        structured event is a 400 naming the event (fuzz/crashes/ce_binding-lone-surrogate)."""
        body = (
            b'{"specversion": "1.0", "id": "e", "source": "/", "type": "t", "datacontenttype":'
            b' "application/o\\ud800ctet-stream", "data_base64": "AAEC"}'
        )
        self.assert_invalid_event(parse_structured, body, "event")

    def test_lone_surrogate_in_batch_data(self) -> None:
        """A lone surrogate in a batch event's data is a 400 naming the batch."""
        body = b'[{"specversion":"1.0","id":"e","source":"/","type":"t","data":"\\udc00"}]'
        self.assert_invalid_event(parse_batch, body, "events")

    def test_utf8_encoded_surrogate(self) -> None:
        """A surrogate encoded in UTF-8 bytes (invalid UTF-8) is a 400, not a crash."""
        body = b'{"specversion":"1.0","id":"\xed\xa0\x80","source":"/","type":"t"}'
        self.assert_invalid_event(parse_structured, body, "event")

    def test_utf16_body(self) -> None:
        """A UTF-16 body is not UTF-8 JSON, even when json.loads would take it."""
        body = '{"specversion":"1.0","id":"\ud800","source":"/","type":"t"}'.encode(
            "utf-16-le", "surrogatepass"
        )
        self.assert_invalid_event(parse_structured, body, "event")

    def test_surrogate_pair_is_kept(self) -> None:
        """A surrogate pair escape is one character outside the BMP: accepted."""
        body = b'{"specversion":"1.0","id":"\\ud83d\\ude00","source":"/","type":"t"}'
        self.assertEqual(parse_structured(body).id, "\U0001f600")

    def test_deeply_nested_event(self) -> None:
        """JSON nested past the decoder's recursion limit is a 400, not RecursionError."""
        self.assert_invalid_event(parse_batch, b"[" * 100_000, "events")

    def test_whole_body_not_an_object(self) -> None:
        """A JSON number as a ``body: "*"`` request is a 400, not a TypeError from
        json_format (fuzz/crashes/transcode-body-field-not-object: PATCH, no
        content-type, body ``33``)."""
        match = TABLE.match("PATCH", "/events/v1/topics/a:replace", None)
        with self.assertRaises(BadRequest) as caught:
            build_request(match, "3", [], b"33")
        self.assertEqual(str(caught.exception), "body: expected a JSON object")

    def test_whole_body_null_or_true(self) -> None:
        """``null`` and ``true`` are no JSON objects either."""
        match = TABLE.match("PATCH", "/events/v1/topics/a", b"application/json")
        for body in (b"null", b"true", b'"x"'):
            with self.assertRaises(BadRequest):
                build_request(match, "", [], body)

    def test_deeply_nested_body(self) -> None:
        """A JSON body nested past the recursion limit is a 400."""
        match = TABLE.match("PATCH", "/events/v1/topics/a", b"application/json")
        with self.assertRaises(BadRequest):
            build_request(match, "", [], b"[" * 100_000)

    def test_bad_timestamp_tag(self) -> None:
        """``!!timestamp`` on a value that is no timestamp is invalid YAML, not an
        AttributeError from PyYAML (fuzz/crashes/config_loader-bad-timestamp-tag)."""
        text = "master_api:\n  !!timestamp 2024-01-01http: http://127.0.0.1:8080\n"
        with self.assertRaises(ConfigError) as caught:
            load_config(text, source="gateway.yaml")
        self.assertEqual(caught.exception.key, "gateway.yaml")

    def test_bad_int_tag(self) -> None:
        """``!!int x`` is invalid YAML, not a ValueError from PyYAML."""
        with self.assertRaises(ConfigError):
            load_config("workers: !!int x\n", source="gateway.yaml")

    def test_deeply_nested_yaml(self) -> None:
        """YAML nested past the recursion limit is invalid YAML, not RecursionError."""
        with self.assertRaises(ConfigError):
            load_config("[" * 3000, source="gateway.yaml")

    def test_line_break_in_key(self) -> None:
        """An unknown key holding a line break is quoted, so the error stays one line
        (fuzz/crashes/config_loader-newline-in-key)."""
        with self.assertRaises(ConfigError) as caught:
            load_config('"\\x0a": [~2]\n', source="gateway.yaml")
        self.assertEqual(caught.exception.key, "'\\n'")
        self.assertNotIn("\n", str(caught.exception))

    def test_host_idna_cannot_encode(self) -> None:
        """A gRPC target whose host IDNA cannot encode is a ConfigError naming the key,
        not a UnicodeError (fuzz/crashes/config_loader-non-idna-host)."""
        text = 'master_api: {http: "http://h"}\nevent_broker: {grpc: "\ufffd:0"}\n'
        with self.assertRaises(ConfigError) as caught:
            load_config(text, source="gateway.yaml")
        self.assertEqual(caught.exception.key, "event_broker.grpc")

    def test_http_host_idna_cannot_encode(self) -> None:
        """The same for the Master API's URL; the fuzzer's input (undecodable bytes
        replaced by U+FFFD) names it first."""
        text = 'master_api: {http: "http://h\ufffd99"}\nevent_broker: {grpc: "\ufffd:0"}\n'
        with self.assertRaises(ConfigError) as caught:
            load_config(text, source="gateway.yaml")
        self.assertEqual(caught.exception.key, "master_api.http")
