# mypy: disable-error-code="no-untyped-call"
"""``master_api.grpc`` and ``event_broker.grpc`` with several hosts: real grpcio servers.

The relay runs in the real gateway service (one grpcio client channel to its cleartext
port); the events endpoint is driven directly with both broker clients.  Assertions are
about counts, never about time.
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived
from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc
from demo.masterapi.grpc_server import ItemsServicer
from eventgw.config import Limits, load_config
from eventgw.events.target import EventsEndpoint
from eventgw.grpc.target import GrpcRelay
from tests.events_support import (
    RecordingBroker,
    binary_headers,
    exchange,
    wait_until,
)
from tests.rig import gateway_config, settle, start_gateway


class CountingItems(ItemsServicer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def GetItem(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.count += 1
        return super().GetItem(request, context)


class GrpcServer:
    """A grpcio server with the demo Master API (or a broker) and grpc.health.v1."""

    def __init__(self, case: TestCase, broker: RecordingBroker | None = None) -> None:
        self.items = CountingItems()
        self.broker = broker
        self.health = health.HealthServicer()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        if broker is None:
            demo_pb2_grpc.add_ItemsServicer_to_server(self.items, self.server)
        else:
            from eventgw._proto.eventbroker.v1 import eventbroker_pb2_grpc

            eventbroker_pb2_grpc.add_EventBrokerServicer_to_server(broker, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.stopped = False
        case.addCleanup(self.stop)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serving(self, yes: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if yes else (
            health_pb2.HealthCheckResponse.NOT_SERVING)
        self.health.set("", status)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self.broker is not None:
                self.broker.released.set()
            self.server.stop(grace=None).wait(10)


def relay_of(gateway: Any) -> GrpcRelay:
    relay = gateway.service.gateway.grpc
    assert isinstance(relay, GrpcRelay)
    return relay


def call_items(port: int, n: int) -> list[grpc.StatusCode]:
    """``n`` GetItem calls on ONE client channel; their status codes."""
    codes: list[grpc.StatusCode] = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = demo_pb2_grpc.ItemsStub(channel)
        for i in range(n):
            try:
                stub.GetItem(demo_pb2.GetItemRequest(id=str(i)), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    return codes


class RelayBalancingTests(TestCase):
    def start(self, servers: list[GrpcServer], extra: str = "") -> Any:
        hosts = ", ".join(f"'{s.key}'" for s in servers)
        config = gateway_config(grpc=f"[{hosts}]", extra=extra)
        return start_gateway(self, config)

    @defer.inlineCallbacks
    def test_calls_of_one_channel_reach_both_hosts(self) -> Generator[Any, Any, None]:
        """100 calls on one client channel: each of two Master API servers gets a fair
        share (kube-proxy would have sent them all to one)."""
        servers = [GrpcServer(self), GrpcServer(self)]
        gw = self.start(servers)
        codes = yield deferToThread(call_items, gw.cleartext_port, 100)
        self.assertEqual(codes, [grpc.StatusCode.OK] * 100)
        counts = [s.items.count for s in servers]
        self.assertEqual(sum(counts), 100)
        self.assertTrue(all(n >= 30 for n in counts), counts)

    @defer.inlineCallbacks
    def test_not_serving_host_is_out_and_back(self) -> Generator[Any, Any, None]:
        """A host whose grpc.health.v1 says NOT_SERVING gets no calls after a few
        intervals, and calls again once it is SERVING."""
        servers = [GrpcServer(self), GrpcServer(self)]
        gw = self.start(
            servers,
            "  health_check: {interval: 0.05, unhealthy_after: 2, healthy_after: 2}\n",
        )
        sick = servers[1]
        sick.serving(False)
        cluster = relay_of(gw).cluster
        assert cluster is not None
        state = cluster.hosts[sick.key].state
        yield wait_until(lambda: not state.healthy)
        before = sick.items.count
        codes = yield deferToThread(call_items, gw.cleartext_port, 40)
        self.assertEqual(codes, [grpc.StatusCode.OK] * 40)
        self.assertEqual(sick.items.count, before)
        sick.serving(True)
        yield wait_until(lambda: state.healthy)
        codes = yield deferToThread(call_items, gw.cleartext_port, 40)
        self.assertEqual(codes, [grpc.StatusCode.OK] * 40)
        self.assertGreater(sick.items.count, before)

    @defer.inlineCallbacks
    def test_killed_host_is_ejected_without_errors(self) -> Generator[Any, Any, None]:
        """A stopped server is ejected after its failures; calls that never reached it
        went to the other host, so none failed."""
        servers = [GrpcServer(self), GrpcServer(self)]
        gw = self.start(servers, "  outlier: {consecutive_failures: 2, eject_for: 30}\n")
        codes = yield deferToThread(call_items, gw.cleartext_port, 10)
        self.assertEqual(codes, [grpc.StatusCode.OK] * 10)
        dead = servers[0]
        yield deferToThread(dead.stop)
        codes = yield deferToThread(call_items, gw.cleartext_port, 40)
        self.assertEqual(codes, [grpc.StatusCode.OK] * 40)
        cluster = relay_of(gw).cluster
        assert cluster is not None
        self.assertEqual(cluster.snapshot()["hosts"][0]["state"], "ejected")  # type: ignore[index]

    @defer.inlineCallbacks
    def test_all_hosts_down_is_unavailable_at_once(self) -> Generator[Any, Any, None]:
        """With both servers stopped a call ends UNAVAILABLE (never a hang)."""
        servers = [GrpcServer(self), GrpcServer(self)]
        gw = self.start(servers)
        for server in servers:
            yield deferToThread(server.stop)
        codes = yield deferToThread(call_items, gw.cleartext_port, 3)
        self.assertEqual(codes, [grpc.StatusCode.UNAVAILABLE] * 3)


def broker_endpoint(
    case: TestCase, servers: list[GrpcServer], client: str, extra: str = ""
) -> EventsEndpoint:
    """The /events endpoint over ``servers`` with ``client`` (h2 or grpcio)."""
    from twisted.internet import reactor

    hosts = ", ".join(f"'{s.key}'" for s in servers)
    config = load_config(
        "master_api: {http: 'http://127.0.0.1:9'}\n"
        f"event_broker: {{grpc: [{hosts}], deadline: 5, client: {client}, "
        f"outlier: {{consecutive_failures: 2, eject_for: 30}}{extra}}}\n"
    )
    endpoint = EventsEndpoint(config.event_broker, Limits(), reactor=reactor, client=client)
    case.addCleanup(endpoint.close)
    return endpoint


class BrokerBalancingTests(TestCase):
    @defer.inlineCallbacks
    def spread_and_kill(self, client: str) -> Generator[Any, Any, None]:
        brokers = [RecordingBroker(), RecordingBroker()]
        servers = [GrpcServer(self, broker) for broker in brokers]
        endpoint = broker_endpoint(self, servers, client)
        accepted: list[str] = []
        statuses: list[int] = []
        for i in range(200):
            if i == 100:
                yield deferToThread(servers[1].stop)
            event_id = f"ev-{i}"
            writer = yield exchange(endpoint, binary_headers(event_id), b"{}")
            statuses.append(writer.status)
            if writer.status == 202:
                accepted.append(event_id)
        received = [call[1].event.id for broker in brokers for call in broker.calls]
        # Both brokers took events before the kill.
        self.assertTrue(all(len(b.calls) >= 25 for b in brokers),
                        [len(b.calls) for b in brokers])
        # Every event answered 202 reached exactly one broker exactly once.
        for event_id in accepted:
            self.assertEqual(received.count(event_id), 1, event_id)
        # And after the kill the surviving broker took (nearly) all.
        self.assertGreaterEqual(statuses[100:].count(202), 90)

    def test_h2_client_spreads_and_survives_a_kill(self) -> Any:
        """h2 client: two brokers share the events; one killed mid-run; every 202 is
        exactly one broker call."""
        return self.spread_and_kill("h2")

    def test_grpcio_client_spreads_and_survives_a_kill(self) -> Any:
        """grpcio client (round_robin over the addresses): the same guarantees."""
        return self.spread_and_kill("grpcio")


class BrokerHealthTests(TestCase):
    @defer.inlineCallbacks
    def not_serving_broker_gets_nothing(self, client: str) -> Generator[Any, Any, None]:
        brokers = [RecordingBroker(), RecordingBroker()]
        servers = [GrpcServer(self, broker) for broker in brokers]
        servers[1].serving(False)
        servers[0].serving(True)
        endpoint = broker_endpoint(
            self, servers, client,
            ", health_check: {interval: 0.05, unhealthy_after: 1, healthy_after: 1}",
        )
        # Until the checks have run, events may still reach either broker.
        in_a_row = 0
        for i in range(400):
            before = len(brokers[0].calls)
            writer = yield exchange(endpoint, binary_headers(f"warm-{i}"), b"{}")
            self.assertEqual(writer.status, 202)
            in_a_row = in_a_row + 1 if len(brokers[0].calls) > before else 0
            if in_a_row >= 10:
                break
            yield settle(0.01)
        self.assertGreaterEqual(in_a_row, 10)
        seen = len(brokers[1].calls)
        for i in range(40):
            writer = yield exchange(endpoint, binary_headers(f"ev-{i}"), b"{}")
            self.assertEqual(writer.status, 202)
        self.assertEqual(len(brokers[1].calls), seen)

    def test_h2_client_leaves_out_a_not_serving_broker(self) -> Any:
        """h2 client: grpc.health.v1 NOT_SERVING takes a broker out of the rotation."""
        return self.not_serving_broker_gets_nothing("h2")

    def test_grpcio_client_leaves_out_a_not_serving_broker(self) -> Any:
        """grpcio client: its own client-side health checks (healthCheckConfig) do the
        same."""
        return self.not_serving_broker_gets_nothing("grpcio")


class _Refusing(Protocol):
    """An HTTP/2 server that answers every request with GOAWAY(last stream 0): the
    stream is refused unprocessed."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen
        self.conn = H2Connection(H2Configuration(client_side=False))

    def connectionMade(self) -> None:
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.seen.append(event.stream_id)
                self.conn.close_connection(last_stream_id=0)
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]


class RefusedStreamTests(TestCase):
    @defer.inlineCallbacks
    def test_refused_stream_goes_to_the_other_host(self) -> Generator[Any, Any, None]:
        """A host that refuses the call's stream (GOAWAY before processing it) costs
        the client nothing: the call is sent once more, to the other host."""
        from twisted.internet import reactor

        seen: list[int] = []
        factory = Factory.forProtocol(lambda: _Refusing(seen))
        refusing = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(refusing.stopListening)
        good = GrpcServer(self)
        config = gateway_config(
            grpc=f"['127.0.0.1:{refusing.getHost().port}', '{good.key}']",
            extra="  balance: round_robin\n",
        )
        gw = start_gateway(self, config)
        codes = yield deferToThread(call_items, gw.cleartext_port, 1)
        self.assertEqual(codes, [grpc.StatusCode.OK])
        self.assertEqual(len(seen), 1)
        self.assertEqual(good.items.count, 1)


class BrokersDownTests(TestCase):
    @defer.inlineCallbacks
    def test_every_broker_down_is_a_503_for_both_clients(self) -> Generator[Any, Any, None]:
        """With both brokers stopped an event is answered 503 (never a hang), by the
        grpcio and the h2 client alike."""
        for client in ("grpcio", "h2"):
            servers = [GrpcServer(self, RecordingBroker()) for _ in range(2)]
            endpoint = broker_endpoint(self, servers, client)
            writer = yield exchange(endpoint, binary_headers("warm"), b"{}")
            self.assertEqual(writer.status, 202)
            for server in servers:
                yield deferToThread(server.stop)
            for i in range(3):
                writer = yield exchange(endpoint, binary_headers(f"down-{i}"), b"{}")
                self.assertEqual(writer.status, 503, client)
