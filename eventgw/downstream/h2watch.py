# -*- test-case-name: tests.test_h2watch -*-
"""A watchdog for stuck HTTP/2 client connections: it logs what nothing else would.

Shell module (a reactor timer, Twisted logging).  Every few seconds
(:data:`SWEEP_EVERY`) one sweep looks at every open downstream HTTP/2 connection
(:class:`~eventgw.downstream.h2server.H2ServerProtocol`) from outside any read, where
the invariants of the write path must hold:

* h2 holds no frames that nobody will flush (every writer call flushes at its end,
  at the end of the read it is part of, or at the write coalescer's release);
* the write coalescer (:data:`eventgw.http2.WRITES`) is not holding anything;
* no stream has response body buffered while its send windows are open and the
  transport is writable (a lost push), and no producer is paused while its stream's
  buffer is below the high watermark and the transport is writable (a lost resume);
* the client's bytes do not sit unread in the socket (``FIONREAD``) through sweeps
  that ran on time (reading stopped).

Each sweep also measures how late its timer fired: a sweep :data:`LATE` seconds late
means the reactor thread did nothing else for that long -- CPU starvation or one huge
batch of work -- and is logged as a warning, because then every request of every
connection waited that long, whatever the code paths above do.

A state that breaks one of them and lasts :data:`STALL_AFTER` seconds is logged as an
error, once per stream (or connection) and state, with the stream's whole state.
States that are the client's doing -- its windows closed, its socket not read, a
response still waiting for the target -- are logged once at info level after
:data:`STALL_AFTER`, so a load run that sees requests hang can tell which side held
them.  The sweep reads private attributes of h2 and of Twisted's transports
(``_data_to_send``, the TCP send buffer, TLS's ``_appSendBuffer``) through ``getattr``
with defaults: on another version it reports less, never fails.

The states themselves are judged by :func:`stream_findings` and
:func:`connection_findings`, which take plain values and read no clock.
"""

from __future__ import annotations

import fcntl
import struct
import termios
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from twisted.logger import Logger

from eventgw.http2 import WRITES

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

    from eventgw.downstream.h2server import H2ServerProtocol

__all__ = [
    "LATE",
    "STALL_AFTER",
    "SWEEP_EVERY",
    "ConnectionState",
    "Finding",
    "StallWatch",
    "StreamState",
    "connection_findings",
    "stream_findings",
    "watch",
]

# How long a stuck state must last before it is logged.  Far above any scheduling delay
# of a loaded reactor (a few hundred ms), below the 20 s a client waits before it gives up.
STALL_AFTER: Final = 10.0

# Seconds between two sweeps; a stuck state is logged between STALL_AFTER and
# STALL_AFTER + SWEEP_EVERY after it began.
SWEEP_EVERY: Final = 5.0

# A sweep this many seconds late means the reactor thread was busy (or starved) that
# long: one warning line says so, since every request on every connection waited too.
LATE: Final = 1.0

log = Logger(namespace="eventgw.downstream.h2watch")


@dataclass(frozen=True, slots=True)
class StreamState:
    """What the sweep saw of one stream."""

    stream_id: int
    age: float
    status: int | None
    buffered: int
    window: int
    end_pending: bool
    producer: bool
    producer_paused: bool
    above_high: bool
    request_paused: bool
    inbox: int


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """What the sweep saw of one connection (``streams`` excluded)."""

    transport_paused: bool
    unflushed: int
    coalescer_depth: int
    coalescer_pending: int
    send_buffer: int
    tls_buffer: int
    connection_window: int
    blocked: int
    unread: int = 0
    lag: float = 0.0


@dataclass(frozen=True, slots=True)
class Finding:
    """A stuck state: ``bug`` when the gateway itself should have moved it on."""

    kind: str
    bug: bool
    text: str


def stream_findings(stream: StreamState, conn: ConnectionState) -> list[Finding]:
    """The stuck states of ``stream`` right now (the caller times how long they last)."""
    found: list[Finding] = []
    writable = not conn.transport_paused
    if stream.buffered and writable and stream.window > 0:
        found.append(Finding(
            "lost-push", True,
            f"{stream.buffered} response bytes buffered, send window {stream.window} open, "
            "transport writable, and no push pending",
        ))
    if stream.producer and stream.producer_paused and writable and not stream.above_high:
        found.append(Finding(
            "lost-resume", True,
            f"producer paused with {stream.buffered} bytes buffered (below the high "
            "watermark) and the transport writable",
        ))
    if stream.buffered and stream.window <= 0:
        found.append(Finding(
            "no-window", False,
            f"{stream.buffered} response bytes wait for the client's flow-control window",
        ))
    if stream.status is None and not stream.buffered:
        found.append(Finding("no-response", False, "no response head from the target yet"))
    return found


def connection_findings(conn: ConnectionState) -> list[Finding]:
    """The stuck states of a connection as a whole right now."""
    found: list[Finding] = []
    if conn.unflushed:
        found.append(Finding(
            "unflushed", True, f"h2 holds {conn.unflushed} bytes that no flush will write",
        ))
    if conn.coalescer_depth or conn.coalescer_pending:
        found.append(Finding(
            "coalescer-held", True,
            f"write coalescer held outside a read (depth {conn.coalescer_depth}, "
            f"{conn.coalescer_pending} flushes pending)",
        ))
    if conn.unread:
        # The same count through sweeps on time means reading stopped; the caller starts
        # the count again when the count changes or a sweep runs late (then the reactor
        # is simply behind, which the lag line says).
        found.append(Finding(
            "unread-input", True,
            f"the same {conn.unread} bytes from the client unread in the socket through "
            "sweeps that ran on time",
        ))
    if conn.transport_paused:
        found.append(Finding(
            "client-not-reading", False,
            f"transport paused (client not reading), {conn.send_buffer} bytes in the "
            f"send buffer, {conn.tls_buffer} in TLS",
        ))
    elif conn.tls_buffer:
        found.append(Finding(
            "tls-buffered", False,
            f"TLS holds {conn.tls_buffer} bytes until the client sends something",
        ))
    return found


def _buffered_bytes(transport: Any) -> int:
    """Bytes a Twisted TCP transport has not handed to the kernel yet (0 if unknown)."""
    data = getattr(transport, "dataBuffer", b"")
    offset = getattr(transport, "offset", 0)
    pending = getattr(transport, "_tempDataLen", 0)
    try:
        return max(0, len(data) - int(offset)) + int(pending)
    except TypeError:
        return 0


def _unread_bytes(transport: Any) -> int:
    """Bytes the kernel holds for us to read on the transport's socket (0 if unknown)."""
    tcp = getattr(transport, "transport", transport)  # TLS wraps the TCP transport
    fileno = getattr(tcp, "fileno", None)
    if fileno is None:
        return 0
    try:
        fd = fileno()
        if not isinstance(fd, int) or fd < 0:
            return 0
        raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError, TypeError):
        return 0
    count: int = struct.unpack("i", raw)[0]
    return count


def observe(
    protocol: H2ServerProtocol, lag: float = 0.0
) -> tuple[ConnectionState, list[StreamState]]:
    """Read the state of one connection and its streams (no side effects)."""
    h2 = protocol.conn
    transport: Any = protocol.transport
    tls_buffer = 0
    send_buffer = _buffered_bytes(transport)
    app_buffer = getattr(transport, "_appSendBuffer", None)
    if isinstance(app_buffer, list):
        tls_buffer = sum(len(chunk) for chunk in app_buffer)
        send_buffer = _buffered_bytes(getattr(transport, "transport", None))
    unsent = getattr(h2, "_data_to_send", b"")
    conn_state = ConnectionState(
        transport_paused=protocol.transport_paused,
        unflushed=len(unsent) if isinstance(unsent, bytes | bytearray) else 0,
        coalescer_depth=WRITES.depth,
        coalescer_pending=len(getattr(WRITES, "_pending", ())),
        send_buffer=send_buffer,
        tls_buffer=tls_buffer,
        connection_window=h2.outbound_flow_control_window,
        blocked=len(getattr(protocol, "_blocked", ())),
        unread=_unread_bytes(transport),
        lag=lag,
    )
    now = protocol.now()
    streams: list[StreamState] = []
    for stream in list(protocol.streams.values()):
        if stream.closed:
            continue
        try:
            window = h2.local_flow_control_window(stream.stream_id)
        except Exception:
            window = 0
        streams.append(StreamState(
            stream_id=stream.stream_id,
            age=now - stream.started,
            status=stream.status,
            buffered=len(stream.out),
            window=window,
            end_pending=stream.end_pending,
            producer=stream.producer is not None,
            producer_paused=stream.producer_paused,
            above_high=stream.out.above_high,
            request_paused=stream.request_paused,
            inbox=len(stream.inbox),
        ))
    return conn_state, streams


class _Tracker:
    """When each stuck state of one connection was first seen, and what was logged."""

    __slots__ = ("logged", "since")

    def __init__(self) -> None:
        self.since: dict[tuple[int, str], float] = {}
        self.logged: set[tuple[int, str]] = set()


class StallWatch:
    """Sweeps the connections of one reactor; runs only while there are some.

    :ivar stalls: bug findings logged so far (for tests and for whoever debugs a live process).
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._connections: weakref.WeakKeyDictionary[H2ServerProtocol, _Tracker] = (
            weakref.WeakKeyDictionary()
        )
        self._timer: IDelayedCall | None = None
        self._due = 0.0
        self.stalls = 0
        self.late_sweeps = 0

    def add(self, protocol: H2ServerProtocol) -> None:
        """Watch ``protocol`` until :meth:`remove` (or until it is garbage)."""
        self._connections[protocol] = _Tracker()
        if self._timer is None:
            self._schedule()

    def remove(self, protocol: H2ServerProtocol) -> None:
        """Stop watching ``protocol``; the timer stops with the last connection."""
        self._connections.pop(protocol, None)
        if not self._connections and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def sweep(self, lag: float = 0.0) -> None:
        """Look at every connection once (what the timer runs, ``lag`` seconds late)."""
        now = self._reactor.seconds()
        if lag >= LATE:
            self.late_sweeps += 1
            log.warn(
                "HTTP/2 stall watchdog ran {lag:.1f}s late: the reactor was busy that long "
                "({connections} client connections, {streams} streams open)",
                lag=lag,
                connections=len(self._connections),
                streams=sum(len(p.streams) for p in list(self._connections)),
            )
        for protocol, tracker in list(self._connections.items()):
            if protocol.closing:
                continue
            try:
                self._check(protocol, tracker, now, lag)
            except Exception:
                log.failure("stall watchdog failed on {peer}", peer=protocol.peer)

    def _schedule(self) -> None:
        self._due = self._reactor.seconds() + SWEEP_EVERY
        self._timer = self._reactor.callLater(SWEEP_EVERY, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        self.sweep(max(0.0, self._reactor.seconds() - self._due))
        if self._connections:
            self._schedule()

    def _check(
        self, protocol: H2ServerProtocol, tracker: _Tracker, now: float, lag: float
    ) -> None:
        conn, streams = observe(protocol, lag)
        current: dict[tuple[int, str], Finding] = {}
        # The client's side of a stall (no window, no response yet) is summed up in
        # one line per connection and kind; the gateway's own is logged per stream.
        counts: dict[str, int] = {}
        for finding in connection_findings(conn):
            kind = finding.kind
            if kind == "unread-input":
                kind = f"{kind}:{conn.unread}"
            current[(0, kind)] = finding
        if lag >= LATE:
            for key in [k for k in tracker.since if k[1].startswith("unread-input")]:
                del tracker.since[key]
        by_id = {}
        for stream in streams:
            by_id[stream.stream_id] = stream
            for finding in stream_findings(stream, conn):
                if finding.bug:
                    current[(stream.stream_id, finding.kind)] = finding
                else:
                    counts[finding.kind] = counts.get(finding.kind, 0) + 1
                    current[(stream.stream_id, finding.kind)] = finding
        since = tracker.since
        for key in list(since):
            if key not in current:
                del since[key]
                tracker.logged.discard(key)
        summary: dict[str, tuple[float, int]] = {}
        for key, finding in current.items():
            first = since.setdefault(key, now)
            if now - first < STALL_AFTER or key in tracker.logged:
                continue
            tracker.logged.add(key)
            stream_id = key[0]
            if stream_id and not finding.bug:
                seconds, oldest = summary.get(finding.kind, (0.0, stream_id))
                if now - first >= seconds:
                    summary[finding.kind] = (now - first, stream_id)
                continue
            if finding.bug:
                self.stalls += 1
            emit = log.error if finding.bug else log.info
            emit(
                "{peer} HTTP/2 stream {stream_id} stuck for {seconds:.1f}s ({kind}): "
                "{text}; stream {stream}; connection {conn}",
                peer=protocol.peer,
                stream_id=stream_id,
                seconds=now - first,
                kind=finding.kind,
                text=finding.text,
                stream=by_id.get(stream_id),
                conn=conn,
            )
        for kind, (seconds, oldest) in summary.items():
            log.info(
                "{peer} HTTP/2: {count} streams waiting ({kind}) for up to {seconds:.1f}s, "
                "e.g. stream {stream}; connection {conn}",
                peer=protocol.peer,
                count=counts.get(kind, 0),
                kind=kind,
                seconds=seconds,
                stream=by_id.get(oldest),
                conn=conn,
            )


_WATCHES: weakref.WeakKeyDictionary[Any, StallWatch] = weakref.WeakKeyDictionary()


def watch(protocol: H2ServerProtocol, reactor: IReactorTime) -> StallWatch:
    """Start watching ``protocol`` with the :class:`StallWatch` of ``reactor``."""
    found = _WATCHES.get(reactor)
    if found is None:
        found = _WATCHES[reactor] = StallWatch(reactor)
    found.add(protocol)
    return found
