# -*- test-case-name: tests.test_accesslog -*-
"""One structured access-log event per exchange, the same for every protocol and flow.

Shell module (it logs through ``twisted.logger``).  The event carries stable field
names (``peer``, ``method``, ``path``, ``protocol``, ``status``, ``bytes_in``,
``bytes_out``, ``duration_ms``, ``request_id`` and whatever the target put in
``head.log_fields``: ``route``, ``upstream``, ``grpc_status``...), so observers can
filter and aggregate without parsing the text.  ``bytes_in`` and ``bytes_out`` count
body bytes on every protocol (DATA payload on HTTP/2, the de-chunked body on HTTP/1.1;
heads and framing are not counted).  Rendering is lazy: nothing is formatted unless an
observer writes the event out.

Every finished exchange passes here, logged or not, so this is also where the request
metrics are counted (:func:`eventgw.admin.metrics.record_exchange`).
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

from eventgw.admin.metrics import record_exchange
from eventgw.exchange import RequestHead

__all__ = ["count_exchange", "log_exchange", "log_protocol_error"]

access = Logger(namespace="eventgw.access")
errors = Logger(namespace="eventgw.protocol")

# The text of an access line, for observers that render events (twistd's log file).
# It is a %-format applied by _AccessText, not a ``{field}`` format: twisted.logger
# renders ``{field}`` formats with ``string.Formatter``, which parses the format and
# looks up every field on each event, a visible share of a relayed gRPC call's CPU (see
# bench/).  The event's own format is the single call field
# ``{access_text()}``, so rendering stays lazy (nothing is formatted unless an observer writes
# the event out) and costs one %-format.  The fields themselves are all in
# the event under their stable names, for observers that filter or aggregate.
_TEXT: Final = (
    "%s %s %s %s -> %s in=%s out=%s %.1fms route=%s upstream=%s grpc_status=%s"
    " request_id=%s"
)
# With access rules configured, the line ends with who called and what was decided.
_ACCESS_TEXT: Final = " principal=%s decision=%s"
_EVENT_FORMAT: Final = "{access_text()}"
_NAMED: Final = frozenset({"route", "upstream", "grpc_status", "request_id", "access_text"})


class _AccessText(tuple[object, ...]):
    """The values of one access line; calling it renders the line (see :data:`_TEXT`)."""

    __slots__ = ()

    def __call__(self) -> str:
        if len(self) == 12:
            return _TEXT % self
        return _TEXT % self[:12] + _ACCESS_TEXT % self[12:]


def count_exchange(
    head: RequestHead, status: int | str, duration_s: float
) -> None:
    """Count one finished exchange in the metrics, without logging it."""
    record_exchange(head.log_fields, head.protocol, status, duration_s)


def log_exchange(
    head: RequestHead,
    status: int | str,
    bytes_in: int,
    bytes_out: int,
    duration_s: float,
) -> None:
    """Emit the access event for one finished (or abandoned) exchange.

    ``status`` is the HTTP status sent, or a word (``"reset"``, ``"aborted"``) when no
    complete response went out.  The event's fields: ``peer``, ``method``, ``path``,
    ``protocol``, ``status``, ``bytes_in``, ``bytes_out`` (body bytes), ``duration_ms``,
    ``route``, ``upstream``, ``grpc_status``, ``request_id`` (``"-"`` when unset) and every other
    field the target put in ``head.log_fields``.
    """
    fields = head.log_fields
    record_exchange(fields, head.protocol, status, duration_s)
    peer = head.peer
    method = head.method.decode("latin-1")
    path = head.target.decode("latin-1")
    protocol = head.protocol
    duration_ms = duration_s * 1000.0
    route = fields.get("route", "-")
    upstream = fields.get("upstream", "-")
    grpc_status = fields.get("grpc_status", "-")
    request_id = fields.get("request_id", "-")
    extra = {k: v for k, v in fields.items() if k not in _NAMED}
    values: tuple[object, ...] = (
        peer, method, path, protocol, status, bytes_in, bytes_out, duration_ms,
        route, upstream, grpc_status, request_id,
    )
    decision = fields.get("decision")
    if decision is not None:
        values += (fields.get("principal") or "-", decision)
    access.info(
        _EVENT_FORMAT,
        access_text=_AccessText(values),
        peer=peer,
        method=method,
        path=path,
        protocol=protocol,
        status=status,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration_ms=duration_ms,
        route=route,
        upstream=upstream,
        grpc_status=grpc_status,
        request_id=request_id,
        **extra,
    )


def log_protocol_error(peer: str, protocol: str, reason: str) -> None:
    """One line for a connection or stream closed because of bad input."""
    errors.warn("{peer} {protocol} protocol error: {reason}", peer=peer, protocol=protocol,
                reason=reason)
