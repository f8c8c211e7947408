"""log.format and the log writer: lines as twistd writes them or as JSON, written off
the reactor in bounded batches; and the real ``twistd eventgw`` process's log."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import threading
import urllib.request
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import (
    LogLevel,
    capturedLogs,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.python import log as legacy_log
from twisted.trial.unittest import SynchronousTestCase

from eventgw.admin import metrics
from eventgw.downstream.accesslog import log_exchange
from eventgw.logformat import LineFormat
from eventgw.logwriter import PIPE_CHUNK, GatewayLogObserver, LogWriter
from tests.support import make_head
from tests.test_lifecycle_e2e import Gateway
from tests.test_tap import write_config

WHEN = 1_764_692_355.25  # 2025-12-02T16:19:15.250Z


class _RunningClock(Clock):
    """A Clock that says the reactor runs (the writer batches only then)."""

    running = True


class _Output(io.StringIO):
    """An output that records each write and can be made to block."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.open = threading.Event()
        self.open.set()

    def write(self, text: str) -> int:
        self.open.wait(10)
        self.writes.append(text)
        return super().write(text)


class LineFormatTests(SynchronousTestCase):
    """The text format is twistd's; the JSON format is one object per line."""

    def test_text_line_is_twistds(self) -> None:
        """A text line is what twistd's own text observer writes for the event."""
        event = {"log_format": "hello {who}", "who": "there", "log_time": WHEN,
                 "log_namespace": "x.y", "log_level": LogLevel.info, "log_system": None}
        fmt = LineFormat("text")
        expected = formatEventAsClassicLogText(event, formatTime=formatTime)
        self.assertEqual(fmt.text_line(WHEN, "x.y#info", "hello there"), expected)
        del event["log_system"]
        self.assertEqual(formatEventAsClassicLogText(event, formatTime=fmt.text_time), expected)

    def test_text_stamp_is_cached_per_second(self) -> None:
        """Two times in one second give one stamp; the next second another."""
        fmt = LineFormat("text")
        first = fmt.text_time(WHEN)
        self.assertIs(fmt.text_time(WHEN + 0.5), first)
        self.assertNotEqual(fmt.text_time(WHEN + 1.0), first)
        self.assertEqual(fmt.text_time(WHEN + 1.0), formatTime(WHEN + 1.0))

    def test_json_line(self) -> None:
        """time in ISO 8601 UTC with milliseconds, level, system, worker, message,
        fields; a field named like one of those cannot hide it."""
        fmt = LineFormat("json", worker=2)
        line = fmt.json_line(WHEN, "info", "eventgw.access", "GET /", {
            "status": 200, "message": "theirs", "peer": object(),
        })
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        parsed = json.loads(line)
        self.assertEqual(parsed["time"], "2025-12-02T16:19:15.250Z")
        self.assertEqual(
            (parsed["level"], parsed["system"], parsed["worker"], parsed["message"]),
            ("info", "eventgw.access", 2, "GET /"),
        )
        self.assertEqual((parsed["status"], parsed["field_message"]), (200, "theirs"))
        self.assertIsInstance(parsed["peer"], str)

    def test_unknown_format_is_refused(self) -> None:
        """Only text and json exist."""
        self.assertRaises(ValueError, LineFormat, "xml")


class LogWriterTests(SynchronousTestCase):
    """Lines are handed to the writer thread once per interval, in order, in
    pipe-sized chunks; too many waiting lines drop access lines, counted."""

    def writer(self, out: _Output, **kwargs: Any) -> tuple[LogWriter, _RunningClock]:
        clock = _RunningClock()
        writer = LogWriter(out, clock, **kwargs)
        self.addCleanup(writer.close)
        self.addCleanup(out.open.set)
        return writer, clock

    def test_lines_wait_for_the_interval(self) -> None:
        """Nothing is written before the interval; then every line, in order."""
        out = _Output()
        writer, clock = self.writer(out)
        for index in range(5):
            writer.write(f"line {index}\n", droppable=index % 2 == 0)
        self.assertEqual(writer.pending, 5)
        self.assertTrue(writer.wait_written(1))
        self.assertEqual(out.getvalue(), "")
        clock.advance(writer.interval)
        self.assertTrue(writer.wait_written(10))
        self.assertEqual(out.getvalue(), "".join(f"line {i}\n" for i in range(5)))
        self.assertEqual(len(out.writes), 1)

    def test_writes_are_pipe_sized(self) -> None:
        """A batch is written in chunks of at most PIPE_CHUNK bytes, whole lines each."""
        out = _Output()
        writer, clock = self.writer(out)
        lines = [f"{index:04d} " + "x" * 95 + "\n" for index in range(200)]
        for line in lines:
            writer.write(line)
        clock.advance(writer.interval)
        self.assertTrue(writer.wait_written(10))
        self.assertEqual(out.getvalue(), "".join(lines))
        self.assertGreater(len(out.writes), 1)
        for chunk in out.writes:
            self.assertLessEqual(len(chunk), PIPE_CHUNK)
            self.assertTrue(chunk.endswith("\n"))

    def test_a_stuck_output_drops_access_lines_only(self) -> None:
        """With the output stuck, access lines beyond the bound are dropped and
        counted (in the metric too); the gateway's own lines are kept; once the output
        moves again, one line says how many were dropped."""
        out = _Output()
        writer, clock = self.writer(out, max_pending=4)
        before = metrics.LOG_DROPPED._value.get()
        out.open.clear()
        for index in range(10):
            writer.write(f"access {index}\n", droppable=True)
        writer.write("own line\n")
        self.assertEqual(writer.dropped, 6)
        self.assertEqual(metrics.LOG_DROPPED._value.get() - before, 6)
        with capturedLogs() as events:
            clock.advance(writer.interval)
            out.open.set()
            self.assertTrue(writer.wait_written(10))
            clock.advance(writer.interval)  # the next hand-over reports the drops
        self.assertEqual(
            out.getvalue(), "".join(f"access {i}\n" for i in range(4)) + "own line\n"
        )
        reports = [e for e in events if e.get("count") == 6]
        self.assertEqual(len(reports), 1, events)
        self.assertIn("dropped", reports[0]["log_format"])

    def test_without_a_running_reactor_lines_are_written_at_once(self) -> None:
        """Before the reactor runs or after it stopped, a line is written by the call."""
        out = _Output()
        writer, clock = self.writer(out)
        clock.running = False
        writer.write("now\n")
        self.assertEqual(out.getvalue(), "now\n")


class ObserverTests(SynchronousTestCase):
    """The observer: access events with their fields, Twisted's port noise left out."""

    def observe(self, name: str) -> tuple[_Output, LogWriter]:
        out = _Output()
        clock = _RunningClock()
        clock.running = False  # written at once: the test reads them at once
        writer = LogWriter(out, clock)
        self.addCleanup(writer.close)
        observer = GatewayLogObserver(writer, LineFormat(name))
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return out, writer

    def test_access_event_as_json_has_every_field(self) -> None:
        """An access event is one JSON object with its text and every field."""
        out, _ = self.observe("json")
        head = make_head(b"GET", b"/api/thing")
        head.log_fields.update(route="api", upstream="http://up", request_id="r1",
                               cache="miss")
        log_exchange(head, 200, 0, 12, 0.0015)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        access = [line for line in lines if line.get("system") == "eventgw.access"]
        self.assertEqual(len(access), 1, lines)
        line = access[0]
        self.assertEqual(line["level"], "info")
        self.assertIn("GET /api/thing HTTP/1.1 -> 200", line["message"])
        for key, value in {"peer": "127.0.0.1", "method": "GET", "path": "/api/thing",
                           "protocol": "HTTP/1.1", "status": 200, "bytes_in": 0,
                           "bytes_out": 12, "route": "api", "upstream": "http://up",
                           "request_id": "r1", "cache": "miss"}.items():
            self.assertEqual(line[key], value, key)
        self.assertAlmostEqual(line["duration_ms"], 1.5)
        self.assertNotIn("access_text", line)

    def test_access_event_as_text(self) -> None:
        """A text access line is the classic line with the access text."""
        out, _ = self.observe("text")
        head = make_head(b"POST", b"/events")
        log_exchange(head, 202, 5, 7, 0.001)
        text = out.getvalue()
        self.assertRegex(
            text, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[eventgw\.access#info\] "
            r"127\.0\.0\.1 POST /events HTTP/1\.1 -> 202 in=5 out=7 1\.0ms",
        )

    def test_worker_tag_is_a_field_in_json(self) -> None:
        """In a --workers worker, JSON lines carry ``worker`` and keep the event's own
        system (or namespace) without the ``worker N`` tag text lines show."""
        out = _Output()
        clock = _RunningClock()
        clock.running = False
        writer = LogWriter(out, clock)
        self.addCleanup(writer.close)
        observer = GatewayLogObserver(writer, LineFormat("json", worker=3))
        base = {"log_format": "hi", "log_time": WHEN, "log_level": LogLevel.warn,
                "log_namespace": "eventgw.x"}
        observer({**base, "log_system": "worker 3"})
        observer({**base, "log_system": "worker 3,GatewayFactory"})
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([(line["system"], line["worker"], line["level"]) for line in lines],
                         [("eventgw.x", 3, "warn"), ("GatewayFactory", 3, "warn")])

    def test_port_announcements_are_left_out(self) -> None:
        """Twisted's "starting on" / "Port Closed" / "Starting factory" lines are not
        written; other legacy lines are."""
        out, _ = self.observe("text")
        legacy_log.msg("GatewayFactory (TLS) starting on 9001")
        legacy_log.msg("(TCP Port 9001 Closed)")
        from twisted.internet.protocol import Factory

        factory = Factory()
        factory.doStart()
        factory.doStop()
        legacy_log.msg("something else")
        text = out.getvalue()
        self.assertNotIn("starting on", text)
        self.assertNotIn("Closed", text)
        self.assertNotIn("factory", text)
        self.assertIn("something else", text)


class TwistdLogTests(SynchronousTestCase):
    """A real ``twistd -n eventgw``: its log has one line per listener and none of
    Twisted's port announcements; with log.format json every line is JSON."""

    def start(self, extra: str = "") -> Gateway:
        folder = tempfile.mkdtemp(prefix="eventgw-log-")
        path = write_config(
            folder,
            "listen: {tls: 0, cleartext: 0, interface: 127.0.0.1}\n"
            "master_api: {http: 'http://127.0.0.1:1'}\n"
            f"tls: {{dev_cert_dir: {folder}/dev}}\n"
            "admin: {listen: '127.0.0.1:0'}\n" + extra,
        )
        gateway = Gateway(folder, path)
        self.addCleanup(gateway.stop)
        return gateway

    def request(self, gateway: Gateway, path: str) -> None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}{path}", timeout=10)
        except urllib.error.HTTPError:
            pass

    def stop(self, gateway: Gateway) -> str:
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)
        return gateway.log()

    def test_text_log_has_listener_lines_and_no_port_noise(self) -> None:
        """One line per listener, the access lines, no "starting on", "Starting
        factory" or "Port ... Closed"."""
        gateway = self.start()
        self.request(gateway, "/nothing")
        self.request(gateway, "/api/down")
        gateway.wait_for(r"GET /api/down HTTP/1\.1 -> 502")
        log = self.stop(gateway)
        self.assertEqual(log.count("eventgw listening on 127.0.0.1:"), 2, log)
        self.assertIn("eventgw admin listener on 127.0.0.1:", log)
        self.assertIn("GET /nothing HTTP/1.1 -> 404", log)
        for noise in ("starting on", "Starting factory", "Stopping factory", "Closed)"):
            self.assertNotIn(noise, log)
        self.assertIn("Server Shut Down.", log)  # written after the reactor stopped

    def test_json_log_is_one_object_per_line(self) -> None:
        """Every line parses as JSON; the access line carries its fields."""
        gateway = self.start("log: {format: json}\n")
        self.request(gateway, "/nothing")
        gateway.wait_for(r'"path":"/nothing"')
        log = self.stop(gateway)
        lines = [json.loads(line) for line in log.splitlines()]
        self.assertTrue(all({"time", "level", "system", "message"} <= set(line)
                            for line in lines))
        access = [line for line in lines if line.get("path") == "/nothing"]
        self.assertEqual(len(access), 1)
        self.assertEqual((access[0]["status"], access[0]["route"]), (404, "none"))
        self.assertTrue(access[0]["time"].endswith("Z"))
        self.assertTrue(any("eventgw listening on" in line["message"] for line in lines))
        self.assertFalse(any("starting on" in line["message"] for line in lines))

    def test_reload_changing_the_format_is_refused(self) -> None:
        """log.format is fixed at start: a reload that changes it is refused whole,
        naming it, and the gateway keeps logging as before."""
        gateway = self.start()
        config = os.path.join(os.path.dirname(gateway.log_path), "gateway.yaml")
        with open(config, "a") as f:
            f.write("log: {format: json}\n")
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("configuration reload refused")
        self.assertIn("log.format text -> json", gateway.log())
        self.request(gateway, "/after")
        gateway.wait_for(r"\[eventgw\.access#info\] 127\.0\.0\.1 GET /after")
        self.stop(gateway)
