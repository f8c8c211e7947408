"""The access event: its fields, its rendered text, and how observers see it."""

from __future__ import annotations

import io
import json

from twisted.logger import (
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.trial.unittest import SynchronousTestCase

from eventgw.downstream.accesslog import log_exchange
from tests.support import make_head


def captured(test: SynchronousTestCase) -> list[dict[str, object]]:
    """Access events emitted while the test runs."""
    events: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "eventgw.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class AccessLogTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """The event carries the stable field names, the target's fields included."""
        events = captured(self)
        head = make_head(method=b"POST", target=b"/pkg.S/M?x=1")
        head.log_fields.update(route="grpc", upstream="u:1", grpc_status=0, grpc_method="/pkg.S/M")
        log_exchange(head, 200, 10, 20, 0.0015)
        [event] = events
        expected = {
            "peer": head.peer, "method": "POST", "path": "/pkg.S/M?x=1",
            "protocol": head.protocol, "status": 200, "bytes_in": 10, "bytes_out": 20,
            "route": "grpc", "upstream": "u:1", "grpc_status": 0, "grpc_method": "/pkg.S/M",
        }
        self.assertEqual({k: event[k] for k in expected}, expected)
        self.assertAlmostEqual(event["duration_ms"], 1.5)  # type: ignore[arg-type]

    def test_text(self) -> None:
        """The rendered line names peer, request, status, sizes, time, route, status and
        request id."""
        events = captured(self)
        head = make_head(method=b"GET", target=b"/api/x")
        log_exchange(head, "reset", 0, 7, 0.01234)
        [event] = events
        self.assertEqual(
            formatEvent(event),
            f"{head.peer} GET /api/x {head.protocol} -> reset in=0 out=7 12.3ms "
            "route=- upstream=- grpc_status=- request_id=-",
        )

    def test_text_with_access_decision(self) -> None:
        """With access checks configured the line ends with the principal and the
        decision."""
        events = captured(self)
        head = make_head(method=b"GET", target=b"/api/x")
        head.log_fields.update(principal="key:batch", decision="ratelimited")
        log_exchange(head, 429, 0, 40, 0.001)
        [event] = events
        self.assertTrue(
            formatEvent(event).endswith("request_id=- principal=key:batch decision=ratelimited"),
            formatEvent(event),
        )
        self.assertEqual((event["principal"], event["decision"]), ("key:batch", "ratelimited"))

    def test_json_round_trip(self) -> None:
        """A JSON log file keeps the rendered text and the fields."""
        events = captured(self)
        head = make_head(method=b"GET", target=b"/api/x")
        head.log_fields["route"] = "api"
        log_exchange(head, 502, 1, 2, 0.5)
        [event] = events
        loaded = eventFromJSON(eventAsJSON(event))
        self.assertEqual(formatEvent(loaded), formatEvent(event))
        self.assertEqual((loaded["status"], loaded["route"]), (502, "api"))
        out = io.StringIO()
        jsonFileLogObserver(out)(event)
        self.assertEqual(json.loads(out.getvalue().strip("\x1e\n"))["route"], "api")
