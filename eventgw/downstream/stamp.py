# -*- test-case-name: tests.test_stamp -*-
"""The fields the gateway puts on every response it sends: ``date``, ``server`` and
``x-request-id``.

Shell module (it reads the clock).  RFC 9110 section 6.6.1: a server with a clock sends
``Date``; the gateway does on every response, its own (errors, ``/events`` answers) and
relayed ones, unless the response already has one (an upstream's ``Date`` is passed
through, as its ``Server`` is).  The ``Date`` text is formatted once per second and
cached.  ``x-request-id`` is the exchange's (:mod:`eventgw.requestid`); a flow that set
it already is not given a second one.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Final

from eventgw.exchange import Headers

__all__ = ["SERVER", "http_date", "stamp"]

SERVER: Final = b"eventgw"

_cache: list[object] = [-1, b""]


def http_date(now: float | None = None) -> bytes:
    """The IMF-fixdate of ``now`` (default: the current time), cached per second."""
    second = int(time.time() if now is None else now)
    if _cache[0] != second:
        _cache[0] = second
        _cache[1] = formatdate(second, usegmt=True).encode("ascii")
    value = _cache[1]
    assert isinstance(value, bytes)
    return value


def stamp(headers: Headers, request_id: bytes | None) -> Headers:
    """``headers`` with ``date``, ``server`` and ``x-request-id`` added where missing
    (a new list; ``headers`` itself is not changed)."""
    has_date = has_server = has_id = False
    for name, _ in headers:
        if name == b"date":
            has_date = True
        elif name == b"server":
            has_server = True
        elif name == b"x-request-id":
            has_id = True
    added: Headers = []
    if not has_date:
        added.append((b"date", http_date()))
    if not has_server:
        added.append((b"server", SERVER))
    if request_id is not None and not has_id:
        added.append((b"x-request-id", request_id))
    return [*headers, *added] if added else list(headers)
