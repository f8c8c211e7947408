"""All three flows through the real gateway service: TLS with ALPN h2 and http/1.1, h2c.

A real grpcio Master API (the demo service) and a real grpcio Event Broker run
in-process; clients are httpx (HTTP/1.1 and HTTP/2) and grpcio (TLS and h2c).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc
from demo.masterapi.grpc_server import serve as serve_master_api
from tests.events_support import start_broker
from tests.rig import (
    RunningGateway,
    free_port,
    gateway_config,
    h2_stream_frames,
    start_gateway,
)

BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "evt-1",
    "ce-source": "/tests",
    "ce-type": "test.created",
    "ce-traceid": "abc",
    "content-type": "application/json",
}


class FlowsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        server, port, self.servicer = serve_master_api(0)
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        self.broker, broker_target = start_broker(self)
        self.gw: RunningGateway = start_gateway(
            self,
            gateway_config(grpc=f"127.0.0.1:{port}", broker=broker_target),
        )

    def http(self, http2: bool) -> httpx.Client:
        client = httpx.Client(http2=http2, verify=self.gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        return client

    def grpc_channel(self, tls: bool) -> grpc.Channel:
        if tls:
            with open(self.gw.ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(f.read())
            channel = grpc.secure_channel(f"localhost:{self.gw.tls_port}", credentials)
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{self.gw.cleartext_port}")
        self.addCleanup(channel.close)
        return channel

    @inlineCallbacks
    def test_events_over_both_protocols(self) -> Any:
        """A binary-mode event is accepted identically over HTTP/1.1 and HTTP/2 (TLS)."""
        for http2, event_id in ((False, "via-h1"), (True, "via-h2")):
            headers = dict(BINARY, **{"ce-id": event_id})
            response = yield deferToThread(
                self.http(http2).post, f"{self.gw.https}/events", headers=headers,
                content=b'{"n": 1}',
            )
            self.assertEqual(response.http_version, "HTTP/2" if http2 else "HTTP/1.1")
            self.assertEqual(response.status_code, 202, response.text)
            self.assertEqual(response.json(), {"id": event_id})
            self.assertTrue(response.headers.get("x-request-id"))
        received = {e.id: e for e in self.broker.events}
        self.assertEqual(set(received), {"via-h1", "via-h2"})
        event = received["via-h2"]
        self.assertEqual((event.source, event.type, event.spec_version),
                         ("/tests", "test.created", "1.0"))
        self.assertEqual(json.loads(event.text_data), {"n": 1})
        self.assertEqual(event.attributes["traceid"].ce_string, "abc")

    @inlineCallbacks
    def test_event_answer_in_two_frames(self) -> Any:
        """Over HTTP/2 the 202 of an event is HEADERS + one DATA frame with END_STREAM
        (a raw h2 client counts the frames)."""
        headers = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/events"),
                   (b":authority", b"localhost"),
                   *((k.encode(), v.encode()) for k, v in dict(BINARY, **{"ce-id": "two"}).items())]
        frames = yield deferToThread(
            h2_stream_frames, self.gw.tls_port, self.gw.ssl_context(["h2"]), headers, b"{}")
        self.assertEqual([(type(f).__name__, "END_STREAM" in f.flags) for f in frames],
                         [("HeadersFrame", False), ("DataFrame", True)])
        self.assertEqual(json.loads(frames[1].data), {"id": "two"})

    @inlineCallbacks
    def test_bad_event_never_reaches_broker(self) -> Any:
        """An event without ce-type is a 400 naming 'type'; the broker sees nothing."""
        headers = {k: v for k, v in BINARY.items() if k != "ce-type"}
        response = yield deferToThread(
            self.http(True).post, f"{self.gw.https}/events", headers=headers, content=b"{}"
        )
        self.assertEqual(response.status_code, 400)
        self.assertIn("type", response.json()["message"])
        self.assertEqual(len(self.broker.events), 0)

    @inlineCallbacks
    def test_grpc_over_tls_and_h2c(self) -> Any:
        """All four RPC kinds pass over TLS (ALPN h2) and over h2c."""
        for tls in (True, False):
            stub = demo_pb2_grpc.ItemsStub(self.grpc_channel(tls))

            def calls(stub: Any = stub) -> tuple[Any, ...]:
                item = stub.GetItem(demo_pb2.GetItemRequest(id="7"), timeout=10)
                summary = stub.PutItems(
                    iter([demo_pb2.Item(id=str(i)) for i in range(5)]), timeout=10
                )
                watched = list(stub.WatchItems(demo_pb2.WatchItemsRequest(count=4), timeout=10))
                synced = list(stub.SyncItems(
                    iter([demo_pb2.Item(name="a"), demo_pb2.Item(name="b")]), timeout=10
                ))
                return item, summary, watched, synced

            item, summary, watched, synced = yield deferToThread(calls)
            self.assertEqual(item.id, "7")
            self.assertEqual(summary.count, 5)
            self.assertEqual(len(watched), 4)
            self.assertEqual([i.name for i in synced], ["A", "B"])

    @inlineCallbacks
    def test_event_broker_not_reachable_over_grpc(self) -> Any:
        """The default deny list refuses the Event Broker's package with UNIMPLEMENTED."""
        from eventgw._proto.eventbroker.v1 import eventbroker_pb2, eventbroker_pb2_grpc

        stub = eventbroker_pb2_grpc.EventBrokerStub(self.grpc_channel(tls=False))

        def call() -> grpc.StatusCode:
            try:
                stub.Publish(eventbroker_pb2.PublishRequest(), timeout=10)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        self.assertEqual((yield deferToThread(call)), grpc.StatusCode.UNIMPLEMENTED)


class DownUpstreamsTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_everything_down(self) -> Any:
        """Down Master API gRPC is UNAVAILABLE; a down broker is a 503 JSON answer."""
        gw = start_gateway(self, gateway_config(
            grpc=f"127.0.0.1:{free_port()}", broker=f"127.0.0.1:{free_port()}"
        ))
        channel = grpc.insecure_channel(f"127.0.0.1:{gw.cleartext_port}")
        self.addCleanup(channel.close)
        stub = demo_pb2_grpc.ItemsStub(channel)

        def call() -> grpc.StatusCode:
            try:
                stub.GetItem(demo_pb2.GetItemRequest(id="1"), timeout=10)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        self.assertEqual((yield deferToThread(call)), grpc.StatusCode.UNAVAILABLE)
        client = httpx.Client(verify=gw.ssl_context(), timeout=20)
        self.addCleanup(client.close)
        response = yield deferToThread(
            client.post, f"{gw.https}/events", headers=BINARY, content=b"{}"
        )
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["code"], 14)
