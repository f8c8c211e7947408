"""Tests for eventgw.downstream.h2watch: the stall watchdog of the HTTP/2 server."""

from __future__ import annotations

from h2.settings import SettingCodes
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventgw.downstream.h2watch import (
    LATE,
    STALL_AFTER,
    SWEEP_EVERY,
    ConnectionState,
    StreamState,
    connection_findings,
    stream_findings,
)
from tests.test_h2server import Peer, RecordingTarget


def stream_state(**changes: object) -> StreamState:
    values: dict[str, object] = {
        "stream_id": 1, "age": 1.0, "status": 200, "buffered": 0, "window": 1000,
        "end_pending": False, "producer": False, "producer_paused": False,
        "above_high": False, "request_paused": False, "inbox": 0,
    }
    values.update(changes)
    return StreamState(**values)  # type: ignore[arg-type]


def conn_state(**changes: object) -> ConnectionState:
    values: dict[str, object] = {
        "transport_paused": False, "unflushed": 0, "coalescer_depth": 0,
        "coalescer_pending": 0, "send_buffer": 0, "tls_buffer": 0,
        "connection_window": 65535, "blocked": 0,
    }
    values.update(changes)
    return ConnectionState(**values)  # type: ignore[arg-type]


def kinds(findings: list[object]) -> list[str]:
    return [f.kind for f in findings]  # type: ignore[attr-defined]


class FindingTests(SynchronousTestCase):
    """Which states are stuck, and whose doing they are."""

    def test_buffered_body_with_open_window_is_a_lost_push(self) -> None:
        """Body buffered while the window is open and the transport writable is a bug."""
        found = stream_findings(stream_state(buffered=500, window=100), conn_state())
        self.assertEqual(kinds(found), ["lost-push"])
        self.assertTrue(found[0].bug)

    def test_buffered_body_while_paused_or_without_window_is_the_client(self) -> None:
        """No window, or a transport the client does not read, is not the gateway's bug."""
        self.assertEqual(
            kinds(stream_findings(stream_state(buffered=500, window=0), conn_state())),
            ["no-window"],
        )
        self.assertEqual(
            stream_findings(stream_state(buffered=500), conn_state(transport_paused=True)), []
        )

    def test_paused_producer_below_high_watermark_is_a_lost_resume(self) -> None:
        """A producer left paused when neither its buffer nor the transport asks for it."""
        state = stream_state(producer=True, producer_paused=True, buffered=10, window=0)
        self.assertEqual(kinds(stream_findings(state, conn_state())), ["lost-resume", "no-window"])
        held = stream_state(producer=True, producer_paused=True, above_high=True, window=0,
                            buffered=70000)
        self.assertEqual(kinds(stream_findings(held, conn_state())), ["no-window"])

    def test_connection_states(self) -> None:
        """Unflushed h2 bytes, a held coalescer and unread input are bugs; a paused
        transport is not."""
        found = connection_findings(conn_state(unflushed=9, coalescer_depth=1))
        self.assertEqual(kinds(found), ["unflushed", "coalescer-held"])
        self.assertTrue(all(f.bug for f in found))
        self.assertEqual(kinds(connection_findings(conn_state(unread=100))), ["unread-input"])
        paused = connection_findings(conn_state(transport_paused=True, send_buffer=70000))
        self.assertEqual(kinds(paused), ["client-not-reading"])
        self.assertFalse(paused[0].bug)


class WatchTests(TestCase):
    """The sweep over live connections, on an in-memory client connection."""

    def setUp(self) -> None:
        self.logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def watch_lines(self, level: str) -> list[str]:
        return [
            e["log_format"]
            for e in self.logged
            if e.get("log_namespace") == "eventgw.downstream.h2watch"
            and e["log_level"].name == level
        ]

    def test_client_window_stall_is_logged_as_the_clients(self) -> None:
        """A response held by a closed client window is reported once, not as a bug."""
        target = RecordingTarget()
        peer = Peer(target, client_settings={SettingCodes.INITIAL_WINDOW_SIZE: 10})
        peer.request()
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        writer.write_body(b"x" * 100)
        watch = peer.server._watch
        assert watch is not None
        for _ in range(int((STALL_AFTER + 2 * SWEEP_EVERY) / SWEEP_EVERY) + 1):
            peer.clock.advance(SWEEP_EVERY)
        self.assertEqual(watch.stalls, 0)
        self.assertEqual(self.watch_lines("error"), [])
        self.assertEqual(len(self.watch_lines("info")), 1)
        peer.server.connectionLost(Failure(ConnectionError("done")))

    def test_lost_push_is_logged_as_a_bug(self) -> None:
        """Body left in a stream's buffer with the windows open is logged as an error."""
        target = RecordingTarget()
        peer = Peer(target)
        stream_id = peer.request()
        writer = target.handlers[0].writer
        writer.write_head(200, [])
        # What a lost push looks like: bytes queued, window open, nobody to send them.
        peer.server.streams[stream_id].out.append(b"y" * 100)
        watch = peer.server._watch
        assert watch is not None
        for _ in range(int(STALL_AFTER / SWEEP_EVERY) + 2):
            peer.clock.advance(SWEEP_EVERY)
        self.assertEqual(watch.stalls, 1)
        self.assertEqual(len(self.watch_lines("error")), 1)
        peer.server.connectionLost(Failure(ConnectionError("done")))

    def test_timer_stops_with_the_last_connection(self) -> None:
        """No sweep stays scheduled once every watched connection is gone."""
        peer = Peer(RecordingTarget())
        watch = peer.server._watch
        assert watch is not None
        peer.server.connectionLost(Failure(ConnectionError("done")))
        self.assertIsNone(watch._timer)
        self.assertIsNone(peer.server._watch)

    def test_late_sweep_is_reported(self) -> None:
        """A sweep that fires long after it was due says the reactor was busy that long."""
        peer = Peer(RecordingTarget())
        watch = peer.server._watch
        assert watch is not None
        peer.clock.advance(SWEEP_EVERY + 3 * LATE)
        self.assertEqual(watch.late_sweeps, 1)
        self.assertEqual(len(self.watch_lines("warn")), 1)
        peer.clock.advance(SWEEP_EVERY)
        self.assertEqual(watch.late_sweeps, 1)
        peer.server.connectionLost(Failure(ConnectionError("done")))
