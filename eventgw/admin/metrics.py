# -*- test-case-name: tests.test_admin_metrics -*-
"""The gateway's Prometheus metrics: one registry, pre-bound children on the hot path.

Shell module (prometheus-client keeps its values behind locks, and in multiprocess mode
in memory-mapped files).  Every metric of the operations contract is defined here; the
flows record through a few functions (:func:`record_exchange` from the access log, the
one place every finished request passes; :func:`record_event`; the gauge children of
:func:`connections_gauge`; :func:`record_reload`; :func:`record_certificate`...).

Label values are bounded (:mod:`eventgw.admin.labels`): the hot path looks its
children up in small dictionaries keyed by what the request carried, and adds to plain
integers there that :func:`flush` hands to prometheus-client at each scrape (in a
``--workers`` worker: once a second), so a request costs a dictionary lookup and a few
additions, not a ``labels()`` call nor a locked write per value.

With ``--workers N`` the values live in prometheus-client's multiprocess mode: the
supervisor makes a fresh directory (:func:`prepare_multiprocess`) and passes it to the
workers as ``PROMETHEUS_MULTIPROC_DIR``; each worker writes its values to memory-mapped
files of its own there, and the supervisor's admin listener serves the sum over all of
them (:func:`scrape_registry`).  Counters of a worker that died stay in the sum (totals
never go backwards when a worker is restarted); its ``connections_open`` is dropped
(:func:`worker_exited`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client import values as _values
from twisted.logger import Logger

from eventgw.admin.labels import (
    OTHER,
    MethodLabels,
    code_label,
    grpc_code_name,
    protocol_label,
    route_label,
)

__all__ = [
    "METHODS",
    "REGISTRY",
    "configure",
    "connections_gauge",
    "connections_refused_counter",
    "counting",
    "flush",
    "multiprocess_dir",
    "prepare_multiprocess",
    "record_auth_denied",
    "record_certificate",
    "record_event",
    "record_exchange",
    "record_log_dropped",
    "record_ratelimited",
    "record_reload",
    "record_upstream_host",
    "scrape_registry",
    "set_upstream_host_health",
    "websocket_closed",
    "websocket_opened",
    "worker_exited",
]

log = Logger()

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_MAX_METHODS: Final = 500
# Durations from a fast local answer to a long gRPC stream.
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
# The upstream label of each route's target.
_UPSTREAM_OF_ROUTE: Final = {
    "api": "master_api_http", "grpc": "master_api_grpc", "events": "event_broker",
}

REGISTRY: Final = CollectorRegistry()

REQUESTS: Final = Counter(
    "eventgw_requests_total", "Requests answered, by route, protocol and HTTP status.",
    ["route", "protocol", "code"], registry=REGISTRY,
)
DURATION: Final = Histogram(
    "eventgw_request_duration_seconds", "Time from the request head to the end of the "
    "response, by route.", ["route"], buckets=DURATION_BUCKETS, registry=REGISTRY,
)
GRPC_CALLS: Final = Counter(
    "eventgw_grpc_calls_total", "gRPC calls relayed, by method and final status "
    "(methods the Master API has not answered are 'other').",
    ["grpc_service", "grpc_method", "grpc_code"], registry=REGISTRY,
)
EVENTS: Final = Counter(
    "eventgw_events_total", "CloudEvents requests, by mode and outcome.",
    ["mode", "outcome"], registry=REGISTRY,
)
UPSTREAM: Final = Counter(
    "eventgw_upstream_requests_total", "Requests sent to an upstream, by outcome "
    "(ok, error: 502/503 or UNAVAILABLE, timeout: 504 or DEADLINE_EXCEEDED, aborted).",
    ["upstream", "outcome"], registry=REGISTRY,
)
UPSTREAM_HOST: Final = Counter(
    "eventgw_upstream_host_events_total", "Per upstream host: requests and calls sent "
    "(request), failures (connect failure, reset, 502/503/504, UNAVAILABLE) and "
    "ejections (ejected).",
    ["upstream", "host", "event"], registry=REGISTRY,
)
UPSTREAM_HOST_HEALTHY: Final = Gauge(
    "eventgw_upstream_host_healthy", "Per upstream host: 1 while its active health checks "
    "pass (always 1 without checks).",
    ["upstream", "host"], registry=REGISTRY, multiprocess_mode="min",
)
CONNECTIONS: Final = Gauge(
    "eventgw_connections_open", "Open client connections, by listener.",
    ["listener"], registry=REGISTRY, multiprocess_mode="livesum",
)
RELOADS: Final = Counter(
    "eventgw_config_reloads_total", "Configuration loads (the first one included), by result.",
    ["result"], registry=REGISTRY,
)
LAST_RELOAD: Final = Gauge(
    "eventgw_config_last_reload_success_timestamp_seconds",
    "When the configuration was last loaded successfully (Unix time).",
    registry=REGISTRY, multiprocess_mode="max",
)
CERT_EXPIRY: Final = Gauge(
    "eventgw_tls_certificate_expiry_timestamp_seconds",
    "notAfter of the served TLS certificate (Unix time).",
    registry=REGISTRY, multiprocess_mode="mostrecent",
)
RATELIMITED: Final = Counter(
    "eventgw_ratelimited_total", "Requests refused by a rate limit, by route.",
    ["route"], registry=REGISTRY,
)
CONNECTIONS_REFUSED: Final = Counter(
    "eventgw_connections_refused_total",
    "Client connections closed at once because limits.max_connections were open, by listener.",
    ["listener"], registry=REGISTRY,
)
AUTH_DENIED: Final = Counter(
    "eventgw_auth_denied_total", "Requests refused by access control, by route and reason.",
    ["route", "reason"], registry=REGISTRY,
)
LOG_DROPPED: Final = Counter(
    "eventgw_log_lines_dropped_total", "Access-log lines dropped because the log output "
    "could not keep up (the log writer's buffer was full).",
    registry=REGISTRY,
)

GRPC_WEB_CALLS: Final = Counter(
    "eventgw_grpc_web_calls_total", "gRPC-Web calls relayed, by flavour (binary, text) "
    "and final status.", ["flavour", "grpc_code"], registry=REGISTRY,
)
WEBSOCKET_SESSIONS: Final = Counter(
    "eventgw_websocket_sessions_total", "WebSocket sessions relayed to the Master API "
    "(accepted by it), by client protocol.", ["protocol"], registry=REGISTRY,
)
WEBSOCKET_OPEN: Final = Gauge(
    "eventgw_websocket_sessions_open", "WebSocket sessions open now.",
    registry=REGISTRY, multiprocess_mode="livesum",
)
WEBSOCKET_BYTES: Final = Counter(
    "eventgw_websocket_bytes_total", "WebSocket bytes relayed, by direction (upstream: "
    "client to Master API; downstream: Master API to client).", ["direction"],
    registry=REGISTRY,
)
WEBSOCKET_DURATION: Final = Histogram(
    "eventgw_websocket_session_duration_seconds", "How long WebSocket sessions lasted.",
    buckets=(0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0, 86400.0),
    registry=REGISTRY,
)
_WS_SESSIONS: Final = {
    "HTTP/1.1": WEBSOCKET_SESSIONS.labels("HTTP/1.1"),
    "HTTP/2": WEBSOCKET_SESSIONS.labels("HTTP/2"),
}
_WS_UP: Final = WEBSOCKET_BYTES.labels("upstream")
_WS_DOWN: Final = WEBSOCKET_BYTES.labels("downstream")

_RELOAD_OK: Final = RELOADS.labels("success")
_RELOAD_FAILED: Final = RELOADS.labels("failure")

#: The gRPC methods with a label value of their own.
METHODS: Final = MethodLabels(DEFAULT_MAX_METHODS)

# Pre-bound children, and the counts not yet added to them.  The hot path adds to plain
# integers in a slot (a dictionary lookup and a few additions, the histogram bucket
# found by bisection); :func:`flush` adds the slots to the prometheus-client values: at
# every scrape of this process's registry, and once a second in a ``--workers`` worker
# (whose values are memory-mapped files, the costlier to write).  The keys are the raw
# values a request carries; every one of them comes from a small set (routes and words
# the targets set, a status number), and the slots stop growing at _CACHE_LIMIT all
# the same (what does not fit is recorded directly).
_CACHE_LIMIT: Final = 4096
_Child = object
# The histogram's upper bounds (the last one +Inf), for the bucket of a duration.
_BOUNDS: Final = (*DURATION_BUCKETS, float("inf"))


class _CountSlot:
    """A counter child and the increments not yet added to it."""

    __slots__ = ("child", "n")

    def __init__(self, child: _Child) -> None:
        self.child = child
        self.n = 0

    def flush(self) -> None:
        n = self.n
        if n:
            self.n = 0
            self.child.inc(n)  # type: ignore[attr-defined]


class _ExchangeSlot:
    """The requests counter and duration histogram children of one (route, protocol,
    code), and the requests not yet added to them."""

    __slots__ = ("buckets", "counter", "histogram", "n", "total")

    def __init__(self, counter: _Child, histogram: _Child) -> None:
        self.counter = counter
        self.histogram = histogram
        self.n = 0
        self.total = 0.0
        self.buckets = [0] * len(_BOUNDS)

    def flush(self) -> None:
        n = self.n
        if not n:
            return
        total, buckets = self.total, self.buckets
        self.n, self.total, self.buckets = 0, 0.0, [0] * len(_BOUNDS)
        self.counter.inc(n)  # type: ignore[attr-defined]
        histogram: Any = self.histogram
        # What Histogram.observe does, for n observations at once.
        histogram._sum.inc(total)
        for i, count in enumerate(buckets):
            if count:
                histogram._buckets[i].inc(count)


_exchange_children: dict[tuple[object, str, int | str], _ExchangeSlot] = {}
_grpc_children: dict[tuple[str, str, object], _CountSlot] = {}
_upstream_children: dict[tuple[str, str], _CountSlot] = {}
_event_children: dict[tuple[str, str], _CountSlot] = {}
_grpc_web_children: dict[tuple[object, object], _CountSlot] = {}
_GRPC_WEB_FLAVOURS: Final = frozenset({"binary", "text"})


def flush() -> None:
    """Add the counts recorded since the last flush to the prometheus-client values."""
    for exchange in list(_exchange_children.values()):
        exchange.flush()
    for slots in (
        _grpc_children, _upstream_children, _event_children, _grpc_web_children,
        _host_children,
    ):
        for slot in list(slots.values()):
            slot.flush()


# ``metrics.enabled``: whether the request metrics are counted at all.
_counting = True


def configure(max_methods: int, *, enabled: bool = True) -> None:
    """Apply ``metrics.max_methods`` (known methods beyond a lowered limit stay) and
    ``metrics.enabled`` (off: requests, gRPC calls, events are not counted)."""
    global _counting
    METHODS.limit = max_methods
    _counting = enabled


def counting() -> bool:
    """Whether the request metrics are counted (``metrics.enabled``)."""
    return _counting


def _exchange_slot(route: object, protocol: str, status: int | str) -> _ExchangeSlot:
    label = route_label(route)
    slot = _ExchangeSlot(
        REQUESTS.labels(label, protocol_label(protocol), code_label(status)),
        DURATION.labels(label),
    )
    if len(_exchange_children) < _CACHE_LIMIT:
        _exchange_children[(route, protocol, status)] = slot
    return slot


def _count_slot(
    slots: dict[Any, _CountSlot], key: Any, child: Callable[[], _Child]
) -> _CountSlot:
    slot = _CountSlot(child())
    if len(slots) < _CACHE_LIMIT:
        slots[key] = slot
    return slot


def _upstream_outcome(route: str, status: int | str, grpc_status: object) -> str:
    if not isinstance(status, int):
        return "aborted"
    if route == "api":
        if status in (502, 503):
            return "error"
        return "timeout" if status == 504 else "ok"
    if grpc_status == 14:
        return "error"
    if grpc_status == 4:
        return "timeout"
    return "ok"


def record_exchange(
    fields: dict[str, object], protocol: str, status: int | str, duration_s: float
) -> None:
    """Count one finished exchange (called by the access log with its fields)."""
    if not _counting:
        return
    route = fields.get("route")
    if route == "admin":
        return  # the admin listener's own requests (probes, scrapes) are not counted
    slot = _exchange_children.get((route, protocol, status))
    if slot is None:
        slot = _exchange_slot(route, protocol, status)
    slot.n += 1
    slot.total += duration_s
    slot.buckets[bisect_left(_BOUNDS, duration_s)] += 1
    if len(_exchange_children) >= _CACHE_LIMIT:
        slot.flush()  # a slot that may not be kept
    upstream = fields.get("upstream")
    if route == "grpc":
        path = fields.get("grpc_method")
        grpc_status = fields.get("grpc_status")
        service, method = METHODS.labels(path) if isinstance(path, str) else (OTHER, OTHER)
        key = (service, method, grpc_status)
        child = _grpc_children.get(key)
        if child is None:
            child = _count_slot(_grpc_children, key, lambda: GRPC_CALLS.labels(
                service, method, grpc_code_name(grpc_status)))
        child.n += 1
        if len(_grpc_children) >= _CACHE_LIMIT:
            child.flush()  # a slot that may not be kept
        flavour = fields.get("grpc_web")
        if flavour is not None:
            wkey = (flavour, grpc_status)
            wchild = _grpc_web_children.get(wkey)
            if wchild is None:
                wchild = _count_slot(_grpc_web_children, wkey, lambda: GRPC_WEB_CALLS.labels(
                    flavour if flavour in _GRPC_WEB_FLAVOURS else OTHER,
                    grpc_code_name(grpc_status)))
            wchild.n += 1
            if len(_grpc_web_children) >= _CACHE_LIMIT:
                wchild.flush()
    if upstream is not None and isinstance(route, str) and route in _UPSTREAM_OF_ROUTE:
        outcome = _upstream_outcome(route, status, fields.get("grpc_status"))
        ukey = (route, outcome)
        uchild = _upstream_children.get(ukey)
        if uchild is None:
            uchild = _count_slot(_upstream_children, ukey, lambda: UPSTREAM.labels(
                _UPSTREAM_OF_ROUTE[route], outcome))
        uchild.n += 1
        if len(_upstream_children) >= _CACHE_LIMIT:
            uchild.flush()


def grpc_answered(path: str, grpc_status: object) -> None:
    """The Master API answered the method ``path`` (with ``grpc_status``)."""
    if not _counting:
        return
    METHODS.answered(path, grpc_status)


_EVENT_MODES: Final = frozenset({"binary", "structured", "batch"})
_EVENT_OUTCOMES: Final = frozenset({"accepted", "rejected", "failed", "cancelled"})


def record_event(mode: str, outcome: str) -> None:
    """Count one ``/events`` request: mode binary, structured or batch; outcome accepted
    (the broker took it), rejected (refused before the call: bad event, too large),
    failed (the broker answered an error) or cancelled (the client went away)."""
    if not _counting:
        return
    key = (mode, outcome)
    child = _event_children.get(key)
    if child is None:
        child = _count_slot(_event_children, key, lambda: EVENTS.labels(
            mode if mode in _EVENT_MODES else OTHER,
            outcome if outcome in _EVENT_OUTCOMES else OTHER,
        ))
    child.n += 1
    if len(_event_children) >= _CACHE_LIMIT:
        child.flush()


#: Distinct (upstream, host) label pairs at most; hosts come from the configuration and
#: DNS (at most 64 an upstream), so this bound holds even across many reloads' changes.
MAX_UPSTREAM_HOSTS: Final = 256
_UPSTREAM_HOST_EVENTS: Final = frozenset({"request", "failure", "ejected"})
_host_children: dict[tuple[str, str, str], _CountSlot] = {}
_host_labels: set[tuple[str, str]] = set()


def _host_label(upstream: str, host: str) -> str:
    pair = (upstream, host)
    if pair in _host_labels:
        return host
    if len(_host_labels) < MAX_UPSTREAM_HOSTS:
        _host_labels.add(pair)
        return host
    return OTHER


def record_upstream_host(upstream: str, host: str, event: str) -> None:
    """Count a request, a failure or an ejection of one upstream host."""
    key = (upstream, host, event)
    child = _host_children.get(key)
    if child is None:
        child = _count_slot(_host_children, key, lambda: UPSTREAM_HOST.labels(
            upstream, _host_label(upstream, host),
            event if event in _UPSTREAM_HOST_EVENTS else OTHER,
        ))
    child.n += 1
    if len(_host_children) >= _CACHE_LIMIT:
        child.flush()


def set_upstream_host_health(upstream: str, host: str, healthy: bool) -> None:
    """The active health checks' verdict of one upstream host."""
    UPSTREAM_HOST_HEALTHY.labels(upstream, _host_label(upstream, host)).set(1 if healthy else 0)


def websocket_opened(protocol: str) -> None:
    """A WebSocket session was accepted by the Master API (client on ``protocol``)."""
    _WS_SESSIONS["HTTP/2" if protocol == "HTTP/2" else "HTTP/1.1"].inc()
    WEBSOCKET_OPEN.inc()


def websocket_closed(duration_s: float, bytes_up: int, bytes_down: int) -> None:
    """An accepted WebSocket session ended after ``duration_s`` seconds."""
    WEBSOCKET_OPEN.dec()
    WEBSOCKET_DURATION.observe(duration_s)
    if bytes_up:
        _WS_UP.inc(bytes_up)
    if bytes_down:
        _WS_DOWN.inc(bytes_down)


def record_log_dropped(count: int) -> None:
    """``count`` access-log lines were dropped (the log writer was behind)."""
    LOG_DROPPED.inc(count)


def connections_gauge(listener: str) -> Gauge:
    """The ``eventgw_connections_open`` child of ``listener`` (tls, cleartext, admin)."""
    return CONNECTIONS.labels(listener)


def record_reload(success: bool, now: float) -> None:
    """Count a configuration load; a good one also sets the last-success timestamp."""
    if success:
        _RELOAD_OK.inc()
        LAST_RELOAD.set(now)
    else:
        _RELOAD_FAILED.inc()


def record_certificate(pem_path: str) -> float | None:
    """Export the notAfter of the first certificate of ``pem_path``; returns it (Unix
    time), or None when the file cannot be read (logged, nothing exported)."""
    from cryptography import x509

    try:
        with open(pem_path, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as e:
        log.warn("cannot read the certificate's expiry from {path}: {error}",
                 path=pem_path, error=str(e))
        return None
    expiry = certificate.not_valid_after_utc.timestamp()
    CERT_EXPIRY.set(expiry)
    return expiry


def record_ratelimited(route: str) -> None:
    """Count a request refused by a rate limit."""
    RATELIMITED.labels(route_label(route)).inc()


def connections_refused_counter(listener: str) -> Counter:
    """The pre-bound ``eventgw_connections_refused_total`` child of a listener."""
    return CONNECTIONS_REFUSED.labels(listener)


def record_auth_denied(route: str, reason: str) -> None:
    """Count a request refused by access control (``reason``: a word from a fixed set)."""
    AUTH_DENIED.labels(route_label(route), reason).inc()


# --- several workers -----------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory this process's values are written to, when in multiprocess mode."""
    if _values.ValueClass is _values.MutexValue:
        return None
    return os.environ.get(MULTIPROC_ENV)


def prepare_multiprocess() -> str:
    """In the supervisor, before the workers start: a fresh directory for their values,
    set as ``PROMETHEUS_MULTIPROC_DIR`` for the processes started from now on (this
    process keeps its in-memory values).  Removed when the process exits."""
    path = tempfile.mkdtemp(prefix="eventgw-metrics-")
    os.environ[MULTIPROC_ENV] = path
    atexit.register(shutil.rmtree, path, True)
    return path


def scrape_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry, or (in the supervisor of
    ``--workers``) the sum over the workers' files."""
    path = os.environ.get(MULTIPROC_ENV)
    if path is None or multiprocess_dir() is not None:
        # A single process (or a worker serving its own values).
        flush()
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


def worker_exited(pid: int) -> None:
    """A worker is gone: drop its live gauges (its counters stay in the sum)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path is not None:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
