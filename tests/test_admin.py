"""The admin listener end to end: real sockets, httpx (HTTP/1.1 and h2c) and grpcio.

The gateway service runs in the test's reactor on 127.0.0.1 port 0 in front of a real
twisted.web backend and the demo's grpcio Master API; the admin listener beside it
shares its :class:`~eventgw.admin.state.ServingState`.  Blocking clients run in threads.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import replace
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc
from demo.masterapi.grpc_server import serve as serve_master_api
from eventgw.admin.service import AdminService, MetricsFlushService
from eventgw.admin.state import ServingState
from eventgw.config import TlsConfig, load_config
from eventgw.errors import ConfigError
from eventgw.service import GatewayService, gateway_service
from tests.rig import gateway_config, listen_site

#: Every metric name of the operations contract (as the text format names the family).
CONTRACT_METRICS = {
    "eventgw_requests": "counter",
    "eventgw_request_duration_seconds": "histogram",
    "eventgw_grpc_calls": "counter",
    "eventgw_events": "counter",
    "eventgw_upstream_requests": "counter",
    "eventgw_connections_open": "gauge",
    "eventgw_config_reloads": "counter",
    "eventgw_config_last_reload_success_timestamp_seconds": "gauge",
    "eventgw_tls_certificate_expiry_timestamp_seconds": "gauge",
    "eventgw_ratelimited": "counter",
    "eventgw_auth_denied": "counter",
}


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


def scrape(text: str) -> dict[str, Any]:
    """Family name -> family, parsed with prometheus_client's own parser."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return 0.0


class AdminListenerTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        server, grpc_port, _ = serve_master_api(0)
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        api_port = listen_site(self, _Hello())
        config = gateway_config(api=f"http://127.0.0.1:{api_port}",
                                grpc=f"127.0.0.1:{grpc_port}")
        cert_dir = tempfile.mkdtemp(prefix="eventgw-test-cert-")
        config = replace(config, tls=TlsConfig(dev_cert_dir=cert_dir))
        self.ca_file = os.path.join(cert_dir, "gateway-dev.pem")
        self.state = ServingState()
        self.gateway = GatewayService(config, reactor, state=self.state)
        self.gateway.startService()
        self.addCleanup(self._stop_gateway)
        self.admin = AdminService("127.0.0.1", 0, self.state, reactor)
        self.admin.startService()
        self.addCleanup(self.admin.close)
        assert self.admin.port is not None
        self.admin_url = f"http://127.0.0.1:{self.admin.port.getHost().port}"  # type: ignore[attr-defined]
        self.tls_port = self.gateway.ports[0].getHost().port  # type: ignore[attr-defined]
        self.cleartext_port = self.gateway.ports[1].getHost().port  # type: ignore[attr-defined]

    def _stop_gateway(self) -> Any:
        if self.gateway.running:
            return self.gateway.stopService()
        return None

    def client(self, http2: bool) -> httpx.Client:
        # http2 without http1 on http://: h2c with prior knowledge.
        client = httpx.Client(http1=not http2, http2=http2, timeout=20)
        self.addCleanup(client.close)
        return client

    def get(self, client: httpx.Client, path: str) -> Any:
        return deferToThread(client.get, self.admin_url + path)

    def health_stub(self) -> Any:
        channel = grpc.insecure_channel(self.admin_url.removeprefix("http://"))
        self.addCleanup(channel.close)
        return health_pb2_grpc.HealthStub(channel)

    @inlineCallbacks
    def test_health_and_readiness_over_http1_and_h2c(self) -> Any:
        """/healthz is 200 and /readyz 200 serving, over HTTP/1.1 and h2c; after
        start_draining /readyz is 503 draining and /healthz still 200."""
        for http2 in (False, True):
            client = self.client(http2)
            response = yield self.get(client, "/healthz")
            self.assertEqual(response.status_code, 200)
            self.assertEqual(response.http_version, "HTTP/2" if http2 else "HTTP/1.1")
            self.assertEqual(response.json(), {"status": "ok"})
            response = yield self.get(client, "/readyz")
            self.assertEqual((response.status_code, response.json()),
                             (200, {"status": "serving"}))
        self.state.start_draining()
        for http2 in (False, True):
            client = self.client(http2)
            response = yield self.get(client, "/readyz")
            self.assertEqual((response.status_code, response.json()),
                             (503, {"status": "draining"}))
            response = yield self.get(client, "/healthz")
            self.assertEqual(response.status_code, 200)

    @inlineCallbacks
    def test_gateway_drain_flips_readiness_and_admin_stays_up(self) -> Any:
        """Stopping the gateway service turns /readyz 503 at once, and the admin
        listener still answers after the gateway has stopped."""
        client = self.client(False)
        stopped = self.gateway.stopService()
        self.assertTrue(self.state.draining)
        response = yield self.get(client, "/readyz")
        self.assertEqual(response.status_code, 503)
        yield stopped
        response = yield self.get(client, "/healthz")
        self.assertEqual(response.status_code, 200)

    @inlineCallbacks
    def test_metrics_count_requests_through_the_main_port(self) -> Any:
        """A real /api request and gRPC calls through the gateway's ports show in the
        /metrics text (parsed by prometheus_client), with every contract metric name;
        a method the Master API answered has its labels, an unknown one is other."""
        admin = self.client(False)
        response = yield self.get(admin, "/metrics")
        before = scrape(response.text)

        def traffic() -> None:
            with httpx.Client(verify=False, timeout=20) as client:
                answer = client.get(f"https://127.0.0.1:{self.tls_port}/api/hello")
                assert answer.status_code == 200, answer
            with grpc.insecure_channel(f"127.0.0.1:{self.cleartext_port}") as channel:
                demo_pb2_grpc.ItemsStub(channel).GetItem(
                    demo_pb2.GetItemRequest(id="1"), timeout=10
                )
                unknown = channel.unary_unary("/no.such.Service/Nothing")
                try:
                    unknown(b"", timeout=10)
                except grpc.RpcError as e:
                    assert e.code() is grpc.StatusCode.UNIMPLEMENTED, e

        yield deferToThread(traffic)
        response = yield self.get(admin, "/metrics")
        self.assertEqual(response.status_code, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/plain"))
        after = scrape(response.text)
        for name, kind in CONTRACT_METRICS.items():
            self.assertIn(name, after)
            self.assertEqual(after[name].type, kind, name)

        def delta(family: str, sample: str, **labels: str) -> float:
            return value(after, family, sample, **labels) - value(
                before, family, sample, **labels)

        self.assertEqual(delta("eventgw_requests", "eventgw_requests_total",
                               route="api", protocol="HTTP/1.1", code="200"), 1)
        self.assertEqual(delta("eventgw_requests", "eventgw_requests_total",
                               route="grpc", protocol="HTTP/2", code="200"), 2)
        self.assertEqual(delta("eventgw_request_duration_seconds",
                               "eventgw_request_duration_seconds_count", route="api"), 1)
        self.assertEqual(delta("eventgw_grpc_calls", "eventgw_grpc_calls_total",
                               grpc_service="demo.masterapi.v1.Items", grpc_method="GetItem",
                               grpc_code="OK"), 1)
        self.assertEqual(delta("eventgw_grpc_calls", "eventgw_grpc_calls_total",
                               grpc_service="other", grpc_method="other",
                               grpc_code="UNIMPLEMENTED"), 1)
        self.assertEqual(delta("eventgw_upstream_requests", "eventgw_upstream_requests_total",
                               upstream="master_api_http", outcome="ok"), 1)
        self.assertEqual(delta("eventgw_upstream_requests", "eventgw_upstream_requests_total",
                               upstream="master_api_grpc", outcome="ok"), 2)
        self.assertGreaterEqual(value(after, "eventgw_connections_open",
                                      "eventgw_connections_open", listener="admin"), 1)
        self.assertGreater(value(
            after, "eventgw_tls_certificate_expiry_timestamp_seconds",
            "eventgw_tls_certificate_expiry_timestamp_seconds"), 0)
        self.assertGreater(value(
            after, "eventgw_config_last_reload_success_timestamp_seconds",
            "eventgw_config_last_reload_success_timestamp_seconds"), 0)
        # The admin listener's own requests are not counted.
        self.assertFalse(any(s.labels.get("route") == "admin"
                             for s in after["eventgw_requests"].samples))

    @inlineCallbacks
    def test_metrics_over_h2c(self) -> Any:
        """/metrics is served over h2c too."""
        response = yield self.get(self.client(True), "/metrics")
        self.assertEqual((response.status_code, response.http_version), (200, "HTTP/2"))
        self.assertIn("eventgw_requests", scrape(response.text))

    @inlineCallbacks
    def test_grpc_health_check(self) -> Any:
        """Check for "" is SERVING, then NOT_SERVING while draining; another service
        name is NOT_FOUND."""
        stub = self.health_stub()
        request = health_pb2.HealthCheckRequest(service="")
        answer = yield deferToThread(stub.Check, request, timeout=10)
        self.assertEqual(answer.status, health_pb2.HealthCheckResponse.SERVING)

        def unknown() -> grpc.StatusCode:
            try:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        code = yield deferToThread(unknown)
        self.assertIs(code, grpc.StatusCode.NOT_FOUND)
        self.state.start_draining()
        answer = yield deferToThread(stub.Check, request, timeout=10)
        self.assertEqual(answer.status, health_pb2.HealthCheckResponse.NOT_SERVING)

    @inlineCallbacks
    def test_grpc_health_watch_sees_the_drain(self) -> Any:
        """Watch sends SERVING, then NOT_SERVING the moment the drain starts."""
        stub = self.health_stub()
        state = self.state

        def watch() -> list[int]:
            responses = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
            seen = [next(responses).status]
            reactor.callFromThread(state.start_draining)  # type: ignore[attr-defined]
            seen.append(next(responses).status)
            responses.cancel()
            return seen

        seen = yield deferToThread(watch)
        self.assertEqual(seen, [health_pb2.HealthCheckResponse.SERVING,
                                health_pb2.HealthCheckResponse.NOT_SERVING])

    @inlineCallbacks
    def test_other_paths_and_methods(self) -> Any:
        """Another path is 404, another HTTP method 405, another gRPC method
        UNIMPLEMENTED."""
        client = self.client(False)
        response = yield self.get(client, "/nowhere")
        self.assertEqual(response.status_code, 404)
        response = yield deferToThread(client.post, self.admin_url + "/readyz", content=b"x")
        self.assertEqual(response.status_code, 405)
        channel = grpc.insecure_channel(self.admin_url.removeprefix("http://"))
        self.addCleanup(channel.close)

        def call() -> grpc.StatusCode:
            try:
                channel.unary_unary("/grpc.health.v1.Health/List")(b"", timeout=10)
            except grpc.RpcError as e:
                return e.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        code = yield deferToThread(call)
        self.assertIs(code, grpc.StatusCode.UNIMPLEMENTED)


class AdminServiceTests(SynchronousTestCase):
    def test_port_in_use_names_the_key(self) -> None:
        """A taken admin port is a ConfigError naming admin.listen, at prepare and start."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            admin = AdminService("127.0.0.1", port, ServingState(), reactor)
            with self.assertRaises(ConfigError) as caught:
                admin.prepare()
            self.assertTrue(str(caught.exception).startswith("admin.listen:"))
            with self.assertRaises(ConfigError) as caught:
                admin.startService()
            self.assertTrue(str(caught.exception).startswith("admin.listen:"))

    def test_gateway_service_adds_the_admin_listener(self) -> None:
        """gateway_service has the admin listener as a second child sharing the
        gateway's state when admin.listen is set, and none without it; a worker has
        the service flushing its metrics to its supervisor's files instead."""
        config = load_config(
            "master_api: {http: 'http://127.0.0.1:9'}\nadmin: {listen: '127.0.0.1:0'}\n"
        )
        children = list(gateway_service(config))
        self.assertEqual([type(c) for c in children], [GatewayService, AdminService])
        self.assertIs(children[0].state, children[1].state)  # type: ignore[attr-defined]
        self.assertEqual(
            [type(c) for c in gateway_service(config, admin=False)],
            [GatewayService, MetricsFlushService],
        )
        config = load_config("master_api: {http: 'http://127.0.0.1:9'}\n")
        self.assertEqual(len(list(gateway_service(config))), 1)
