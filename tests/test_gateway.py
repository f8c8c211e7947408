"""Gateway.busy: the router asks each flow's target whether work it started is in flight."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.server import Request

from eventgw.gateway import Gateway
from tests.rig import gateway_config, listen_site, wait_until
from tests.support import RecordingWriter, make_head


class _HeldResource(resource.Resource):
    """Answers every request only when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Request] = []
        self.arrived: Deferred[None] = Deferred()

    def render_GET(self, request: Request) -> Any:
        self.held.append(request)
        if not self.arrived.called:
            self.arrived.callback(None)
        return server.NOT_DONE_YET

    def release(self) -> None:
        for request in self.held:
            request.setHeader(b"content-length", b"2")
            request.write(b"ok")
            request.finish()
        self.held.clear()


class GatewayBusyTests(TestCase):
    """Gateway.busy follows each target's own busy()."""

    def _gateway(self, api: str | None = None) -> Gateway:
        gateway = Gateway.from_config(gateway_config(api=api), global_reactor)
        self.addCleanup(gateway.close)
        return gateway

    def test_idle_gateway_is_not_busy(self) -> None:
        """Freshly built targets have nothing in flight."""
        gateway = self._gateway()
        assert gateway.api is not None
        self.assertFalse(gateway.api.busy())
        self.assertFalse(gateway.events.busy())
        self.assertFalse(gateway.grpc.busy())
        self.assertFalse(gateway.busy())

    def test_broker_call_in_flight_is_busy(self) -> None:
        """A running broker call makes the events endpoint, and the gateway, busy."""
        gateway = self._gateway()
        call: Deferred[Any] = Deferred()
        gateway.events.running.add(call)  # type: ignore[attr-defined]
        self.assertTrue(gateway.events.busy())
        self.assertTrue(gateway.busy())
        gateway.events.running.discard(call)  # type: ignore[attr-defined]
        self.assertFalse(gateway.busy())

    @inlineCallbacks
    def test_api_request_in_flight_is_busy(self) -> Any:
        """An /api request waiting on a real backend keeps the proxy busy until the
        answer is in and the connection is back in the pool."""
        backend = _HeldResource()
        port = listen_site(self, backend)
        gateway = self._gateway(api=f"http://127.0.0.1:{port}")
        writer = RecordingWriter()
        gateway.start_exchange(make_head(target=b"/api/held"), writer).body_ended([])
        yield backend.arrived
        self.assertTrue(gateway.busy())
        assert gateway.api is not None
        self.assertTrue(gateway.api.busy())
        backend.release()
        yield wait_until(lambda: writer.ended)
        self.assertEqual(writer.status, 200)
        self.assertFalse(gateway.busy())
