# mypy: disable-error-code="no-untyped-call"
"""``master_api.http`` with several hosts: three real twisted.web backends.

:class:`ApiProxy` is driven directly (``tests.events_support.exchange``); the backends
are real ``Site``s on 127.0.0.1, killed by closing their port and every connection.
Fair-share and preference assertions are about counts, never about time.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventgw.api.target import ApiProxy
from eventgw.config import Limits, load_config
from tests.events_support import FinishingWriter, exchange, wait_until

reactor: Any = global_reactor


class Backend(resource.Resource):
    """Counts requests; ``/healthz`` answers ``health``; ``hold`` keeps answers open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.health = 200
        self.hold = False
        self.held: list[server.Request] = []

    def render(self, request: server.Request) -> bytes | int:
        if request.path == b"/healthz":
            request.setResponseCode(self.health)
            return b"ok" if self.health == 200 else b"not ok"
        self.count += 1
        if self.hold:
            self.held.append(request)
            return server.NOT_DONE_YET
        return b"hello"

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            if not request.finished and not request._disconnected:
                request.write(b"late")
                request.finish()


class _TrackingSite(server.Site):
    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.noisy = False
        self.protocols: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        site = self
        lost = proto.connectionLost

        def connection_lost(reason: Any) -> None:
            site.protocols.discard(proto)
            lost(reason)

        proto.connectionLost = connection_lost
        self.protocols.add(proto)
        return proto


class RunningBackend:
    """A backend that can be killed (port and connections closed) and started again
    on the same port."""

    def __init__(self, case: TestCase) -> None:
        self.resource = Backend()
        self.site = _TrackingSite(self.resource)
        self.port_obj: Any = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.port: int = self.port_obj.getHost().port
        case.addCleanup(self.stop)

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> Deferred[Any]:
        for proto in list(self.site.protocols):
            getattr(proto, "_channel", proto).transport.abortConnection()
        return defer.maybeDeferred(self.port_obj.stopListening)

    def start_again(self) -> None:
        self.port_obj = reactor.listenTCP(self.port, self.site, interface="127.0.0.1")

    def stop(self) -> Deferred[Any]:
        self.resource.release()
        for proto in list(self.site.protocols):
            getattr(proto, "_channel", proto).transport.abortConnection()
        return defer.maybeDeferred(self.port_obj.stopListening)


def proxy_for(case: TestCase, backends: list[RunningBackend], extra: str = "") -> ApiProxy:
    urls = ", ".join(f"'http://{b.key}'" for b in backends)
    config = load_config(
        f"master_api:\n  http: [{urls}]\n  connect_timeout: 2\n  response_timeout: 10\n"
        + extra
    )
    assert config.master_api_http is not None
    proxy = ApiProxy(config.master_api_http, Limits(), reactor=reactor)
    case.addCleanup(proxy.close)
    return proxy


def get(proxy: ApiProxy, path: bytes = b"/api/x") -> Deferred[FinishingWriter]:
    return exchange(proxy, [], method=b"GET", path=path)


@defer.inlineCallbacks
def run_requests(
    proxy: ApiProxy, total: int, concurrency: int = 10
) -> Generator[Deferred[Any], Any, list[int]]:
    """``total`` GETs, at most ``concurrency`` in flight; their statuses in order."""
    statuses: list[int] = []
    in_flight: list[Deferred[FinishingWriter]] = []
    for _ in range(total):
        while len(in_flight) >= concurrency:
            writer = yield in_flight.pop(0)
            statuses.append(writer.status)
        in_flight.append(get(proxy))
    for attempt in in_flight:
        writer = yield attempt
        statuses.append(writer.status)
    return statuses


class SpreadTests(TestCase):
    @defer.inlineCallbacks
    def test_each_of_three_hosts_gets_a_fair_share(self) -> Generator[Any, Any, None]:
        """300 requests over three hosts: every host answers at least 60."""
        backends = [RunningBackend(self) for _ in range(3)]
        proxy = proxy_for(self, backends)
        statuses = yield run_requests(proxy, 300)
        self.assertEqual(statuses, [200] * 300)
        counts = [b.resource.count for b in backends]
        self.assertEqual(sum(counts), 300)
        self.assertTrue(all(n >= 60 for n in counts), counts)

    @defer.inlineCallbacks
    def test_round_robin_takes_turns(self) -> Generator[Any, Any, None]:
        """round_robin gives each of three hosts exactly a third of sequential requests."""
        backends = [RunningBackend(self) for _ in range(3)]
        proxy = proxy_for(self, backends, "  balance: round_robin\n")
        statuses = yield run_requests(proxy, 30, concurrency=1)
        self.assertEqual(statuses, [200] * 30)
        self.assertEqual([b.resource.count for b in backends], [10, 10, 10])

    @defer.inlineCallbacks
    def test_least_request_prefers_the_fast_host(self) -> Generator[Any, Any, None]:
        """A host that holds its answers gets few of 100 concurrent requests; the host
        that answers at once gets the majority."""
        slow, fast = RunningBackend(self), RunningBackend(self)
        slow.resource.hold = True
        proxy = proxy_for(self, [slow, fast])
        in_flight: list[Deferred[FinishingWriter]] = []
        for _ in range(100):
            in_flight.append(get(proxy))
            # Let the fast host answer what it can before the next request.
            yield wait_until(lambda: fast.resource.count + slow.resource.count
                             >= len(in_flight))
        self.assertEqual(fast.resource.count + slow.resource.count, 100)
        self.assertGreaterEqual(fast.resource.count, 80)
        slow.resource.release()
        writers = yield defer.gatherResults(in_flight)
        self.assertEqual({w.status for w in writers}, {200})


class EjectionTests(TestCase):
    @defer.inlineCallbacks
    def test_killed_host_is_ejected_and_requests_retried(self) -> Generator[Any, Any, None]:
        """A killed host fails its configured three connects, is ejected, and every
        request still succeeds (a refused connect goes to another host once)."""
        backends = [RunningBackend(self) for _ in range(3)]
        proxy = proxy_for(self, backends,
                          "  outlier: {consecutive_failures: 3, eject_for: 30}\n")
        statuses = yield run_requests(proxy, 30)
        self.assertEqual(statuses, [200] * 30)
        dead = backends[1]
        yield dead.kill()
        statuses = yield run_requests(proxy, 90, concurrency=1)
        self.assertEqual(statuses, [200] * 90)
        state = proxy.cluster.hosts[dead.key].state
        self.assertEqual(state.state(reactor.seconds()), "ejected")
        self.assertEqual(state.failures, 3)
        rows = {r["host"]: r for r in proxy.cluster.snapshot()["hosts"]}  # type: ignore[union-attr]
        self.assertEqual(rows[dead.key]["state"], "ejected")

    @defer.inlineCallbacks
    def test_all_hosts_down_is_a_quick_502_then_recovery(self) -> Generator[Any, Any, None]:
        """With every host killed each request is a 502 (refused at once, never a
        hang); once one host listens again requests succeed."""
        backends = [RunningBackend(self) for _ in range(3)]
        proxy = proxy_for(self, backends,
                          "  outlier: {consecutive_failures: 2, eject_for: 0.2}\n")
        statuses = yield run_requests(proxy, 6)
        self.assertEqual(statuses, [200] * 6)
        for backend in backends:
            yield backend.kill()
        statuses = yield run_requests(proxy, 10, concurrency=1)
        self.assertEqual(statuses, [502] * 10)
        backends[2].start_again()
        seen: list[int] = []
        for _ in range(200):
            writer = yield get(proxy)
            seen.append(writer.status)
            if writer.status == 200:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(seen[-1], 200)


class HealthCheckTests(TestCase):
    @defer.inlineCallbacks
    def test_failing_healthz_takes_a_host_out_and_back(self) -> Generator[Any, Any, None]:
        """A host answering 503 on /healthz is out within a few intervals (no request
        reaches it) and back once /healthz passes again."""
        backends = [RunningBackend(self) for _ in range(3)]
        proxy = proxy_for(
            self, backends,
            "  health_check: {interval: 0.05, unhealthy_after: 2, healthy_after: 2}\n",
        )
        sick = backends[0]
        sick.resource.health = 503
        state = proxy.cluster.hosts[sick.key].state
        yield wait_until(lambda: not state.healthy)
        before = sick.resource.count
        statuses = yield run_requests(proxy, 60)
        self.assertEqual(statuses, [200] * 60)
        self.assertEqual(sick.resource.count, before)
        sick.resource.health = 200
        yield wait_until(lambda: state.healthy)
        statuses = yield run_requests(proxy, 60)
        self.assertEqual(statuses, [200] * 60)
        self.assertGreater(sick.resource.count, before)

    @defer.inlineCallbacks
    def test_every_host_unhealthy_is_an_immediate_502(self) -> Generator[Any, Any, None]:
        """When no host passes its checks the answer is 502 without a connect."""
        backends = [RunningBackend(self) for _ in range(2)]
        proxy = proxy_for(
            self, backends,
            "  health_check: {interval: 0.05, unhealthy_after: 1, healthy_after: 1}\n",
        )
        for backend in backends:
            backend.resource.health = 500
        yield wait_until(lambda: all(not h.state.healthy for h in proxy.cluster.hosts.values()))
        writer = yield get(proxy)
        self.assertEqual(writer.status, 502)
        self.assertIn("no upstream host", writer.json()["message"])
        self.assertEqual([b.resource.count for b in backends], [0, 0])

