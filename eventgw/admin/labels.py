# -*- test-case-name: tests.test_admin_metrics -*-
"""Bounded label values for the metrics: what a client sends never makes a new series.

Core module: standard library only.  Routes, protocols and status codes come from small
fixed sets (anything else folds into one value); a gRPC method gets a label value of its
own only once the Master API has answered it with something other than UNIMPLEMENTED,
and never more than ``metrics.max_methods`` of them -- every other method, including
every method a client invents, is ``("other", "other")``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "OTHER",
    "ROUTES",
    "MethodLabels",
    "code_label",
    "grpc_code_name",
    "protocol_label",
    "route_label",
    "split_method",
]

OTHER: Final = "other"
ROUTES: Final = frozenset({"api", "events", "grpc", "none"})

# grpc-status numbers -> names (the status codes of the gRPC protocol).
_GRPC_CODE_NAMES: Final = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)
UNIMPLEMENTED: Final = 12


def route_label(route: object) -> str:
    """The ``route`` label: ``api``, ``events``, ``grpc`` or ``none``."""
    return route if isinstance(route, str) and route in ROUTES else "none"


def protocol_label(protocol: str) -> str:
    """``HTTP/2`` or ``HTTP/1.1`` (HTTP/1.0 counts as HTTP/1.1)."""
    return "HTTP/2" if protocol == "HTTP/2" else "HTTP/1.1"


def code_label(status: int | str) -> str:
    """The numeric HTTP status as text; a word (``reset``, ``aborted``) as itself, any
    other word folded into ``other``."""
    if isinstance(status, int):
        return str(status) if 100 <= status <= 599 else OTHER
    return status if status in ("reset", "aborted") else OTHER


def grpc_code_name(code: object) -> str:
    """A grpc-status number as its name (``0`` -> ``OK``); anything else ``UNKNOWN``."""
    if isinstance(code, int) and 0 <= code < len(_GRPC_CODE_NAMES):
        return _GRPC_CODE_NAMES[code]
    return "UNKNOWN"


def split_method(path: str) -> tuple[str, str] | None:
    """``/pkg.Service/Method`` -> ``("pkg.Service", "Method")``, or None if not that shape."""
    if not path.startswith("/"):
        return None
    service, sep, method = path[1:].partition("/")
    if not sep or not service or not method or "/" in method:
        return None
    return service, method


class MethodLabels:
    """The gRPC methods that have a label value of their own (at most ``limit``).

    :ivar limit: the most methods learned (``metrics.max_methods``).
    """

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: dict[str, tuple[str, str]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def answered(self, path: str, grpc_status: object) -> None:
        """The Master API answered ``path`` with ``grpc_status``: anything but
        UNIMPLEMENTED makes it a known method, while there is room."""
        if grpc_status == UNIMPLEMENTED or path in self._known:
            return
        if len(self._known) >= self.limit:
            return
        split = split_method(path)
        if split is not None:
            self._known[path] = split

    def labels(self, path: str) -> tuple[str, str]:
        """``(grpc_service, grpc_method)`` for ``path``: its own, or ``("other", "other")``."""
        return self._known.get(path, (OTHER, OTHER))
