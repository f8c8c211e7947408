# -*- test-case-name: tests.test_relay -*-
"""The gRPC relay's stream bookkeeping: one downstream exchange paired with one
upstream HTTP/2 stream, as events in and actions out.

Core module: imports the standard library and eventgw's other core modules only --
never ``twisted``, ``grpc``, ``txaio``, ``socket`` or a clock.  Time arrives as
:meth:`RelayStream.deadline_expired`; the shell owns the timer that
:class:`StartTimer` asks for.

What lives here:

* the header rules for gRPC in both directions (:func:`upstream_request_headers`,
  :func:`split_upstream_headers`) and which methods may pass (:func:`refusal`);
* :class:`RelayStream`, the per-call state: who has finished, what the final status
  is, where the relay stands on flow control (request bytes queued towards the Master
  API, response bytes not yet acknowledged to it), and what to do when either side
  resets, fails or runs out of time.

The wire rules it applies (status tables, ``grpc-timeout``, ``grpc-message``, the
length prefix) are :mod:`eventgw.grpcwire`'s.  Messages are never decoded.  The only
look inside the DATA stream is a non-collecting :class:`~eventgw.grpcwire.MessageDecoder`,
which follows the 5-byte length prefixes so the relay knows whether a response is
between two messages -- the only point where it may still end the call with trailers
of its own instead of resetting it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from h2.errors import ErrorCodes

from eventgw.errors import GrpcStatus
from eventgw.exchange import Headers, RequestHead
from eventgw.grpcwire import (
    MessageDecoder,
    grpc_status_for_http,
    grpc_status_for_reset,
    parse_grpc_status,
    parse_grpc_timeout,
    status_trailers,
    trailers_only,
)
from eventgw.headers import CONNECTION_SPECIFIC
from eventgw.routing import MethodPolicy

__all__ = [
    "UPSTREAM_QUEUE_HIGH",
    "UPSTREAM_QUEUE_LOW",
    "AbortResponse",
    "Acknowledge",
    "Action",
    "CancelTimer",
    "EndResponse",
    "PauseRequestBody",
    "RelayStream",
    "ResetUpstream",
    "ResumeRequestBody",
    "SendUpstream",
    "StartTimer",
    "WriteBody",
    "WriteHead",
    "refusal",
    "split_upstream_headers",
    "upstream_request_headers",
]

# Request bytes the relay queues towards the Master API (its stream or connection
# window is closed) before it stops taking more from the client.  Envoy-style
# watermarks: pause above HIGH, resume at or below LOW, so a busy stream does not
# flap.  256 KiB keeps a 4 MiB upload moving at loopback speed while a stalled
# upstream costs at most this much (plus one client window) per stream.
UPSTREAM_QUEUE_HIGH: Final = 256 * 1024
UPSTREAM_QUEUE_LOW: Final = 64 * 1024

# Connection-specific headers (RFC 9113 section 8.2.2) and ``host`` (":authority"
# replaces it).  ``te`` is special: gRPC requires ``te: trailers`` and it is the one
# value HTTP/2 permits, so it is kept when it says exactly that.
_CONNECTION_SPECIFIC: Final = CONNECTION_SPECIFIC | {b"host", b"http2-settings"}

# --- pure helpers ---------------------------------------------------------------


def refusal(path: bytes, policy: MethodPolicy) -> str | None:
    """Why a method may not be relayed (the ``grpc-message``), or ``None`` if it may."""
    method = path.decode("utf-8", "replace")
    if policy.permits(method):
        return None
    return f"method {method} is not available through this gateway"


def upstream_request_headers(
    head: RequestHead, authority: bytes, scheme: bytes
) -> Headers:
    """The HEADERS to send upstream for ``head``: pseudo-headers first, then every
    header gRPC allows, then ``x-forwarded-for`` with the client's address appended."""
    headers: Headers = [
        (b":method", head.method),
        (b":scheme", scheme),
        (b":path", head.target),
        (b":authority", authority),
    ]
    forwarded: list[bytes] = []
    for name, value in head.headers:
        if name in _CONNECTION_SPECIFIC:
            continue
        if name == b"te":
            if value.strip().lower() == b"trailers":
                headers.append((b"te", b"trailers"))
            continue
        if name == b"x-forwarded-for":
            forwarded.append(value)
            continue
        headers.append((name, value))
    forwarded.append(head.peer.encode("ascii", "replace"))
    headers.append((b"x-forwarded-for", b", ".join(forwarded)))
    return headers


def split_upstream_headers(headers: Headers) -> tuple[int, Headers]:
    """Split an upstream header block (response head or trailers) into ``:status``
    (0 when absent or malformed) and the headers to pass on downstream: no
    pseudo-headers, no connection-specific ones, no ``te``."""
    status = 0
    kept: Headers = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":status":
                try:
                    status = int(value)
                except ValueError:
                    status = 0
            continue
        if name in _CONNECTION_SPECIFIC or name == b"te":
            continue
        kept.append((name, value))
    return status, kept


def _grpc_status_of(headers: Headers) -> int | None:
    for name, value in headers:
        if name == b"grpc-status":
            return parse_grpc_status(value)
    return None


# --- actions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Queue request bytes on the upstream stream (``end``: then half-close it)."""

    data: bytes
    end: bool = False


@dataclass(frozen=True, slots=True)
class ResetUpstream:
    """RST_STREAM the upstream stream with ``error_code``."""

    error_code: int


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Reopen the upstream's window by ``size`` flow-controlled bytes."""

    size: int


@dataclass(frozen=True, slots=True)
class WriteHead:
    """``writer.write_head(status, headers, end=end)``."""

    status: int
    headers: Headers
    end: bool = False


@dataclass(frozen=True, slots=True)
class WriteBody:
    """``writer.write_body(data)``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndResponse:
    """``writer.end(trailers)``."""

    trailers: Headers | None


@dataclass(frozen=True, slots=True)
class AbortResponse:
    """``writer.abort(error_code)``: reset the client's stream."""

    error_code: int


@dataclass(frozen=True, slots=True)
class PauseRequestBody:
    """``writer.pause_request_body()``."""


@dataclass(frozen=True, slots=True)
class ResumeRequestBody:
    """``writer.resume_request_body()``."""


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Call :meth:`RelayStream.deadline_expired` after ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """The deadline timer is no longer needed."""


Action = (
    SendUpstream
    | ResetUpstream
    | Acknowledge
    | WriteHead
    | WriteBody
    | EndResponse
    | AbortResponse
    | PauseRequestBody
    | ResumeRequestBody
    | StartTimer
    | CancelTimer
)

_PAUSE: Final = PauseRequestBody()
_RESUME: Final = ResumeRequestBody()
_CANCEL_TIMER: Final = CancelTimer()


class Phase(enum.Enum):
    """Where the response stands."""

    WAITING = "waiting"  # nothing sent to the client yet
    STREAMING = "streaming"  # response head sent, body and trailers may follow
    DONE = "done"  # the client's stream is finished (ended, aborted or gone)


# --- the per-call state -------------------------------------------------------------


class RelayStream:
    """One relayed gRPC call.

    Invariants: the client's stream is finished exactly once (a response ending in
    trailers or END_STREAM, a trailers-only answer, or an abort), and from then on
    every input yields no actions except acknowledgements and upstream resets; the
    upstream stream is reset whenever the call ends before the Master API finished it.

    The shell opens the upstream stream with :attr:`request_headers`, executes the
    returned actions in order, and reports what happens on both sides.

    :ivar grpc_status: the call's final status once known (for the access log).
    :ivar queued_upstream: request bytes accepted from the client but not yet sent
        upstream (the shell reports it through :meth:`upstream_buffered`).
    :ivar unacknowledged: response bytes received from upstream and not yet
        acknowledged to it; the upstream's stream window caps it.
    :ivar peak_queued_upstream: the largest ``queued_upstream`` seen.
    :ivar peak_unacknowledged: the largest ``unacknowledged`` seen.
    """

    __slots__ = (
        "_framing",
        "_request_paused",
        "_response_paused",
        "_timer",
        "_upstream_done",
        "bytes_down",
        "bytes_up",
        "grpc_status",
        "method",
        "peak_queued_upstream",
        "peak_unacknowledged",
        "phase",
        "queued_upstream",
        "request_ended",
        "request_headers",
        "timeout",
        "unacknowledged",
    )

    def __init__(self, head: RequestHead, authority: bytes, scheme: bytes) -> None:
        self.method = head.path.decode("utf-8", "replace")
        self.request_headers = upstream_request_headers(head, authority, scheme)
        raw_timeout = head.header(b"grpc-timeout")
        self.timeout = None if raw_timeout is None else parse_grpc_timeout(raw_timeout)
        self.phase = Phase.WAITING
        self.grpc_status: int | None = None
        self.request_ended = not head.body_expected
        self.queued_upstream = 0
        self.unacknowledged = 0
        self.peak_queued_upstream = 0
        self.peak_unacknowledged = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._framing = MessageDecoder(collect=False)
        self._request_paused = False
        self._response_paused = False
        self._upstream_done = False
        self._timer = False

    @property
    def finished(self) -> bool:
        """Whether the client's stream is finished."""
        return self.phase is Phase.DONE

    def start(self) -> list[Action]:
        """Actions right after the upstream stream was opened with the headers."""
        actions: list[Action] = []
        if self.phase is Phase.DONE:
            return actions
        if self.timeout is not None:
            self._timer = True
            actions.append(StartTimer(self.timeout))
        if self.request_ended:
            actions.append(SendUpstream(b"", end=True))
        return actions

    # -- client side -------------------------------------------------------------

    def request_data(self, data: bytes) -> list[Action]:
        """A piece of the request body from the client."""
        if self.phase is Phase.DONE or self._upstream_done:
            return []
        self.bytes_up += len(data)
        return [SendUpstream(data)]

    def request_ended_by_client(self) -> list[Action]:
        """The client half-closed its stream."""
        self.request_ended = True
        if self.phase is Phase.DONE or self._upstream_done:
            return []
        return [SendUpstream(b"", end=True)]

    def client_gone(self) -> list[Action]:
        """The client reset its stream or disconnected."""
        if self.phase is Phase.DONE:
            return []
        self.phase = Phase.DONE
        if self.grpc_status is None:
            self.grpc_status = GrpcStatus.CANCELLED
        actions = self._stop_timer()
        if not self._upstream_done:
            self._upstream_done = True
            actions.append(ResetUpstream(ErrorCodes.CANCEL))
        actions.extend(self._release())
        return actions

    def response_paused(self) -> list[Action]:
        """The client reads slowly: stop acknowledging the upstream's DATA."""
        self._response_paused = True
        return []

    def response_resumed(self) -> list[Action]:
        """The client caught up: acknowledge what was held back."""
        self._response_paused = False
        if self.unacknowledged and not self._upstream_done:
            size = self.unacknowledged
            self.unacknowledged = 0
            return [Acknowledge(size)]
        self.unacknowledged = 0
        return []

    # -- upstream side -------------------------------------------------------------

    def upstream_buffered(self, queued: int) -> list[Action]:
        """The upstream stream now holds ``queued`` request bytes it could not send."""
        self.queued_upstream = queued
        if queued > self.peak_queued_upstream:
            self.peak_queued_upstream = queued
        if self.phase is Phase.DONE:
            return []
        if not self._request_paused and queued > UPSTREAM_QUEUE_HIGH:
            self._request_paused = True
            return [_PAUSE]
        if self._request_paused and queued <= UPSTREAM_QUEUE_LOW:
            self._request_paused = False
            return [_RESUME]
        return []

    def upstream_headers(self, headers: Headers, end_stream: bool) -> list[Action]:
        """The response head (or a trailers-only response when ``end_stream``)."""
        if self.phase is not Phase.WAITING:
            return []
        status, kept = split_upstream_headers(headers)
        if status != 200:
            code = grpc_status_for_http(status)
            message = f"upstream answered HTTP status {status}"
            actions = self._reply(code, message)
            if not end_stream:
                self._upstream_done = True
                actions.append(ResetUpstream(ErrorCodes.CANCEL))
            else:
                self._upstream_done = True
            return actions
        if end_stream:
            self._upstream_done = True
            self.phase = Phase.DONE
            status_code = _grpc_status_of(kept)
            self.grpc_status = GrpcStatus.UNKNOWN if status_code is None else status_code
            return [*self._stop_timer(), WriteHead(200, kept, end=True)]
        self.phase = Phase.STREAMING
        return [WriteHead(200, kept)]

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> list[Action]:
        """Response bytes; ``flow_length`` counts padding too (what the window lost)."""
        if self.phase is not Phase.STREAMING:
            # Nothing to deliver them to: give the window back so the connection's
            # shared window is not eaten by a stream that is over.
            return [Acknowledge(flow_length)] if flow_length and not end_stream else []
        self.bytes_down += len(data)
        self._framing.feed(data)
        actions: list[Action] = [WriteBody(data)]
        if end_stream:
            # DATA with END_STREAM and no trailers: not valid gRPC, but pass it as is
            # and let the client judge.
            self._upstream_done = True
            self.phase = Phase.DONE
            self.grpc_status = GrpcStatus.UNKNOWN
            actions.extend(self._stop_timer())
            actions.append(EndResponse(None))
            actions.extend(self._release())
            return actions
        if not flow_length:
            return actions
        if self._response_paused:
            self.unacknowledged += flow_length
            if self.unacknowledged > self.peak_unacknowledged:
                self.peak_unacknowledged = self.unacknowledged
        else:
            if flow_length > self.peak_unacknowledged:
                self.peak_unacknowledged = flow_length
            actions.append(Acknowledge(flow_length))
        return actions

    def upstream_trailers(self, trailers: Headers) -> list[Action]:
        """The response's trailers, which end the upstream stream."""
        self._upstream_done = True
        if self.phase is not Phase.STREAMING:
            return []
        self.phase = Phase.DONE
        _, kept = split_upstream_headers(trailers)
        status_code = _grpc_status_of(kept)
        self.grpc_status = GrpcStatus.UNKNOWN if status_code is None else status_code
        return [*self._stop_timer(), EndResponse(kept), *self._release()]

    def upstream_reset(self, error_code: int) -> list[Action]:
        """The Master API reset the stream.

        Before the response head: a trailers-only answer with the status a gRPC client
        derives from that code.  After it: the client's stream is reset with the same
        code, so the client reaches the same status itself.
        """
        self._upstream_done = True
        if self.phase is Phase.DONE:
            return []
        code = grpc_status_for_reset(error_code)
        if self.phase is Phase.WAITING:
            return self._reply(code, f"upstream reset the stream (HTTP/2 error {error_code})")
        self.phase = Phase.DONE
        self.grpc_status = code
        return [*self._stop_timer(), AbortResponse(error_code), *self._release()]

    def upstream_failed(self, reason: str) -> list[Action]:
        """No upstream stream could be opened, or its connection was lost.

        The client is told the kind of failure only: ``reason`` names the Master API's
        address, and the shell logs it.
        """
        self._upstream_done = True
        if self.phase is Phase.DONE:
            return []
        return self._fail(GrpcStatus.UNAVAILABLE, "Master API unavailable")

    def deadline_expired(self) -> list[Action]:
        """The ``grpc-timeout`` has passed: cancel upstream, answer DEADLINE_EXCEEDED."""
        self._timer = False
        if self.phase is Phase.DONE:
            return []
        actions: list[Action] = []
        if not self._upstream_done:
            self._upstream_done = True
            actions.append(ResetUpstream(ErrorCodes.CANCEL))
        actions.extend(self._fail(GrpcStatus.DEADLINE_EXCEEDED, "deadline exceeded"))
        return actions

    # -- internals ---------------------------------------------------------------------

    def _release(self) -> list[Action]:
        """Give back the window credit held for a slow client once the call is over:
        the stream is closed or reset, so this only reopens the connection's shared
        window, which would otherwise shrink for good with every such call."""
        held = self.unacknowledged
        if not held:
            return []
        self.unacknowledged = 0
        return [Acknowledge(held)]

    def _stop_timer(self) -> list[Action]:
        if self._timer:
            self._timer = False
            return [_CANCEL_TIMER]
        return []

    def _reply(self, code: int, message: str) -> list[Action]:
        """Answer trailers-only (the head is not sent yet)."""
        self.phase = Phase.DONE
        self.grpc_status = code
        return [*self._stop_timer(), WriteHead(200, trailers_only(code, message), end=True)]

    def _fail(self, code: int, message: str) -> list[Action]:
        """End the call with ``code`` in whatever way the response's state allows."""
        if self.phase is Phase.WAITING:
            return self._reply(code, message)
        self.phase = Phase.DONE
        self.grpc_status = code
        actions = self._stop_timer()
        if self._framing.at_boundary:
            actions.append(EndResponse(status_trailers(code, message)))
        else:
            # Mid-message: trailers now would hand the client a truncated message.
            actions.append(AbortResponse(ErrorCodes.CANCEL))
        actions.extend(self._release())
        return actions
