"""The HTTP/2 server's sans-IO budgets and buffers, without sockets or clocks."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.h2limits import (
    HIGH_WATERMARK,
    LOW_WATERMARK,
    TokenBucket,
    WatermarkBuffer,
    header_list_size,
)


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


class WatermarkBufferTests(SynchronousTestCase):
    def test_crossing_high_is_reported_once(self) -> None:
        """append() reports the crossing of the high watermark exactly once."""
        buffer = WatermarkBuffer(high=10, low=4)
        self.assertFalse(buffer.append(b"x" * 10))
        self.assertTrue(buffer.append(b"x"))
        self.assertFalse(buffer.append(b"x" * 100))
        self.assertTrue(buffer.above_high)

    def test_falls_to_low_with_hysteresis(self) -> None:
        """Draining reports "low" once, only at or below the low watermark."""
        buffer = WatermarkBuffer(high=10, low=4)
        buffer.append(b"abcdefghijkl")
        self.assertEqual(buffer.take(5), b"abcde")
        self.assertFalse(buffer.fell_to_low())  # 7 left: between low and high
        self.assertEqual(buffer.take(3), b"fgh")
        self.assertTrue(buffer.fell_to_low())
        self.assertFalse(buffer.fell_to_low())
        self.assertFalse(buffer.above_high)

    def test_take_more_than_held(self) -> None:
        """take() returns what there is; an empty buffer is falsy."""
        buffer = WatermarkBuffer()
        buffer.append(b"abc")
        self.assertEqual(buffer.take(100), b"abc")
        self.assertFalse(buffer)
        self.assertEqual(len(buffer), 0)

    def test_clear(self) -> None:
        """clear() drops the bytes and the high state."""
        buffer = WatermarkBuffer(high=1, low=0)
        buffer.append(b"xyz")
        buffer.clear()
        self.assertFalse(buffer)
        self.assertFalse(buffer.above_high)

    def test_defaults_and_validation(self) -> None:
        """The defaults are the module's watermarks; low above high is refused."""
        buffer = WatermarkBuffer()
        self.assertEqual((buffer.high, buffer.low), (HIGH_WATERMARK, LOW_WATERMARK))
        self.assertRaises(ValueError, WatermarkBuffer, 1, 2)


class HeaderListSizeTests(SynchronousTestCase):
    def test_rfc_size(self) -> None:
        """Each field counts its name, its value and 32 octets (RFC 9113 6.5.2)."""
        self.assertEqual(header_list_size([(b":method", b"GET"), (b"a", b"")]), 7 + 3 + 32 + 33)
        self.assertEqual(header_list_size([]), 0)
