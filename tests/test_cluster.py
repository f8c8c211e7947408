# mypy: disable-error-code="no-untyped-call"
"""The shell of several hosts: DNS re-resolution, draining, reload hand-over, the admin
page and the per-host metrics."""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from dataclasses import replace
from typing import Any

from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventgw.admin.metrics import REGISTRY, flush
from eventgw.admin.state import ServingState
from eventgw.admin.target import AdminTarget
from eventgw.config import Balancing, BrokerUpstream, Outlier, load_config
from eventgw.gateway import Gateway
from eventgw.upstream.cluster import Cluster
from tests.events_support import exchange
from tests.test_upstreams_http import RunningBackend, run_requests

reactor: Any = global_reactor


class FakeResolver:
    """An IHostnameResolver answering from a table (what a headless Service's DNS
    would say), synchronously."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.asked = 0

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.asked += 1
        receiver.resolutionBegan(None)
        for address in self.answers.get(hostName, []):
            receiver.addressResolved(IPv4Address("TCP", address, portNumber))
        receiver.resolutionComplete()
        return None


class ClockWithResolver(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.nameResolver = FakeResolver()


class Pool:
    def __init__(self, name: str, address: str, port: int) -> None:
        self.where = (name, address, port)
        self.closed = False

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def cluster(clock: Clock, entries: list[tuple[str, int]],
            balancing: Balancing | None = None) -> Cluster[Pool]:
    return Cluster(
        "master_api_http", entries, balancing or Balancing(resolve_interval=10.0),
        make_pool=Pool, close_pool=lambda p: p.close(), reactor=clock,
        rng=random.Random(3),
    )


class ResolutionTests(SynchronousTestCase):
    def test_each_address_of_a_name_is_a_host_and_changes_follow_dns(self) -> None:
        """A name resolving to three addresses is three hosts; at the next interval one
        address gone drains (closed once idle), a new one joins."""
        clock = ClockWithResolver()
        resolver = clock.nameResolver
        resolver.answers["api.ns.svc"] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        hosts = cluster(clock, [("api.ns.svc", 8080)])
        self.assertEqual(list(hosts.hosts), ["api.ns.svc:8080"])  # before the first answer
        hosts.start()
        self.assertEqual(list(hosts.hosts), ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"])
        busy = hosts.hosts["10.0.0.2:8080"]
        hosts.started(busy)
        self.assertEqual(busy.pool.where, ("api.ns.svc", "10.0.0.2", 8080))
        resolver.answers["api.ns.svc"] = ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
        clock.advance(10.0)
        self.assertEqual(list(hosts.hosts), ["10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.4:8080"])
        self.assertEqual(hosts.draining, [busy])
        self.assertFalse(busy.pool.closed)  # in-flight work finishes on it
        self.assertTrue(hosts.busy())
        hosts.finished(busy, failed=False)
        self.assertTrue(busy.pool.closed)
        self.assertEqual(hosts.draining, [])
        self.assertEqual(resolver.asked, 2)

    def test_failed_or_empty_resolution_keeps_the_hosts(self) -> None:
        """A name that resolves to nothing keeps what it had."""
        clock = ClockWithResolver()
        clock.nameResolver.answers["b.svc"] = ["10.0.0.9"]
        hosts = cluster(clock, [("b.svc", 1)])
        hosts.start()
        clock.nameResolver.answers["b.svc"] = []
        clock.advance(10.0)
        self.assertEqual(list(hosts.hosts), ["10.0.0.9:1"])

    def test_ip_addresses_are_never_resolved(self) -> None:
        """A list of IP addresses asks no resolver."""
        clock = ClockWithResolver()
        hosts = cluster(clock, [("127.0.0.1", 1), ("127.0.0.2", 1)])
        hosts.start()
        clock.advance(100.0)
        self.assertEqual(clock.nameResolver.asked, 0)
        self.assertEqual(len(hosts.hosts), 2)


class HandOverTests(SynchronousTestCase):
    def test_hosts_in_both_keep_their_pools(self) -> None:
        """A reload's new cluster takes the pools of hosts both name; the old one closes
        only the pools of hosts it alone had."""
        clock = Clock()
        old = cluster(clock, [("10.0.0.1", 80), ("10.0.0.2", 80)])
        kept = old.hosts["10.0.0.2:80"].pool
        dropped = old.hosts["10.0.0.1:80"].pool
        new = cluster(clock, [("10.0.0.2", 80), ("10.0.0.3", 80)])
        new.take_over(old)
        self.assertIs(new.hosts["10.0.0.2:80"].pool, kept)
        old.close()
        self.assertTrue(dropped.closed)
        self.assertFalse(kept.closed)
        new.close()
        self.assertTrue(kept.closed)

    def test_ejection_counts_reach_the_metrics(self) -> None:
        """Requests, failures and an ejection of a host are counted with its label."""
        clock = Clock()
        hosts = cluster(clock, [("10.9.0.1", 80), ("10.9.0.2", 80), ("10.9.0.3", 80)],
                        Balancing(outlier=Outlier(consecutive_failures=2, eject_for=5)))
        host = hosts.hosts["10.9.0.1:80"]
        for _ in range(2):
            hosts.started(host)
            hosts.finished(host, failed=True)
        flush()

        def sample(event: str) -> float | None:
            return REGISTRY.get_sample_value(
                "eventgw_upstream_host_events_total",
                {"upstream": "master_api_http", "host": "10.9.0.1:80", "event": event},
            )

        self.assertEqual((sample("request"), sample("failure"), sample("ejected")),
                         (2.0, 2.0, 1.0))


class GatewayReloadTests(TestCase):
    @defer.inlineCallbacks
    def test_reload_keeps_connections_of_kept_hosts(self) -> Generator[Any, Any, None]:
        """A new Gateway built from a changed host list uses the old pool (and its open
        connection) for the host both lists name; the dropped host's pool closes with
        the old gateway; the admin page shows the new hosts."""
        a, b, c = RunningBackend(self), RunningBackend(self), RunningBackend(self)

        def config(*backends: RunningBackend) -> Any:
            urls = ", ".join(f"'http://{x.key}'" for x in backends)
            return load_config(f"master_api:\n  http: [{urls}]\n")

        old = Gateway.from_config(config(a, b), reactor)
        self.addCleanup(old.close)
        assert old.api is not None
        statuses = yield run_requests(old.api, 20)  # type: ignore[arg-type]
        self.assertEqual(statuses, [200] * 20)
        old_cluster = old.api.cluster  # type: ignore[attr-defined]
        pool_b = old_cluster.hosts[b.key].pool
        pool_a = old_cluster.hosts[a.key].pool
        made = pool_b.connections_made
        self.assertGreater(pool_b.idle_count, 0)
        new = Gateway.from_config(config(b, c), reactor, previous=old)
        self.addCleanup(new.close)
        self.assertIs(new.api.cluster.hosts[b.key].pool, pool_b)  # type: ignore[union-attr]
        statuses = yield run_requests(new.api, 20, concurrency=1)  # type: ignore[arg-type]
        self.assertEqual(statuses, [200] * 20)
        self.assertEqual(pool_b.connections_made, made)  # no new connection to b
        self.assertFalse(old.busy())
        yield old.close()
        self.assertEqual(pool_a.open_count, 0)
        self.assertGreater(pool_b.open_count, 0)
        state = ServingState()
        state.upstreams = new.upstreams
        writer = yield exchange(AdminTarget(state), [], method=b"GET", path=b"/upstreams")
        page = json.loads(bytes(writer.body))
        hosts = [row["host"] for row in page["upstreams"]["master_api_http"]["hosts"]]
        self.assertEqual(hosts, [b.key, c.key])
        self.assertEqual(page["upstreams"]["master_api_http"]["balance"], "least_request")

    @defer.inlineCallbacks
    def test_failed_reload_gives_the_pools_back(self) -> Generator[Any, Any, None]:
        """A new Gateway that fails to build after taking a pool over hands it back:
        the old gateway keeps using it and closes it itself."""
        a = RunningBackend(self)
        config = load_config(f"master_api:\n  http: ['http://{a.key}']\n")
        old = Gateway.from_config(config, reactor)
        self.addCleanup(old.close)
        statuses = yield run_requests(old.api, 5)  # type: ignore[arg-type]
        self.assertEqual(statuses, [200] * 5)
        pool = old.api.cluster.hosts[a.key].pool  # type: ignore[union-attr]
        bad = replace(config, event_broker=BrokerUpstream(
            target="127.0.0.1:1", tls=False, client="nope"))
        with self.assertRaises(ValueError):
            Gateway.from_config(bad, reactor, previous=old)
        statuses = yield run_requests(old.api, 5)  # type: ignore[arg-type]
        self.assertEqual(statuses, [200] * 5)
        self.assertGreater(pool.open_count, 0)
        yield old.close()
        self.assertEqual(pool.open_count, 0)
