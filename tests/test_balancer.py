"""The balancing core: host choice, passive ejection, health state, jitter."""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import Balancing, HealthCheck, Outlier
from eventgw.upstream.balancer import MAX_EJECT_FACTOR, Balancer, jittered

HOSTS = ["a:1", "b:1", "c:1"]


def balancer(
    keys: list[str] = HOSTS,
    *,
    balance: str = "least_request",
    failures: int = 3,
    eject_for: float = 10.0,
    health: HealthCheck | None = None,
) -> Balancer:
    policy = Balancing(
        balance=balance,
        health_check=health,
        outlier=Outlier(consecutive_failures=failures, eject_for=eject_for),
    )
    return Balancer(keys, policy, random.Random(7))


class PickTests(SynchronousTestCase):
    def test_least_request_spreads_evenly_when_all_are_equal(self) -> None:
        """Requests that finish at once land on every host about equally."""
        b = balancer()
        counts: Counter[str] = Counter()
        for _ in range(300):
            host = b.pick(0.0)
            assert host is not None
            counts[host.key] += 1
        self.assertEqual(set(counts), set(HOSTS))
        self.assertTrue(all(n >= 60 for n in counts.values()), counts)

    def test_least_request_prefers_the_host_with_fewer_in_flight(self) -> None:
        """Of two hosts, the one holding many requests gets only the rest."""
        b = balancer(["slow:1", "fast:1"])
        slow = b.hosts["slow:1"]
        for _ in range(10):
            b.started(slow)
        picks = Counter(h.key for h in (b.pick(0.0) for _ in range(50)) if h is not None)
        self.assertEqual(picks["fast:1"], 50)

    def test_round_robin_goes_in_order(self) -> None:
        """round_robin takes the hosts in turn."""
        b = balancer(balance="round_robin")
        keys = [h.key for h in (b.pick(0.0) for _ in range(6)) if h is not None]
        self.assertEqual(keys, HOSTS + HOSTS)

    def test_exclude_skips_tried_hosts(self) -> None:
        """A retry goes to a host not yet tried; with none left, None."""
        b = balancer(["a:1", "b:1"])
        for _ in range(20):
            host = b.pick(0.0, exclude=["a:1"])
            self.assertEqual(host.key if host else None, "b:1")
        self.assertIsNone(b.pick(0.0, exclude=["a:1", "b:1"]))

    def test_update_keeps_state_of_hosts_present_in_both(self) -> None:
        """A new host list adds and removes; a host in both keeps its counters."""
        b = balancer()
        b.started(b.hosts["a:1"])
        added, removed = b.update(["a:1", "d:1"])
        self.assertEqual((added, removed), (["d:1"], ["b:1", "c:1"]))
        self.assertEqual(b.hosts["a:1"].active, 1)
        self.assertEqual(list(b.hosts), ["a:1", "d:1"])


class EjectionTests(SynchronousTestCase):
    def test_consecutive_failures_eject_for_eject_for(self) -> None:
        """The configured failures in a row eject; the host is back after eject_for."""
        b = balancer(failures=3, eject_for=10.0)
        a = b.hosts["a:1"]
        self.assertFalse(b.outcome(a, failed=True, now=0.0))
        self.assertFalse(b.outcome(a, failed=True, now=0.0))
        self.assertTrue(b.outcome(a, failed=True, now=1.0))
        self.assertEqual(a.state(5.0), "ejected")
        picks = {h.key for h in (b.pick(5.0) for _ in range(50)) if h is not None}
        self.assertEqual(picks, {"b:1", "c:1"})
        self.assertEqual(a.state(11.0), "available")

    def test_a_success_resets_the_count(self) -> None:
        """Failures must be in a row."""
        b = balancer(failures=2)
        a = b.hosts["a:1"]
        b.outcome(a, failed=True, now=0.0)
        b.outcome(a, failed=False, now=0.0)
        self.assertFalse(b.outcome(a, failed=True, now=0.0))
        self.assertTrue(b.outcome(a, failed=True, now=0.0))

    def test_repeated_ejection_doubles_up_to_ten_times(self) -> None:
        """Each ejection soon after the last lasts twice as long, at most 10x."""
        b = balancer(failures=1, eject_for=1.0)
        a = b.hosts["a:1"]
        now = 0.0
        lengths = []
        for _ in range(6):
            self.assertTrue(b.outcome(a, failed=True, now=now))
            lengths.append(a.ejected_until - now)
            now = a.ejected_until
        self.assertEqual(lengths, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0])
        self.assertEqual(max(lengths), MAX_EJECT_FACTOR * 1.0)

    def test_never_more_than_half_nor_the_last(self) -> None:
        """Of three hosts at most one is out; a single host is never ejected."""
        b = balancer(failures=1)
        self.assertTrue(b.outcome(b.hosts["a:1"], failed=True, now=0.0))
        self.assertFalse(b.outcome(b.hosts["b:1"], failed=True, now=0.0))
        self.assertEqual(b.hosts["b:1"].state(0.0), "available")
        one = balancer(["only:1"], failures=1)
        for _ in range(5):
            self.assertFalse(one.outcome(one.hosts["only:1"], failed=True, now=0.0))
        self.assertIsNotNone(one.pick(0.0))

    def test_finished_counts_in_flight(self) -> None:
        """started/finished keep the in-flight count the choice uses."""
        b = balancer(failures=2)
        a = b.hosts["a:1"]
        b.started(a)
        b.started(a)
        self.assertEqual(a.active, 2)
        b.finished(a, failed=True, now=0.0)
        self.assertTrue(b.finished(a, failed=True, now=0.0))
        self.assertEqual((a.active, a.requests, a.failures), (0, 2, 2))


class HealthTests(SynchronousTestCase):
    health = HealthCheck(interval=1.0, unhealthy_after=2, healthy_after=3)

    def test_unhealthy_after_and_healthy_after(self) -> None:
        """Two failed checks take a host out, three passed ones bring it back."""
        b = balancer(health=self.health)
        a = b.hosts["a:1"]
        self.assertFalse(b.checked(a, passed=False))
        self.assertTrue(b.checked(a, passed=False))
        self.assertEqual(a.state(0.0), "unhealthy")
        self.assertNotIn("a:1", {h.key for h in (b.pick(0.0) for _ in range(30)) if h})
        self.assertFalse(b.checked(a, passed=True))
        self.assertFalse(b.checked(a, passed=True))
        self.assertTrue(b.checked(a, passed=True))
        self.assertEqual(a.state(0.0), "available")

    def test_all_unhealthy_means_no_host(self) -> None:
        """When every host failed its checks there is nothing to pick (a quick error)."""
        b = balancer(["a:1", "b:1"], health=self.health)
        for host in b.hosts.values():
            b.checked(host, passed=False)
            b.checked(host, passed=False)
        self.assertIsNone(b.pick(0.0))

    def test_passing_checks_end_an_ejection(self) -> None:
        """With active checks, an ejected host is back once it passes healthy_after."""
        b = balancer(failures=1, eject_for=100.0, health=self.health)
        a = b.hosts["a:1"]
        b.outcome(a, failed=True, now=0.0)
        self.assertEqual(a.state(1.0), "ejected")
        for _ in range(3):
            b.checked(a, passed=True)
        self.assertEqual(a.state(1.0), "available")

    def test_without_checks_results_change_nothing(self) -> None:
        """Check results without a health_check policy are ignored."""
        b = balancer()
        a = b.hosts["a:1"]
        for _ in range(5):
            self.assertFalse(b.checked(a, passed=False))
        self.assertTrue(a.healthy)

    def test_jitter_spreads_within_bounds(self) -> None:
        """Delays vary between 0.8 and 1.2 times the interval."""
        rng = random.Random(1)
        delays = [jittered(2.0, rng) for _ in range(100)]
        self.assertTrue(all(1.6 <= d <= 2.4 for d in delays))
        self.assertGreater(len(set(delays)), 50)

    def test_snapshot_shows_each_host(self) -> None:
        """The admin page's rows: one per host with its state."""
        b = balancer(failures=1)
        b.outcome(b.hosts["b:1"], failed=True, now=0.0)
        rows = b.snapshot(1.0)
        self.assertEqual([r["host"] for r in rows], HOSTS)
        self.assertEqual([r["state"] for r in rows], ["available", "ejected", "available"])
        self.assertEqual(rows[1]["ejected_for"], 9.0)
