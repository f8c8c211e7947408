"""gRPC-Web: the wire codec (no sockets), and calls through the real gateway.

The end-to-end tests run the gateway service on 127.0.0.1 with TLS (ALPN h2 and
http/1.1), the demo Master API's grpcio server behind it, and httpx as the client --
HTTP/1.1 and HTTP/2, binary and text flavours.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from demo.masterapi._proto import demo_pb2
from demo.masterapi.grpc_server import ItemsServicer
from demo.masterapi.grpc_server import serve as serve_master_api
from eventgw.grpc.webcodec import (
    EXPOSE_HEADERS,
    Base64Decoder,
    Flavour,
    MalformedText,
    encode_text_chunk,
    expose_headers,
    flavour_of,
    native_content_type,
    native_request_headers,
    parse_trailers_frame,
    split_frames,
    trailers_frame,
    web_content_type,
    web_response_headers,
)
from eventgw.grpcwire import frame_message
from eventgw.routing import Route, route_for
from tests.rig import RunningGateway, gateway_config, start_gateway

GET_ITEM = "/demo.masterapi.v1.Items/GetItem"
WATCH_ITEMS = "/demo.masterapi.v1.Items/WatchItems"


class FlavourTests(SynchronousTestCase):
    """Content types: which are gRPC-Web, which flavour, what they map to."""

    def test_flavours(self) -> None:
        """The four content types of PROTOCOL-WEB.md, with and without parameters."""
        self.assertIs(flavour_of(b"application/grpc-web"), Flavour.BINARY)
        self.assertIs(flavour_of(b"application/grpc-web+proto"), Flavour.BINARY)
        self.assertIs(flavour_of(b"application/grpc-web-text"), Flavour.TEXT)
        self.assertIs(flavour_of(b"application/grpc-web-text+proto"), Flavour.TEXT)
        self.assertIs(flavour_of(b"Application/GRPC-Web; charset=utf-8"), Flavour.BINARY)
        for other in (b"application/grpc", b"application/grpc-webx", b"text/plain", b""):
            self.assertIsNone(flavour_of(other))

    def test_mapping_both_ways(self) -> None:
        """grpc-web(+x) <-> grpc(+x); the text flavour keeps its -text on the way back."""
        self.assertEqual(native_content_type(b"application/grpc-web"), b"application/grpc")
        self.assertEqual(
            native_content_type(b"application/grpc-web-text+proto"), b"application/grpc+proto"
        )
        self.assertEqual(
            web_content_type(b"application/grpc+proto", Flavour.BINARY),
            b"application/grpc-web+proto",
        )
        self.assertEqual(
            web_content_type(b"application/grpc", Flavour.TEXT), b"application/grpc-web-text"
        )
        self.assertEqual(web_content_type(None, Flavour.TEXT), b"application/grpc-web-text")

    def test_request_headers(self) -> None:
        """te: trailers added once, content type native, text drops content-length."""
        headers = [
            (b"content-type", b"application/grpc-web-text"),
            (b"content-length", b"12"),
            (b"te", b"gzip"),
            (b"x-grpc-web", b"1"),
        ]
        self.assertEqual(
            native_request_headers(headers, Flavour.TEXT),
            [(b"content-type", b"application/grpc"), (b"x-grpc-web", b"1"),
             (b"te", b"trailers")],
        )
        binary = native_request_headers(
            [(b"content-type", b"application/grpc-web+proto"), (b"content-length", b"5")],
            Flavour.BINARY,
        )
        self.assertIn((b"content-length", b"5"), binary)

    def test_response_headers_and_cors(self) -> None:
        """Content type mapped, no content-length, status headers exposed with Origin."""
        out = web_response_headers(
            [(b"content-type", b"application/grpc+proto"), (b"content-length", b"9")],
            Flavour.BINARY, cors=True,
        )
        self.assertEqual(out, [
            (b"content-type", b"application/grpc-web+proto"),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
        ])
        self.assertNotIn(
            b"access-control-expose-headers",
            [n for n, _ in web_response_headers([], Flavour.TEXT, cors=False)],
        )

    def test_expose_headers_merge(self) -> None:
        """An existing expose list gains the missing names only, once."""
        merged = expose_headers([(b"access-control-expose-headers", b"x-a, grpc-status")])
        self.assertEqual(merged, [(
            b"access-control-expose-headers",
            b"x-a, grpc-status, grpc-message, grpc-status-details-bin",
        )])
        star = [(b"access-control-expose-headers", b"*")]
        self.assertEqual(expose_headers(star), star)

    def test_routing(self) -> None:
        """gRPC-Web on a method path, either protocol; not on other paths."""
        web = b"application/grpc-web+proto"
        self.assertIs(route_for(GET_ITEM.encode(), web, False), Route.GRPC_WEB)
        self.assertIs(route_for(GET_ITEM.encode(), web, True), Route.GRPC_WEB)
        self.assertIs(route_for(b"/a/b/c", web, True), Route.NOT_FOUND)
        self.assertIs(route_for(b"/x.Y/Z?q=1", web, True), Route.NOT_FOUND)
        self.assertIs(route_for(GET_ITEM.encode(), b"application/grpc", True), Route.GRPC)
        self.assertIs(route_for(b"/api/ws", None, False, b"websocket"), Route.WEBSOCKET)
        self.assertIs(route_for(b"/events", None, True, b"websocket"), Route.UPGRADE_REFUSED)


class TrailersFrameTests(SynchronousTestCase):
    """The 0x80 frame that carries the trailers in the body."""

    def test_round_trip(self) -> None:
        """Lower-case name: value lines behind flag 0x80 and a 4-byte length."""
        frame = trailers_frame([(b"Grpc-Status", b"0"), (b"grpc-message", b"ok")])
        self.assertEqual(frame[0], 0x80)
        block = b"grpc-status: 0\r\ngrpc-message: ok\r\n"
        self.assertEqual(frame[1:5], len(block).to_bytes(4, "big"))
        self.assertEqual(frame[5:], block)
        self.assertEqual(
            parse_trailers_frame(frame[5:]), [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
        )

    def test_split_frames(self) -> None:
        """Messages and trailers come apart again."""
        body = frame_message(b"one") + frame_message(b"") + trailers_frame([(b"grpc-status", b"0")])
        self.assertEqual(split_frames(body), ([b"one", b""], [(b"grpc-status", b"0")]))


class Base64DecoderTests(SynchronousTestCase):
    """The text flavour: base64 padded per chunk, split anywhere."""

    def test_padded_chunks_byte_by_byte(self) -> None:
        """Chunks padded on their own decode to the concatenation, fed one byte at a time."""
        parts = [b"a", b"bc", b"defg", b"", b"hi" * 40]
        text = b"".join(encode_text_chunk(p) for p in parts)
        self.assertIn(b"=", text[:-4])  # padding inside the stream
        decoder = Base64Decoder()
        out = b"".join(decoder.feed(text[i : i + 1]) for i in range(len(text)))
        decoder.finish()
        self.assertEqual(out, b"".join(parts))

    def test_whole_stream_at_once(self) -> None:
        """One read with padding in the middle."""
        decoder = Base64Decoder()
        self.assertEqual(decoder.feed(b"YQ==YmM=ZGVm"), b"abcdef")
        self.assertTrue(decoder.at_boundary)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=8), st.lists(st.integers(1, 9), max_size=20))
    def test_any_chunks_any_reads(self, chunks: list[bytes], reads: list[int]) -> None:
        """Whatever the chunks and however the reads cut their base64, the bytes come back."""
        text = b"".join(encode_text_chunk(c) for c in chunks)
        decoder = Base64Decoder()
        out, pos = b"", 0
        for size in reads:
            out += decoder.feed(text[pos : pos + size])
            pos += size
        out += decoder.feed(text[pos:])
        decoder.finish()
        self.assertEqual(out, b"".join(chunks))

    def test_malformed(self) -> None:
        """Characters outside base64, and a stream ending inside a quantum, are errors."""
        self.assertRaises(MalformedText, Base64Decoder().feed, b"ab!d")
        decoder = Base64Decoder()
        decoder.feed(b"YW")
        self.assertRaises(MalformedText, decoder.finish)


# --- end to end ----------------------------------------------------------------------


class _HoldingServicer(ItemsServicer):
    """WatchItems sends its first item, then waits until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def WatchItems(
        self, request: demo_pb2.WatchItemsRequest, context: grpc.ServicerContext
    ) -> Iterator[demo_pb2.Item]:
        if request.payload_size != 7:
            yield from super().WatchItems(request, context)
            return
        self._start("WatchItems", context)
        yield demo_pb2.Item(id="first", name="watched")
        while not self.release.wait(0.01) and context.is_active():
            pass
        yield demo_pb2.Item(id="second", name="watched")


def web_body(message: Any, flavour: Flavour = Flavour.BINARY) -> bytes:
    data = frame_message(message.SerializeToString())
    return data if flavour is Flavour.BINARY else base64.b64encode(data)


def read_web(body: bytes, flavour: Flavour) -> tuple[list[bytes], dict[bytes, bytes]]:
    if flavour is Flavour.TEXT:
        decoder = Base64Decoder()
        body = decoder.feed(body)
        decoder.finish()
    messages, trailers = split_frames(body)
    return messages, dict(trailers or [])


CONTENT_TYPES = {
    Flavour.BINARY: "application/grpc-web+proto",
    Flavour.TEXT: "application/grpc-web-text",
}


class GrpcWebEndToEndTests(TestCase):
    """gRPC-Web calls through the gateway to the demo Master API."""

    timeout = 60

    def setUp(self) -> None:
        self.servicer = _HoldingServicer()
        server, port, _ = serve_master_api(0, servicer=self.servicer)
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        self.addCleanup(self.servicer.release.set)
        self.gw: RunningGateway = start_gateway(
            self,
            gateway_config(
                grpc=f"127.0.0.1:{port}",
                extra="grpc: {allow: ['/demo.'], deny: ['/demo.masterapi.v1.Items/Put']}\n",
            ),
        )

    def client(self, http2: bool) -> httpx.Client:
        client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        return client

    def post(self, http2: bool, path: str, body: bytes, flavour: Flavour,
             headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client(http2).post(
            self.gw.https + path,
            content=body,
            headers={"content-type": CONTENT_TYPES[flavour], "x-grpc-web": "1",
                     **(headers or {})},
        )

    @inlineCallbacks
    def test_unary_every_protocol_and_flavour(self) -> Any:
        """A unary call answers 200, the message, then the trailers frame with status 0,
        over HTTP/1.1 and HTTP/2, binary and text; metadata passes both ways."""
        request = demo_pb2.GetItemRequest(id="7", payload_size=3)
        for http2 in (False, True):
            for flavour in Flavour:
                response = yield deferToThread(
                    self.post, http2, GET_ITEM, web_body(request, flavour), flavour,
                    {"x-echo-who": "browser"},
                )
                self.assertEqual(response.http_version, "HTTP/2" if http2 else "HTTP/1.1")
                self.assertEqual(response.status_code, 200)
                expected_type = "application/grpc-web" + (
                    "-text" if flavour is Flavour.TEXT else ""
                )
                self.assertTrue(response.headers["content-type"].startswith(expected_type))
                self.assertEqual(response.headers.get("x-echo-who"), "browser")
                messages, trailers = read_web(response.content, flavour)
                self.assertEqual(len(messages), 1, (http2, flavour))
                item = demo_pb2.Item.FromString(messages[0])
                self.assertEqual((item.id, item.payload), ("7", b"xxx"))
                self.assertEqual(trailers[b"grpc-status"], b"0")
                self.assertEqual(trailers[b"x-trailer-who"], b"browser")

    @inlineCallbacks
    def test_server_streaming_is_flushed_as_it_comes(self) -> Any:
        """The first streamed message reaches the client while the Master API still
        holds the second back (nothing waits for the end of the stream)."""
        for http2, flavour in ((False, Flavour.TEXT), (True, Flavour.BINARY)):
            self.servicer.release.clear()
            body = web_body(demo_pb2.WatchItemsRequest(count=2, payload_size=7), flavour)

            def call(http2: bool = http2, flavour: Flavour = flavour, body: bytes = body
                     ) -> tuple[bytes, bytes]:
                headers = {"content-type": CONTENT_TYPES[flavour]}
                with self.client(http2).stream(
                    "POST", self.gw.https + WATCH_ITEMS, content=body, headers=headers
                ) as response:
                    chunks = response.iter_raw()
                    first = b""
                    decoder = Base64Decoder()
                    while len(first) < 5 or len(first) < 5 + int.from_bytes(first[1:5], "big"):
                        chunk = next(chunks)
                        first += decoder.feed(chunk) if flavour is Flavour.TEXT else chunk
                    # The Master API has sent one message and waits for us.
                    self.servicer.release.set()
                    rest = b"".join(chunks)
                    if flavour is Flavour.TEXT:
                        rest = decoder.feed(rest)
                    return first, rest

            first, rest = yield deferToThread(call)
            messages, trailers = split_frames(first + rest)
            self.assertEqual(
                [demo_pb2.Item.FromString(m).id for m in messages], ["first", "second"]
            )
            self.assertEqual(dict(trailers or [])[b"grpc-status"], b"0")

    @inlineCallbacks
    def test_error_with_status_and_details(self) -> Any:
        """A failed call: 200 with grpc-status, grpc-message and the details, over both
        protocols (in the headers when trailers-only, else in the trailers frame)."""
        behaviour = demo_pb2.Behaviour(fail_code=5, fail_message="no such item", fail_detail="d1")
        request = demo_pb2.GetItemRequest(id="x", behaviour=behaviour)
        for http2 in (False, True):
            response = yield deferToThread(
                self.post, http2, GET_ITEM, web_body(request), Flavour.BINARY
            )
            self.assertEqual(response.status_code, 200)
            _, trailers = read_web(response.content, Flavour.BINARY)
            found = {k.encode(): v.encode() for k, v in response.headers.items()}
            found.update(trailers)
            self.assertEqual(found[b"grpc-status"], b"5")
            self.assertEqual(found[b"grpc-message"], b"no such item")
            details = found[b"grpc-status-details-bin"]
            status = status_pb2.Status.FromString(base64.b64decode(details + b"=="))
            unpacked = demo_pb2.Item()
            status.details[0].Unpack(unpacked)
            self.assertEqual(unpacked.name, "d1")

    @inlineCallbacks
    def test_denied_method_trailers_only_with_cors_exposure(self) -> Any:
        """A denied method is a trailers-only UNIMPLEMENTED in the headers; with an
        Origin the status headers are exposed to the page's script."""
        response = yield deferToThread(
            self.post, True, "/demo.masterapi.v1.Items/PutItems",
            web_body(demo_pb2.Item()), Flavour.BINARY, {"origin": "https://app.test"},
        )
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["grpc-status"], "12")
        self.assertEqual(response.content, b"")
        self.assertEqual(
            response.headers["access-control-expose-headers"], EXPOSE_HEADERS.decode()
        )
        self.assertTrue(response.headers["content-type"].startswith("application/grpc-web"))

    @inlineCallbacks
    def test_deadline(self) -> Any:
        """grpc-timeout applies: a slow call ends DEADLINE_EXCEEDED (4)."""
        request = demo_pb2.GetItemRequest(id="s", behaviour=demo_pb2.Behaviour(delay_ms=5000))
        for http2 in (False, True):
            response = yield deferToThread(
                self.post, http2, GET_ITEM, web_body(request, Flavour.TEXT), Flavour.TEXT,
                {"grpc-timeout": "200m"},
            )
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.headers["grpc-status"], "4")

    @inlineCallbacks
    def test_cancel_reaches_the_master_api(self) -> Any:
        """A client that goes away mid-stream (HTTP/1.1: closes its connection; HTTP/2:
        its connection goes) cancels the upstream call."""
        body = web_body(demo_pb2.WatchItemsRequest(count=2, payload_size=7))
        for http2 in (False, True):
            cancelled = threading.Event()
            self.servicer.on_cancel = lambda method, cancelled=cancelled: cancelled.set()
            self.servicer.release.clear()

            def call(http2: bool = http2, cancelled: threading.Event = cancelled) -> bool:
                client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20)
                with client.stream(
                    "POST", self.gw.https + WATCH_ITEMS, content=body,
                    headers={"content-type": CONTENT_TYPES[Flavour.BINARY]},
                ) as response:
                    next(response.iter_raw())  # the first message: the call is running
                    client.close()
                return cancelled.wait(15)

            self.assertTrue((yield deferToThread(call)), http2)
            self.assertEqual(self.servicer.cancelled[-1][0], "WatchItems")

    @inlineCallbacks
    def test_malformed_text_body(self) -> Any:
        """A grpc-web-text body that is not base64 is INTERNAL; the gateway serves on."""
        response = yield deferToThread(
            self.post, True, GET_ITEM, b"!!!!", Flavour.TEXT
        )
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.headers["grpc-status"], "13")
        again = yield deferToThread(
            self.post, True, GET_ITEM, web_body(demo_pb2.GetItemRequest(id="ok")),
            Flavour.BINARY,
        )
        _, trailers = read_web(again.content, Flavour.BINARY)
        self.assertEqual(trailers[b"grpc-status"], b"0")
