"""Whether a new configuration can replace the running one without a restart.

Core module: compares two :class:`~eventgw.config.GatewayConfig` objects, nothing else.

The listening sockets are bound once, before the process (or the ``--workers``
supervisor) starts serving, and the number of worker processes is fixed by the
supervisor, and the log observer (``log.format``) is installed once, when logging
begins; a reload that changes any of them is refused whole.  Everything else (routes,
upstreams, gRPC allow/deny, limits, the certificate, the drain period, ``reload.watch``,
the access log on or off, the metrics switch) applies at once.
"""

from __future__ import annotations

from eventgw.config import GatewayConfig

__all__ = ["restart_needed"]


def restart_needed(old: GatewayConfig, new: GatewayConfig) -> str | None:
    """What in ``new`` a running process cannot take (``None``: nothing), worded as
    ``listen.tls 9001 -> 9002``, several joined by ``; ``."""
    changes = []
    for key in ("tls", "cleartext", "interface"):
        before, after = getattr(old.listen, key), getattr(new.listen, key)
        if before != after:
            changes.append(f"listen.{key} {before} -> {after}")
    if old.workers != new.workers:
        changes.append(f"workers {old.workers} -> {new.workers}")
    if old.log_format != new.log_format:
        changes.append(f"log.format {old.log_format} -> {new.log_format}")
    return "; ".join(changes) or None
