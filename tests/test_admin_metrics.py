"""The metrics' bounded labels, the metric functions, and the admin configuration keys.

Core parts (:mod:`eventgw.admin.labels`, :mod:`eventgw.admin.state`) are tested without
sockets; the metric functions against the process's registry, by differences (the
registry is shared by every test of the process).
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from eventgw.admin import metrics
from eventgw.admin.labels import (
    MethodLabels,
    code_label,
    grpc_code_name,
    protocol_label,
    route_label,
    split_method,
)
from eventgw.admin.state import ServingState
from eventgw.config import load_config
from eventgw.errors import ConfigError
from eventgw.tls import ensure_dev_certificate


def sample(name: str, **labels: str) -> float:
    metrics.flush()
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def grpc_method_values() -> set[str]:
    """Every grpc_method label value eventgw_grpc_calls_total has a series for."""
    values = set()
    for family in metrics.GRPC_CALLS.collect():
        for s in family.samples:
            if s.name == "eventgw_grpc_calls_total":
                values.add(s.labels["grpc_method"])
    return values


class LabelTests(SynchronousTestCase):
    def test_fixed_sets_fold_the_rest(self) -> None:
        """Routes, protocols and codes come from fixed sets; anything else folds."""
        self.assertEqual([route_label(r) for r in ("api", "events", "grpc", "none")],
                         ["api", "events", "grpc", "none"])
        self.assertEqual(route_label("/some/path"), "none")
        self.assertEqual(route_label(None), "none")
        self.assertEqual(protocol_label("HTTP/1.0"), "HTTP/1.1")
        self.assertEqual(protocol_label("HTTP/2"), "HTTP/2")
        self.assertEqual(code_label(200), "200")
        self.assertEqual(code_label("reset"), "reset")
        self.assertEqual(code_label("anything"), "other")
        self.assertEqual(code_label(1000), "other")
        self.assertEqual(grpc_code_name(0), "OK")
        self.assertEqual(grpc_code_name(5), "NOT_FOUND")
        self.assertEqual(grpc_code_name(99), "UNKNOWN")
        self.assertEqual(grpc_code_name(None), "UNKNOWN")

    def test_split_method(self) -> None:
        """A gRPC path splits into service and method; other shapes do not."""
        self.assertEqual(split_method("/pkg.S/M"), ("pkg.S", "M"))
        self.assertIsNone(split_method("/pkg.S"))
        self.assertIsNone(split_method("/a/b/c"))
        self.assertIsNone(split_method("pkg.S/M"))

    def test_methods_learned_only_from_answers_other_than_unimplemented(self) -> None:
        """A method gets its own labels once answered with anything but UNIMPLEMENTED."""
        labels = MethodLabels(10)
        self.assertEqual(labels.labels("/p.S/M"), ("other", "other"))
        labels.answered("/p.S/M", 12)
        self.assertEqual(labels.labels("/p.S/M"), ("other", "other"))
        labels.answered("/p.S/M", 5)  # NOT_FOUND is an answer of the method
        self.assertEqual(labels.labels("/p.S/M"), ("p.S", "M"))

    def test_never_more_than_the_limit(self) -> None:
        """At most ``limit`` methods are learned; the rest stay ``other``."""
        labels = MethodLabels(3)
        for i in range(10):
            labels.answered(f"/p.S/M{i}", 0)
        self.assertEqual(len(labels), 3)
        self.assertEqual(labels.labels("/p.S/M9"), ("other", "other"))
        self.assertEqual(labels.labels("/p.S/M0"), ("p.S", "M0"))


class StateTests(SynchronousTestCase):
    def test_draining_once_and_watchers_told(self) -> None:
        """start_draining flips the state once and tells each watcher once."""
        state = ServingState()
        seen: list[bool] = []
        state.on_change(seen.append)
        cancel = state.on_change(lambda serving: seen.append(not serving))
        cancel()
        self.assertTrue(state.serving)
        state.start_draining()
        state.start_draining()
        self.assertTrue(state.draining)
        self.assertEqual(seen, [False])


class RecordTests(SynchronousTestCase):
    def test_exchange_counted_with_bounded_labels(self) -> None:
        """record_exchange counts the request, its duration and its upstream outcome."""
        before = sample("eventgw_requests_total", route="api", protocol="HTTP/1.1", code="502")
        before_up = sample("eventgw_upstream_requests_total", upstream="master_api_http",
                           outcome="error")
        before_hist = sample("eventgw_request_duration_seconds_count", route="api")
        metrics.record_exchange({"route": "api", "upstream": "x:1"}, "HTTP/1.0", 502, 0.01)
        self.assertEqual(
            sample("eventgw_requests_total", route="api", protocol="HTTP/1.1", code="502"),
            before + 1,
        )
        self.assertEqual(sample("eventgw_upstream_requests_total",
                                upstream="master_api_http", outcome="error"), before_up + 1)
        self.assertEqual(sample("eventgw_request_duration_seconds_count", route="api"),
                         before_hist + 1)

    def test_metrics_switched_off_count_nothing(self) -> None:
        """metrics.enabled false: requests and events are not counted; true again:
        they are."""
        key = {"route": "api", "protocol": "HTTP/1.1", "code": "503"}
        before = sample("eventgw_requests_total", **key)
        events_before = sample("eventgw_events_total", mode="batch", outcome="failed")
        metrics.configure(metrics.DEFAULT_MAX_METHODS, enabled=False)
        self.addCleanup(metrics.configure, metrics.DEFAULT_MAX_METHODS)
        self.assertFalse(metrics.counting())
        metrics.record_exchange({"route": "api"}, "HTTP/1.1", 503, 0.01)
        metrics.record_event("batch", "failed")
        self.assertEqual(sample("eventgw_requests_total", **key), before)
        self.assertEqual(sample("eventgw_events_total", mode="batch", outcome="failed"),
                         events_before)
        metrics.configure(metrics.DEFAULT_MAX_METHODS, enabled=True)
        metrics.record_exchange({"route": "api"}, "HTTP/1.1", 503, 0.01)
        self.assertEqual(sample("eventgw_requests_total", **key), before + 1)

    def test_admin_requests_not_counted(self) -> None:
        """The admin listener's own requests do not show in eventgw_requests_total."""
        metrics.record_exchange({"route": "admin"}, "HTTP/1.1", 200, 0.001)
        for family in metrics.REQUESTS.collect():
            for s in family.samples:
                self.assertNotEqual(s.labels.get("route"), "admin")

    def test_a_thousand_unknown_methods_are_one_label_value(self) -> None:
        """1000 distinct methods the Master API never answered: one ``other`` series."""
        before = sample("eventgw_grpc_calls_total", grpc_service="other",
                        grpc_method="other", grpc_code="UNIMPLEMENTED")
        values_before = grpc_method_values()
        for i in range(1000):
            path = f"/unknown.Service{i}/Method{i}"
            metrics.grpc_answered(path, 12)  # UNIMPLEMENTED: not learned
            metrics.record_exchange({"route": "grpc", "grpc_method": path, "grpc_status": 12,
                                     "upstream": "x:1"}, "HTTP/2", 200, 0.001)
        new_values = grpc_method_values() - values_before
        self.assertLessEqual(new_values, {"other"})
        self.assertEqual(sample("eventgw_grpc_calls_total", grpc_service="other",
                                grpc_method="other", grpc_code="UNIMPLEMENTED"), before + 1000)

    def test_reload_counters(self) -> None:
        """record_reload counts successes and failures; a success sets the timestamp."""
        ok = sample("eventgw_config_reloads_total", result="success")
        bad = sample("eventgw_config_reloads_total", result="failure")
        metrics.record_reload(True, 1234567.0)
        metrics.record_reload(False, 1234999.0)
        self.assertEqual(sample("eventgw_config_reloads_total", result="success"), ok + 1)
        self.assertEqual(sample("eventgw_config_reloads_total", result="failure"), bad + 1)
        self.assertEqual(
            sample("eventgw_config_last_reload_success_timestamp_seconds"), 1234567.0
        )

    def test_certificate_expiry(self) -> None:
        """record_certificate exports the certificate's notAfter; a bad file exports
        nothing and says so."""
        from cryptography import x509

        dev = ensure_dev_certificate(tempfile.mkdtemp(prefix="eventgw-test-cert-"))
        expiry = metrics.record_certificate(dev.cert_path)
        with open(dev.cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        self.assertEqual(expiry, cert.not_valid_after_utc.timestamp())
        self.assertEqual(sample("eventgw_tls_certificate_expiry_timestamp_seconds"), expiry)
        self.assertIsNone(metrics.record_certificate(os.path.join(dev.cert_path + ".missing")))
        self.flushLoggedErrors()

    def test_events_and_refusals(self) -> None:
        """record_event, record_ratelimited and record_auth_denied fold unknown words."""
        before = sample("eventgw_events_total", mode="batch", outcome="accepted")
        metrics.record_event("batch", "accepted")
        self.assertEqual(sample("eventgw_events_total", mode="batch", outcome="accepted"),
                         before + 1)
        before = sample("eventgw_ratelimited_total", route="none")
        metrics.record_ratelimited("/whatever")
        self.assertEqual(sample("eventgw_ratelimited_total", route="none"), before + 1)
        before = sample("eventgw_auth_denied_total", route="api", reason="no_token")
        metrics.record_auth_denied("api", "no_token")
        self.assertEqual(sample("eventgw_auth_denied_total", route="api", reason="no_token"),
                         before + 1)


BASE = "master_api: {http: 'http://127.0.0.1:8080'}\n"


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Without admin: no admin listener; metrics.max_methods is 500."""
        config = load_config(BASE)
        self.assertIsNone(config.admin)
        self.assertEqual(config.metrics.max_methods, 500)

    def test_admin_listen_and_max_methods(self) -> None:
        """admin.listen is IP:port (IPv6 in brackets); max_methods a positive integer."""
        config = load_config(
            BASE + "admin: {listen: '127.0.0.1:9901'}\nmetrics: {max_methods: 7}\n"
        )
        assert config.admin is not None
        self.assertEqual((config.admin.host, config.admin.port), ("127.0.0.1", 9901))
        self.assertEqual(config.metrics.max_methods, 7)
        config = load_config(BASE + "admin: {listen: '[::1]:9901'}\n")
        assert config.admin is not None
        self.assertEqual(config.admin.host, "::1")

    def test_bad_values_name_the_key(self) -> None:
        """A bad admin.listen or metrics.max_methods is one line naming the key."""
        cases = {
            "admin: {listen: 'localhost:9901'}\n": "admin.listen",
            "admin: {listen: '127.0.0.1'}\n": "admin.listen",
            "admin: {listen: '127.0.0.1:70000'}\n": "admin.listen",
            "admin: {port: 1}\n": "admin.port",
            "metrics: {max_methods: 0}\n": "metrics.max_methods",
        }
        for extra, key in cases.items():
            with self.assertRaises(ConfigError) as caught:
                load_config(BASE + extra)
            self.assertTrue(str(caught.exception).startswith(key + ":"), str(caught.exception))


class FlushTests(SynchronousTestCase):
    def test_counts_reach_the_values_at_a_flush(self) -> None:
        """A recorded request reaches the prometheus-client values (counter and
        histogram buckets) at the next flush, not before."""
        from eventgw.admin.metrics import REGISTRY

        labels = {"route": "api", "protocol": "HTTP/1.1", "code": "201"}
        before = sample("eventgw_requests_total", **labels)
        bucket = sample("eventgw_request_duration_seconds_bucket", route="api", le="0.005")
        metrics.record_exchange({"route": "api"}, "HTTP/1.1", 201, 0.003)
        self.assertEqual(REGISTRY.get_sample_value("eventgw_requests_total", labels), before)
        self.assertEqual(sample("eventgw_requests_total", **labels), before + 1)
        self.assertEqual(
            sample("eventgw_request_duration_seconds_bucket", route="api", le="0.005"),
            bucket + 1,
        )

    def test_worker_flushes_every_interval_and_at_shutdown(self) -> None:
        """A worker's flush service adds the counts once per interval, and once more
        after the reactor's shutdown (the counts of the drain)."""
        from twisted.internet.task import Clock

        from eventgw.admin.metrics import REGISTRY
        from eventgw.admin.service import MetricsFlushService

        class ClockWithTriggers(Clock):
            def __init__(self) -> None:
                super().__init__()
                self.triggers: list[object] = []

            def addSystemEventTrigger(self, *args: object) -> None:
                self.triggers.append(args[2])

        labels = {"route": "none", "protocol": "HTTP/2", "code": "418"}

        def value() -> float:
            v = REGISTRY.get_sample_value("eventgw_requests_total", labels)
            return 0.0 if v is None else v

        clock = ClockWithTriggers()
        flusher = MetricsFlushService(clock, interval=1.0)
        flusher.startService()
        start = value()
        metrics.record_exchange({}, "HTTP/2", 418, 0.0)
        clock.advance(0.5)
        self.assertEqual(value(), start)
        clock.advance(0.5)
        self.assertEqual(value(), start + 1)
        metrics.record_exchange({}, "HTTP/2", 418, 0.0)
        flusher.stopService()
        self.assertEqual(len(clock.triggers), 1)
        clock.triggers[0]()  # type: ignore[operator]
        self.assertEqual(value(), start + 2)
        self.assertEqual(clock.getDelayedCalls(), [])
