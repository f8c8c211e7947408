"""Token-bucket rate limits without sockets: refill, headers, keys, bounds, reload."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.auth.ratelimit import Limit, Limited, RateLimiter, Taken
from eventgw.config import RateLimit, load_config


def rule(**changes: object) -> RateLimit:
    values: dict[str, object] = {"prefix": "/events", "per_second": 2.0, "burst": 3,
                                 "by": "client", "name": "events"}
    values.update(changes)
    return RateLimit(**values)  # type: ignore[arg-type]


class LimitTests(SynchronousTestCase):
    def test_burst_then_refused_then_refilled(self) -> None:
        """burst tokens at once, then 429 with Retry-After rounded up, then refill."""
        limit = Limit(rule())
        results = [limit.take("a", 10.0) for _ in range(4)]
        self.assertEqual([type(r) for r in results], [Taken, Taken, Taken, Limited])
        refused = results[3]
        assert isinstance(refused, Limited)
        self.assertEqual(refused.retry_after, 1)  # 0.5 s to the next token, rounded up
        self.assertIsInstance(limit.take("a", 10.49), Limited)
        self.assertIsInstance(limit.take("a", 10.5), Taken)
        self.assertIsInstance(limit.take("a", 10.5), Limited)
        # A long pause refills to burst, no more.
        self.assertEqual([type(limit.take("a", 100.0)) for _ in range(4)],
                         [Taken, Taken, Taken, Limited])

    def test_headers_follow_the_draft(self) -> None:
        """RateLimit-Policy "NAME";q=BURST;w=WINDOW and RateLimit "NAME";r=..;t=.."""
        limit = Limit(rule(per_second=0.5, burst=2))
        first = limit.take("a", 0.0)
        assert isinstance(first, Taken)
        self.assertEqual(first.headers, [(b"ratelimit-policy", b'"events";q=2;w=4'),
                                         (b"ratelimit", b'"events";r=1;t=2')])
        limit.take("a", 0.0)
        refused = limit.take("a", 0.0)
        assert isinstance(refused, Limited)
        self.assertEqual(refused.retry_after, 2)
        self.assertEqual(refused.headers[1], (b"ratelimit", b'"events";r=0;t=2'))

    def test_fractional_rate(self) -> None:
        """per_second 0.1: one token every ten seconds."""
        limit = Limit(rule(per_second=0.1, burst=1))
        self.assertIsInstance(limit.take("a", 0.0), Taken)
        refused = limit.take("a", 1.0)
        assert isinstance(refused, Limited)
        self.assertEqual(refused.retry_after, 9)
        self.assertIsInstance(limit.take("a", 10.0), Taken)

    def test_memory_is_bounded_least_recently_used_first(self) -> None:
        """At capacity the least recently used bucket is forgotten (and starts full)."""
        limit = Limit(rule(burst=1, per_second=0.001), capacity=3)
        for key in "abc":
            limit.take(key, 0.0)
        limit.take("a", 0.0)  # a is now the most recent
        limit.take("d", 0.0)  # evicts b
        self.assertEqual(len(limit), 3)
        self.assertIsInstance(limit.take("a", 0.0), Limited)
        self.assertIsInstance(limit.take("b", 0.0), Taken)
        for key in range(1000):
            limit.take(str(key), 0.0)
        self.assertEqual(len(limit), 3)


class RateLimiterTests(SynchronousTestCase):
    def test_longest_prefix_and_keys(self) -> None:
        """The longest prefix picks the limit; by client / ip / route choose buckets."""
        limiter = RateLimiter([
            rule(prefix="/api", by="ip", burst=1),
            rule(prefix="/api/batch", by="route", burst=1),
            rule(prefix="/events", by="client", burst=1),
        ])
        self.assertIsNone(limiter.check("/other", None, "1.1.1.1", 0.0))
        # by client: principals are independent, anonymous callers go by address.
        self.assertIsInstance(limiter.check("/events", "key:a", "1.1.1.1", 0.0), Taken)
        self.assertIsInstance(limiter.check("/events", "key:b", "1.1.1.1", 0.0), Taken)
        self.assertIsInstance(limiter.check("/events", "key:a", "2.2.2.2", 0.0), Limited)
        self.assertIsInstance(limiter.check("/events", None, "1.1.1.1", 0.0), Taken)
        self.assertIsInstance(limiter.check("/events", None, "1.1.1.1", 0.0), Limited)
        # by ip: principals do not matter.
        self.assertIsInstance(limiter.check("/api/x", "key:a", "3.3.3.3", 0.0), Taken)
        self.assertIsInstance(limiter.check("/api/x", "key:b", "3.3.3.3", 0.0), Limited)
        # by route: one bucket for everybody.
        self.assertIsInstance(limiter.check("/api/batch", "key:a", "4.4.4.4", 0.0), Taken)
        self.assertIsInstance(limiter.check("/api/batch/2", "key:b", "5.5.5.5", 0.0), Limited)

    def test_reload_keeps_unchanged_limits(self) -> None:
        """A new limiter takes over the buckets of an equal rule, not of a changed one."""
        old = RateLimiter([rule(prefix="/a", burst=1), rule(prefix="/b", burst=1)])
        old.check("/a", "k", "ip", 0.0)
        old.check("/b", "k", "ip", 0.0)
        new = RateLimiter([rule(prefix="/a", burst=1), rule(prefix="/b", burst=2)], old)
        self.assertIs(new.limit_for("/a"), old.limit_for("/a"))
        self.assertIsInstance(new.check("/a", "k", "ip", 0.0), Limited)
        self.assertIsInstance(new.check("/b", "k", "ip", 0.0), Taken)

    def test_config(self) -> None:
        """rate_limits: per_second > 0 (fractions), burst >= 1, by, a default name."""
        config = load_config("master_api: {http: 'http://127.0.0.1:1'}\n"
                             "rate_limits: [{prefix: /events, per_second: 0.5, burst: 2}]")
        self.assertEqual(config.rate_limits, (RateLimit("/events", 0.5, 2, "client", "/events"),))
