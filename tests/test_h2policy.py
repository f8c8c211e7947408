"""The downstream HTTP/2 abuse and timer policy, fed times by hand: no sockets, no reactor."""

from __future__ import annotations

from h2.errors import ErrorCodes
from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import Limits
from eventgw.downstream.h2policy import (
    CONTROL_FRAME_BURST,
    CONTROL_FRAME_RATE,
    HEADER_LIST_HARD_FACTOR,
    MAX_PAUSED_OUTBOUND_BYTES,
    PROCEED,
    RESET_BURST,
    RESET_RATE,
    Abort,
    Close,
    ConnectionPolicy,
    GoAway,
    Rearm,
    TokenBucket,
    code_name,
)

T0 = 1000.0
LIMITS = Limits(max_header_bytes=4096, max_concurrent_streams=10, idle_timeout=120.0,
                header_timeout=15.0)


def connected(limits: Limits = LIMITS, now: float = T0) -> ConnectionPolicy:
    """A policy for a connection made at ``now``, its preface complete at once."""
    policy = ConnectionPolicy(limits)
    policy.connected(now)
    policy.preface_completed(now)
    return policy


class TokenBucketTests(SynchronousTestCase):
    def test_burst_then_refuse(self) -> None:
        """A full bucket allows ``capacity`` takes at one instant, then refuses."""
        bucket = TokenBucket(3, 1.0, now=100.0)
        self.assertEqual([bucket.take(100.0) for _ in range(4)], [True, True, True, False])

    def test_refills_at_rate(self) -> None:
        """Tokens come back at ``rate`` per second, never above capacity."""
        bucket = TokenBucket(10, 2.0, now=0.0)
        for _ in range(10):
            bucket.take(0.0)
        self.assertFalse(bucket.take(0.0))
        self.assertAlmostEqual(bucket.tokens(1.5), 3.0)
        self.assertAlmostEqual(bucket.tokens(1000.0), 10.0)

    def test_refused_take_spends_nothing(self) -> None:
        """A take that fails leaves the tokens as they were."""
        bucket = TokenBucket(2, 1.0, now=0.0)
        self.assertFalse(bucket.take(0.0, cost=5))
        self.assertEqual(bucket.tokens(0.0), 2.0)

    def test_clock_going_backwards_refills_nothing(self) -> None:
        """A ``now`` before the last one neither refills nor breaks the bucket."""
        bucket = TokenBucket(2, 100.0, now=50.0)
        bucket.take(50.0)
        bucket.take(50.0)
        self.assertFalse(bucket.take(10.0))
        self.assertTrue(bucket.take(50.5))

    def test_give_is_capped(self) -> None:
        """Tokens earned by good behaviour never exceed the capacity."""
        bucket = TokenBucket(2, 0.0, now=0.0)
        bucket.take(0.0)
        bucket.give(5)
        self.assertEqual(bucket.tokens(0.0), 2.0)


class RapidResetTests(SynchronousTestCase):
    def test_burst_of_resets_then_goaway(self) -> None:
        """RESET_BURST resets at one instant pass; the next is GOAWAY ENHANCE_YOUR_CALM."""
        policy = connected()
        for _ in range(RESET_BURST):
            self.assertIs(policy.stream_reset(T0), PROCEED)
        decision = policy.stream_reset(T0)
        self.assertIsInstance(decision, GoAway)
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(decision.abuse)
        self.assertIn("CVE-2023-44487", decision.reason)

    def test_resets_refill_at_rate(self) -> None:
        """An exhausted budget earns RESET_RATE resets per second back."""
        policy = connected()
        for _ in range(RESET_BURST):
            policy.stream_reset(T0)
        later = T0 + 1.0
        for _ in range(int(RESET_RATE)):
            self.assertIs(policy.stream_reset(later), PROCEED)
        self.assertIsInstance(policy.stream_reset(later), GoAway)

    def test_completed_streams_earn_tokens_back(self) -> None:
        """A client that completes a stream for each one it cancels is never cut off."""
        policy = connected()
        for _ in range(RESET_BURST * 5):
            self.assertIs(policy.stream_reset(T0), PROCEED)
            policy.stream_closed(T0, completed=True, open_streams=1)

    def test_reset_streams_earn_nothing(self) -> None:
        """A stream that ended by a reset does not give its token back."""
        policy = connected()
        for _ in range(RESET_BURST):
            policy.stream_reset(T0)
            policy.stream_closed(T0, completed=False, open_streams=1)
        self.assertIsInstance(policy.stream_reset(T0), GoAway)

    def test_refused_streams_share_the_budget(self) -> None:
        """Streams refused for the stream limit cost reset tokens too."""
        policy = connected()
        for _ in range(RESET_BURST // 2):
            self.assertIs(policy.stream_refused(T0), PROCEED)
            self.assertIs(policy.stream_reset(T0), PROCEED)
        decision = policy.stream_refused(T0)
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("refused", decision.reason)


    def test_stream_errors_share_the_budget(self) -> None:
        """Streams we reset for the client's protocol errors cost reset tokens too."""
        policy = connected()
        for _ in range(RESET_BURST // 2):
            self.assertIs(policy.stream_error(T0), PROCEED)
            self.assertIs(policy.stream_reset(T0), PROCEED)
        decision = policy.stream_error(T0)
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("stream errors", decision.reason)


class ControlFloodTests(SynchronousTestCase):
    def test_flood_of_control_frames(self) -> None:
        """CONTROL_FRAME_BURST frames at once pass; one more is GOAWAY named after it."""
        policy = connected()
        for _ in range(CONTROL_FRAME_BURST):
            self.assertIs(policy.control_frame(T0, "PING flood"), PROCEED)
        decision = policy.control_frame(T0, "PING flood")
        self.assertEqual(decision, GoAway(ErrorCodes.ENHANCE_YOUR_CALM, "PING flood"))

    def test_a_sane_rate_is_never_refused(self) -> None:
        """Control frames at the refill rate go on for ever."""
        policy = connected()
        step = 1.0 / CONTROL_FRAME_RATE
        for i in range(CONTROL_FRAME_BURST * 3):
            self.assertIs(policy.control_frame(T0 + i * step, "PING flood"), PROCEED)

    def test_flood_while_paused(self) -> None:
        """Writing past MAX_PAUSED_OUTBOUND_BYTES while paused aborts; resuming resets."""
        policy = connected()
        self.assertIs(policy.paused_write(MAX_PAUSED_OUTBOUND_BYTES), PROCEED)
        policy.resumed()
        self.assertIs(policy.paused_write(MAX_PAUSED_OUTBOUND_BYTES), PROCEED)
        decision = policy.paused_write(1)
        self.assertIsInstance(decision, Abort)
        assert isinstance(decision, Abort)
        self.assertIn(str(MAX_PAUSED_OUTBOUND_BYTES), decision.message)


def frame_header(length: int) -> bytes:
    """The 9-byte header of a HEADERS frame declaring ``length`` bytes on stream 1."""
    return length.to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big")


class BufferTests(SynchronousTestCase):
    def test_oversized_frame_is_refused_from_its_header(self) -> None:
        """A declared length past MAX_FRAME_SIZE is FRAME_SIZE_ERROR before the body."""
        policy = connected()
        decision = policy.read_done(
            T0, partial=frame_header(1 << 20), max_frame_size=16384, header_block=None,
            streams_open=True,
        )
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.FRAME_SIZE_ERROR)

    def test_nothing_buffered_is_fine(self) -> None:
        """An empty buffer, or a partial DATA frame while a stream is open, is no block."""
        policy = connected()
        for partial in (b"", frame_header(100)[:5]):
            self.assertIs(
                policy.read_done(T0, partial=partial, max_frame_size=16384,
                                 header_block=None, streams_open=True),
                PROCEED,
            )

    def test_continuation_flood_bytes(self) -> None:
        """An unfinished header block past the hard ceiling is GOAWAY (CVE-2024-27316)."""
        policy = connected()
        decision = policy.read_done(
            T0, partial=b"", max_frame_size=16384,
            header_block=4096 * HEADER_LIST_HARD_FACTOR + 1, streams_open=False,
        )
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertIn("CONTINUATION", decision.reason)

    def test_unfinished_header_block_times_out(self) -> None:
        """A header block starts the header clock; it expires header_timeout later."""
        policy = connected()
        self.assertEqual(
            policy.read_done(T0 + 1, partial=b"", max_frame_size=16384, header_block=100,
                             streams_open=True),
            Rearm(15.0),
        )
        # Still unfinished later: the clock keeps its start.
        self.assertIs(
            policy.read_done(T0 + 5, partial=b"", max_frame_size=16384, header_block=200,
                             streams_open=True),
            PROCEED,
        )
        self.assertEqual(policy.on_timer(T0 + 10, streams_open=True), Rearm(6.0))
        decision = policy.on_timer(T0 + 16, streams_open=True)
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.PROTOCOL_ERROR)
        self.assertIn("header block within 15s", decision.reason)

    def test_finished_header_block_stops_the_clock(self) -> None:
        """Once the block completes the header clock is off again."""
        policy = connected()
        policy.read_done(T0, partial=b"", max_frame_size=16384, header_block=100,
                         streams_open=False)
        policy.read_done(T0 + 1, partial=b"", max_frame_size=16384, header_block=None,
                         streams_open=True)
        self.assertEqual(policy.on_timer(T0 + 30, streams_open=True), Rearm(120.0))

    def test_trickled_frame_without_streams_gets_the_header_clock(self) -> None:
        """A partial frame while no stream is open is the next request's HEADERS."""
        policy = connected()
        self.assertEqual(
            policy.read_done(T0, partial=frame_header(100)[:4], max_frame_size=16384,
                             header_block=None, streams_open=False),
            Rearm(15.0),
        )


class TimerTests(SynchronousTestCase):
    def test_preface_timeout(self) -> None:
        """No preface within header_timeout of connecting: GOAWAY PROTOCOL_ERROR."""
        policy = ConnectionPolicy(LIMITS)
        self.assertEqual(policy.connected(T0), Rearm(15.0))
        self.assertEqual(policy.on_timer(T0 + 5, streams_open=False), Rearm(10.0))
        decision = policy.on_timer(T0 + 15, streams_open=False)
        assert isinstance(decision, GoAway)
        self.assertEqual(decision.code, ErrorCodes.PROTOCOL_ERROR)
        self.assertIn("connection preface", decision.reason)

    def test_preface_completed_points_at_idle_deadline(self) -> None:
        """After the preface the idle deadline is what the timer waits for."""
        policy = ConnectionPolicy(LIMITS)
        policy.connected(T0)
        self.assertEqual(policy.preface_completed(T0 + 2), Rearm(118.0))

    def test_idle_timeout(self) -> None:
        """idle_timeout after the last stream closed: GOAWAY NO_ERROR, not abuse."""
        policy = connected()
        policy.stream_closed(T0 + 50, completed=True, open_streams=0)
        self.assertEqual(policy.on_timer(T0 + 120, streams_open=False), Rearm(50.0))
        self.assertEqual(
            policy.on_timer(T0 + 170, streams_open=False),
            GoAway(ErrorCodes.NO_ERROR, "idle timeout", abuse=False),
        )

    def test_open_stream_is_not_idle(self) -> None:
        """While a stream is open the timer only looks again an idle_timeout later."""
        policy = connected()
        self.assertEqual(policy.on_timer(T0 + 500, streams_open=True), Rearm(120.0))


class DrainTests(SynchronousTestCase):
    def test_drain_admits_only_older_streams(self) -> None:
        """Draining refuses streams above the last id; the limit refuses the rest."""
        policy = connected()
        self.assertTrue(policy.admit(9, open_streams=9))
        self.assertFalse(policy.admit(9, open_streams=10))
        self.assertTrue(policy.start_drain(7))
        self.assertFalse(policy.start_drain(9))
        self.assertTrue(policy.admit(7, open_streams=0))
        self.assertFalse(policy.admit(9, open_streams=0))

    def test_drained_connection_closes(self) -> None:
        """The last stream closing on a draining connection closes it; timeout cuts off."""
        policy = connected()
        policy.start_drain(5)
        self.assertIs(policy.stream_closed(T0, completed=True, open_streams=1), PROCEED)
        self.assertEqual(policy.stream_closed(T0, completed=True, open_streams=0), Close())
        self.assertEqual(
            policy.drain_expired(), GoAway(ErrorCodes.NO_ERROR, "drain timeout", abuse=False)
        )

    def test_code_name(self) -> None:
        """Error codes print by name, unknown ones in hex."""
        self.assertEqual(code_name(0xB), "ENHANCE_YOUR_CALM")
        self.assertEqual(code_name(0x99), "0x99")
