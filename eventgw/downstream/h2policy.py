# -*- test-case-name: tests.test_h2policy -*-
"""The downstream HTTP/2 server's abuse and timer policy, without sockets or clocks.

Core module: it holds numbers and decisions only.  It must not import ``twisted``,
``grpc``, ``txaio``, ``socket`` or ``time``, and it never reads the clock -- every
method that depends on time takes ``now`` (seconds, any monotonic origin) from the
caller.

:class:`ConnectionPolicy` is told what happened on one client connection (a stream
reset or refused, a control frame, the state of h2's frame buffer after a read, the
timer firing, bytes written while the client is not reading) and answers with a
decision for the protocol (:mod:`eventgw.downstream.h2server`) to carry out:

* :class:`GoAway` -- send GOAWAY with ``code`` and close (``abuse`` says whether the
  client misbehaved, which the protocol logs as a protocol error);
* :class:`Abort` -- drop the connection at once (a GOAWAY could not reach the client);
* :class:`Close` -- close cleanly, nothing is in flight (a drained connection);
* :class:`Rearm` -- the connection timer must fire within ``delay`` seconds;
* :data:`PROCEED` -- nothing to do.

What it decides: the rapid-reset budget (CVE-2023-44487), the control-frame flood
budget (CVE-2019-9512/9515/9518), the size and the time of unfinished header blocks
(CONTINUATION flood CVE-2024-27316, slowloris), the preface and idle timeouts, which
streams a draining connection still admits, and the "flood while paused" rule.  The
named limits behind those decisions live here too, each with the reason for its value
(the drain period, :data:`~eventgw.http2.DRAIN_TIMEOUT`, is the service's for both
protocols and stays in :mod:`eventgw.http2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from h2.errors import ErrorCodes

from eventgw.config import Limits

__all__ = [
    "ABORT_TIMEOUT",
    "CONTROL_FRAME_BURST",
    "CONTROL_FRAME_RATE",
    "HEADER_LIST_HARD_FACTOR",
    "MAX_PAUSED_OUTBOUND_BYTES",
    "PROCEED",
    "RESET_BURST",
    "RESET_RATE",
    "STREAM_BURST_SLACK",
    "Abort",
    "Close",
    "ConnectionPolicy",
    "Decision",
    "GoAway",
    "Proceed",
    "Rearm",
    "TokenBucket",
    "code_name",
]

# --- abuse limits ---------------------------------------------------------------------

# Rapid reset (CVE-2023-44487): streams the client opens and resets at once cost us a
# dispatch each while never counting against MAX_CONCURRENT_STREAMS.  A connection may
# reset (or have refused) RESET_BURST streams at once and RESET_RATE per second after
# that; every stream that completes normally earns one token back, so a busy client that
# cancels a small share of its calls is never cut off.  Past that: GOAWAY
# ENHANCE_YOUR_CALM.
RESET_BURST: Final = 200
RESET_RATE: Final = 50.0

# PING / SETTINGS / empty DATA / unknown-frame floods (CVE-2019-9512, -9515, -9518):
# each costs us a parse and usually a reply.  gRPC keepalive and BDP probes send a few
# PINGs per second at most, so 1000 at once and 100 per second is far above any real
# client.  Past that: GOAWAY ENHANCE_YOUR_CALM.
CONTROL_FRAME_BURST: Final = 1000
CONTROL_FRAME_RATE: Final = 100.0

# Frames other than DATA (PING and SETTINGS ACKs, WINDOW_UPDATEs, response HEADERS) that
# we may write while the transport has paused us, i.e. while the client is not reading.
# A client that floods PINGs without reading the ACKs would otherwise grow our send
# buffer without bound (the same defence as Twisted's _maxBufferedControlFrameBytes).
# 128 KiB holds the headers and trailers of every stream of a busy connection.  Past it
# the connection is aborted: a GOAWAY could not reach a client that does not read.
MAX_PAUSED_OUTBOUND_BYTES: Final = 128 * 1024

# Oversized header lists (CVE-2016-6581, HPACK bombs).  We advertise
# SETTINGS_MAX_HEADER_LIST_SIZE = limits.max_header_bytes; a request up to
# HEADER_LIST_HARD_FACTOR times that is still decoded (HPACK state must stay in sync) and
# answered 431 on its stream, keeping the connection's other streams alive.  Beyond it
# h2's decoder stops with GOAWAY ENHANCE_YOUR_CALM, and so does a HEADERS+CONTINUATION
# block whose buffered (compressed) bytes pass the same figure (CVE-2024-27316: h2 itself
# only caps the *count* of CONTINUATION frames, at 64).
HEADER_LIST_HARD_FACTOR: Final = 2

# h2 counts concurrent streams while it parses a whole read, before we see any event.
# We advertise limits.max_concurrent_streams and refuse (RST_STREAM REFUSED_STREAM, RFC
# 9113 section 5.1.2) streams beyond it ourselves; h2 enforces this much more as a hard
# ceiling (GOAWAY PROTOCOL_ERROR), reached only by a client that opens over a thousand
# streams in one read -- which a 64 KiB read of minimal HEADERS frames can barely do.
STREAM_BURST_SLACK: Final = 1000

# --- time -----------------------------------------------------------------------------

# After we decide to close (GOAWAY sent), a client that does not read our last bytes
# would hold the socket open forever; abort it after this many seconds.
ABORT_TIMEOUT: Final = 15.0

# The 9-byte header every HTTP/2 frame starts with (RFC 9113 section 4.1).
_FRAME_HEADER: Final = 9


class TokenBucket:
    """A token bucket: up to ``capacity`` tokens, refilled at ``rate`` per second.

    Invariant: ``0 <= tokens <= capacity``.  Time only moves through the ``now`` passed in;
    a ``now`` earlier than the last one (clock step) refills nothing.
    """

    __slots__ = ("_tokens", "_updated", "capacity", "rate")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = float(rate)
        self._tokens = self.capacity
        self._updated = now

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated
        if elapsed > 0.0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
            self._updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens; ``False`` (and nothing spent) when there are too few."""
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def give(self, amount: float = 1.0) -> None:
        """Return tokens earned by good behaviour, up to the capacity."""
        self._tokens = min(self.capacity, self._tokens + amount)

    def tokens(self, now: float) -> float:
        """The tokens available at ``now``."""
        self._refill(now)
        return self._tokens


# --- decisions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GoAway:
    """Send GOAWAY ``code`` and close; every open stream is lost with ``reason``.

    ``abuse`` is true when the client misbehaved (the close is logged as a protocol
    error), false for our own housekeeping (idle, drain timeout).
    """

    code: ErrorCodes
    reason: str
    abuse: bool = True


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the connection now, without a GOAWAY; ``message`` is the log line."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Close:
    """Close cleanly: nothing is in flight."""

    reason: str = "connection closed"


@dataclass(frozen=True, slots=True)
class Rearm:
    """The connection timer must fire within ``delay`` seconds (no later than now)."""

    delay: float


@dataclass(frozen=True, slots=True)
class Proceed:
    """Nothing to do."""


PROCEED: Final = Proceed()

Decision = GoAway | Abort | Close | Rearm | Proceed


def code_name(code: int | ErrorCodes) -> str:
    """An HTTP/2 error code by its RFC name, or in hex when it has none."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"0x{int(code):x}"


class ConnectionPolicy:
    """The abuse budgets and the deadlines of one downstream HTTP/2 connection.

    Invariant: a ``Rearm`` is always for the earliest deadline in force -- the
    preface until it is complete, then an unfinished header block while there is one,
    then the idle timeout while no stream is open.
    """

    __slots__ = (
        "_connected_at",
        "_control",
        "_header_block_since",
        "_idle_since",
        "_paused_outbound",
        "_resets",
        "drain_last_id",
        "draining",
        "hard_header_bytes",
        "header_timeout",
        "idle_timeout",
        "max_header_bytes",
        "max_streams",
        "preface_done",
    )

    def __init__(self, limits: Limits) -> None:
        self.max_streams = limits.max_concurrent_streams
        self.max_header_bytes = limits.max_header_bytes
        self.hard_header_bytes = limits.max_header_bytes * HEADER_LIST_HARD_FACTOR
        self.header_timeout = limits.header_timeout
        self.idle_timeout = limits.idle_timeout
        self.preface_done = False
        self.draining = False
        self.drain_last_id = 0
        self._connected_at = 0.0
        self._idle_since = 0.0
        self._header_block_since: float | None = None
        self._paused_outbound = 0
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, 0.0)
        self._control = TokenBucket(CONTROL_FRAME_BURST, CONTROL_FRAME_RATE, 0.0)

    # --- the connection's life ------------------------------------------------------

    def connected(self, now: float) -> Rearm:
        """The connection is up: the budgets start full, the preface clock runs."""
        self._connected_at = self._idle_since = now
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, now)
        self._control = TokenBucket(CONTROL_FRAME_BURST, CONTROL_FRAME_RATE, now)
        return Rearm(self.header_timeout)

    def preface_completed(self, now: float) -> Rearm:
        """The header-timeout phase is over; the idle clock may be the sooner one."""
        self.preface_done = True
        return Rearm(max(self._idle_since + self.idle_timeout - now, 0.0))

    def on_timer(self, now: float, streams_open: bool) -> GoAway | Rearm:
        """The connection timer fired: close for a timeout, or say when to look again."""
        header_timeout = self.header_timeout
        if not self.preface_done or self._header_block_since is not None:
            since = self._connected_at if not self.preface_done else self._header_block_since
            assert since is not None
            remaining = since + header_timeout - now
            if remaining <= 0:
                what = "connection preface" if not self.preface_done else "header block"
                return GoAway(
                    ErrorCodes.PROTOCOL_ERROR,
                    f"client did not complete its {what} within {header_timeout:g}s",
                )
            return Rearm(remaining)
        if streams_open:
            return Rearm(self.idle_timeout)
        remaining = self._idle_since + self.idle_timeout - now
        if remaining <= 0:
            return GoAway(ErrorCodes.NO_ERROR, "idle timeout", abuse=False)
        return Rearm(remaining)

    def start_drain(self, last_stream_id: int) -> bool:
        """Serve no stream above ``last_stream_id``; ``False`` if already draining."""
        if self.draining:
            return False
        self.draining = True
        self.drain_last_id = last_stream_id
        return True

    def drain_expired(self) -> GoAway:
        """The drain deadline passed with streams still open: cut them off."""
        return GoAway(ErrorCodes.NO_ERROR, "drain timeout", abuse=False)

    # --- streams --------------------------------------------------------------------

    def admit(self, stream_id: int, open_streams: int) -> bool:
        """Whether a new stream may be served (else it is refused, REFUSED_STREAM)."""
        return open_streams < self.max_streams and not (
            self.draining and stream_id > self.drain_last_id
        )

    def stream_refused(self, now: float) -> GoAway | Proceed:
        """A stream was refused: that costs a reset token (rapid reset by other means)."""
        if self._resets.take(now):
            return PROCEED
        return GoAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many refused streams (rapid reset)")

    def stream_reset(self, now: float) -> GoAway | Proceed:
        """The client reset a stream: one reset token, or GOAWAY (CVE-2023-44487)."""
        if self._resets.take(now):
            return PROCEED
        return GoAway(
            ErrorCodes.ENHANCE_YOUR_CALM,
            "client reset too many streams (rapid reset, CVE-2023-44487)",
        )

    def stream_error(self, now: float) -> GoAway | Proceed:
        """We reset a stream for the client's protocol error (a stream error, RFC 9113
        section 5.4.2): a reset token too, or malformed frames (a self-dependent
        PRIORITY, a WINDOW_UPDATE of 0) would draw RST_STREAMs without end."""
        if self._resets.take(now):
            return PROCEED
        return GoAway(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream errors")

    def stream_closed(self, now: float, completed: bool, open_streams: int) -> Close | Proceed:
        """A stream is over; one that ``completed`` normally earns a reset token back."""
        if completed:
            self._resets.give()
        if open_streams:
            return PROCEED
        self._idle_since = now
        return Close() if self.draining else PROCEED

    # --- frames and buffers ---------------------------------------------------------

    def control_frame(self, now: float, flood: str) -> GoAway | Proceed:
        """A PING, SETTINGS, unknown or empty DATA frame; ``flood`` names it in the
        GOAWAY reason should the budget be spent."""
        if self._control.take(now):
            return PROCEED
        return GoAway(ErrorCodes.ENHANCE_YOUR_CALM, flood)

    def read_done(
        self,
        now: float,
        *,
        partial: bytes | bytearray,
        max_frame_size: int,
        header_block: int | None,
        streams_open: bool,
    ) -> GoAway | Rearm | Proceed:
        """Bound what h2's frame buffer holds between reads.

        ``partial`` is the unfinished frame h2 buffers, ``header_block`` the bytes of
        an unfinished HEADERS+CONTINUATION block (``None`` when there is none).  h2
        checks a frame's declared length only once the whole frame has arrived, so a
        header announcing 16 MiB would be buffered in full: we check the length as
        soon as the 9-byte header is in.  h2 keeps the frames of an unfinished block
        and caps only their count; we cap their bytes and their time (CVE-2024-27316,
        slowloris).
        """
        if len(partial) >= _FRAME_HEADER:
            declared = int.from_bytes(partial[:3], "big")
            if declared > max_frame_size:
                return GoAway(
                    ErrorCodes.FRAME_SIZE_ERROR,
                    f"frame of {declared} bytes exceeds MAX_FRAME_SIZE",
                )
        if header_block is None and not (partial and not streams_open):
            # (A frame trickling in while no stream is open is most likely the next
            # request's HEADERS: it gets the header timeout too.)
            self._header_block_since = None
            return PROCEED
        if header_block is not None and header_block > self.hard_header_bytes:
            return GoAway(
                ErrorCodes.ENHANCE_YOUR_CALM,
                "header block too large (CONTINUATION flood, CVE-2024-27316)",
            )
        if self._header_block_since is None:
            self._header_block_since = now
            return Rearm(self.header_timeout)
        return PROCEED

    def paused_write(self, size: int) -> Abort | Proceed:
        """``size`` bytes written while the client is not reading (see
        :data:`MAX_PAUSED_OUTBOUND_BYTES`)."""
        self._paused_outbound += size
        if self._paused_outbound <= MAX_PAUSED_OUTBOUND_BYTES:
            return PROCEED
        return Abort(
            "client flooded control frames without reading",
            f"client is not reading but keeps us writing (over {MAX_PAUSED_OUTBOUND_BYTES} "
            "bytes of control frames while paused): aborting",
        )

    def resumed(self) -> None:
        """The client reads again: the paused-write budget starts over."""
        self._paused_outbound = 0
