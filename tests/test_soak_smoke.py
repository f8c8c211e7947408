"""The soak's machinery in short: its checks on synthetic data, and a few seconds of a real run.

The soak itself (``bench/soak/run``, thirty minutes) is a script outside the suite; its
report is ``bench/SOAK.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase, TestCase

SOAK_DIR = Path(__file__).resolve().parent.parent / "bench" / "soak"
sys.path.insert(0, str(SOAK_DIR))

from soakcheck import (  # noqa: E402
    Record,
    Window,
    deadline_overruns,
    errors_in_windows,
    exactly_once,
    flat,
    percentile,
    recoveries,
)


def _record(t: float, flow: str = "api", ok: bool = True, elapsed: float = 0.01,
            deadline: float = 2.0) -> Record:
    return Record(t=t, lane=f"{flow}-lane", flow=flow, elapsed=elapsed, ok=ok,
                  deadline=deadline, detail="" if ok else "HTTP 502")


class FlatTests(SynchronousTestCase):
    def test_flat_series_passes(self) -> None:
        """A value that only wobbles after warm-up is flat."""
        samples = [(float(t), 100.0 + (t % 3)) for t in range(0, 600, 5)]
        self.assertTrue(flat("rss", samples, 60, 8, 0.05).passed)

    def test_growth_beyond_tolerance_fails(self) -> None:
        """A steady climb larger than absolute + relative tolerance fails."""
        samples = [(float(t), 100.0 + t * 0.1) for t in range(0, 600, 5)]
        result = flat("rss", samples, 60, 8, 0.05)
        self.assertFalse(result.passed)
        self.assertIn("growth", result.detail)

    def test_warmup_growth_is_ignored(self) -> None:
        """Growth inside the warm-up does not count; only what follows it."""
        samples = [(float(t), 50.0 if t < 60 else 100.0) for t in range(0, 600, 5)]
        self.assertTrue(flat("rss", samples, 60, 8, 0.05).passed)

    def test_one_spike_does_not_decide(self) -> None:
        """A single high sample at the end is outvoted by the median of the last fifth."""
        samples = [(float(t), 100.0) for t in range(0, 600, 5)]
        samples[-1] = (595.0, 500.0)
        self.assertTrue(flat("rss", samples, 60, 8, 0.05).passed)

    def test_too_few_samples_fail(self) -> None:
        """Without enough samples after warm-up the check cannot pass."""
        self.assertFalse(flat("rss", [(0.0, 1.0), (70.0, 1.0)], 60, 8, 0.05).passed)


class ErrorsInWindowsTests(SynchronousTestCase):
    windows = [Window("master-http", 100.0, 110.0), Window("broker", 200.0, 205.0)]

    def test_errors_inside_their_service_window_pass(self) -> None:
        """Errors of a flow during (or within the grace after) its service's fault pass."""
        records = [_record(101, ok=False), _record(113, ok=False),
                   _record(201, "events", ok=False), _record(50)]
        result = errors_in_windows(records, self.windows, grace=5)
        self.assertTrue(result.passed, result.detail)

    def test_error_after_the_grace_fails(self) -> None:
        """An error later than the grace after the restart is outside."""
        result = errors_in_windows([_record(116, ok=False)], self.windows, grace=5)
        self.assertFalse(result.passed)
        self.assertIn("1 outside", result.detail)

    def test_error_in_another_services_window_fails(self) -> None:
        """A gRPC error during the broker's fault is not explained by it."""
        result = errors_in_windows([_record(201, "grpc", ok=False)], self.windows, grace=5)
        self.assertFalse(result.passed)

    def test_request_spanning_the_start_is_explained(self) -> None:
        """A request that started before the kill and failed during it is inside."""
        record = _record(99.5, ok=False, elapsed=1.0)
        self.assertTrue(errors_in_windows([record], self.windows, grace=0).passed)

    def test_recoveries_charge_errors_to_the_latest_window(self) -> None:
        """Each error goes to its service's latest fault; the time after restart is kept."""
        records = [_record(105, ok=False), _record(112, ok=False, elapsed=0.5),
                   _record(203, "events", ok=False)]
        found = recoveries(records, self.windows)
        self.assertEqual([r.errors for r in found], [2, 1])
        self.assertAlmostEqual(found[0].last_error_after_up or 0, 2.5)


class DeadlineTests(SynchronousTestCase):
    def test_within_deadline_plus_slack_passes(self) -> None:
        """A request that took its deadline plus less than the slack passes."""
        result = deadline_overruns([_record(0, elapsed=2.9, deadline=2.0)], slack=1.0)
        self.assertTrue(result.passed)

    def test_overrun_fails(self) -> None:
        """A request longer than deadline + slack fails, failed or not."""
        records = [_record(0), _record(1, ok=False, elapsed=3.5, deadline=2.0)]
        result = deadline_overruns(records, slack=1.0)
        self.assertFalse(result.passed)
        self.assertIn("1 of 2", result.detail)


class ExactlyOnceTests(SynchronousTestCase):
    def test_each_once_passes(self) -> None:
        """Every accepted id recorded once passes; extra broker ids are only counted."""
        result = exactly_once(["a", "b"], ["b", "a", "c"])
        self.assertTrue(result.passed)
        self.assertIn("1 recorded but not answered", result.detail)

    def test_missing_fails(self) -> None:
        """An event answered 202 that the broker never recorded fails."""
        self.assertFalse(exactly_once(["a", "b"], ["a"]).passed)

    def test_duplicate_fails(self) -> None:
        """An event recorded twice at the broker fails."""
        self.assertFalse(exactly_once(["a"], ["a", "a"]).passed)


class PercentileTests(SynchronousTestCase):
    def test_nearest_rank(self) -> None:
        """p50 and p99 by nearest rank; no values is NaN."""
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(percentile(values, 0.5), 50.0)
        self.assertEqual(percentile(values, 0.99), 99.0)
        self.assertNotEqual(percentile([], 0.5), percentile([], 0.5))


class TinySoakTests(TestCase):
    def test_a_few_seconds_with_one_fault(self) -> None:
        """Seven seconds of every lane, 20 idle connections, one Master API HTTP kill and
        SIGHUP reloads: the run records every lane, one fault window, at least one
        reload applied and none failed, and its error, deadline, exactly-once and idle
        checks pass."""
        out = Path(tempfile.mkdtemp(prefix="soak-smoke-"))
        env = dict(os.environ, PYTHONPATH=str(SOAK_DIR.parent.parent))
        done = subprocess.run(
            [sys.executable, str(SOAK_DIR / "soak.py"), "--minutes", "0.12", "--idle", "20",
             "--fault-every", "3", "--down", "1", "--grace", "2", "--sample", "0.5",
             "--reload-every", "2",
             "--warmup", "0", "--no-plot", "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=60)
        self.assertIn(done.returncode, (0, 1), done.stderr[-2000:])
        summary = json.loads((out / "summary.json").read_text())
        self.assertEqual([w["service"] for w in summary["windows"]], ["master-http"])
        self.assertEqual(len(summary["lanes"]), 9)
        for lane, figures in summary["lanes"].items():
            self.assertGreater(figures["requests"] - figures["errors"], 0, lane)
        checks = {c["name"]: c for c in summary["checks"]}
        for name in ("errors only in fault windows", "no request outlives its deadline",
                     "every 202 event at the broker exactly once", "idle connections held",
                     "every reload applied"):
            self.assertTrue(checks[name]["passed"], checks[name]["detail"])
        self.assertGreaterEqual(summary["reloads"]["ok"], 1, summary["reloads"])
        self.assertEqual(summary["reloads"]["failed"], 0, summary["reloads"])


class BrokerRecordTests(SynchronousTestCase):
    def test_record_appends_every_accepted_id(self) -> None:
        """With ``record``, the demo broker appends each stored event's id, one a line,
        across instances (a restarted broker keeps adding to the same file)."""
        from demo.eventbroker.server import MemoryBroker
        from eventgw._proto.cloudevents.v1.cloudevents_pb2 import CloudEvent

        path = Path(tempfile.mkdtemp(prefix="broker-record-")) / "ids.txt"
        MemoryBroker(quiet=True, record=str(path)).store(
            [CloudEvent(id="a"), CloudEvent(id="b")], "peer")
        MemoryBroker(quiet=True, record=str(path)).store([CloudEvent(id="c")], "peer")
        self.assertEqual(path.read_text().split(), ["a", "b", "c"])
