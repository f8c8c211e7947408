# -*- test-case-name: tests.test_accesslog -*-
"""One structured access-log event per exchange, the same for every protocol and flow.

Shell module (it logs through ``twisted.logger``).  The event carries stable field
names (``peer``, ``method``, ``path``, ``protocol``, ``status``, ``bytes_in``,
``bytes_out``, ``duration_ms`` and whatever the target put in ``head.log_fields``:
``route``, ``upstream``, ``grpc_status``...), so observers can filter and aggregate
without parsing the text.  Rendering is lazy: nothing is formatted unless an observer
writes the event out.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger

from eventgw.exchange import RequestHead

__all__ = ["log_exchange", "log_protocol_error"]

access = Logger(namespace="eventgw.access")
errors = Logger(namespace="eventgw.protocol")

_FORMAT: Final = (
    "{peer} {method} {path} {protocol} -> {status} in={bytes_in} out={bytes_out} "
    "{duration_ms:.1f}ms route={route} upstream={upstream} grpc_status={grpc_status}"
)


def log_exchange(
    head: RequestHead,
    status: int | str,
    bytes_in: int,
    bytes_out: int,
    duration_s: float,
) -> None:
    """Emit the access event for one finished (or abandoned) exchange.

    ``status`` is the HTTP status sent, or a word (``"reset"``, ``"aborted"``) when no
    complete response went out.
    """
    fields = head.log_fields
    access.info(
        _FORMAT,
        peer=head.peer,
        method=head.method.decode("latin-1"),
        path=head.target.decode("latin-1"),
        protocol=head.protocol,
        status=status,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        duration_ms=duration_s * 1000.0,
        route=fields.get("route", "-"),
        upstream=fields.get("upstream", "-"),
        grpc_status=fields.get("grpc_status", "-"),
        **{k: v for k, v in fields.items() if k not in ("route", "upstream", "grpc_status")},
    )


def log_protocol_error(peer: str, protocol: str, reason: str) -> None:
    """One line for a connection or stream closed because of bad input."""
    errors.warn("{peer} {protocol} protocol error: {reason}", peer=peer, protocol=protocol,
                reason=reason)
