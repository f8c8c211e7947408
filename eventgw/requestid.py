# -*- test-case-name: tests.test_requestid -*-
"""The request id every exchange carries: the client's ``x-request-id`` or a new one.

Core module: imports the standard library and :mod:`eventgw.exchange` only (the new ids
come from ``os.urandom``, no clock).

A client's ``x-request-id`` is kept when it is a sane token: 1 to :data:`MAX_LENGTH`
characters of letters, digits and ``-._:/+=@``, so it can go into an HTTP header, into
gRPC metadata and into a log line as it is.  Anything else (too long, spaces, control
characters, several values) is replaced by a new id.  :func:`assign_request_id` runs
once per exchange, when the downstream protocol creates the exchange's writer and
before a target sees the head: it leaves exactly one sane ``x-request-id`` in the
head's headers, so every flow forwards it upstream the way it forwards the other
end-to-end headers (the ``/api`` proxy as an HTTP header, the gRPC relay and the
``/events`` broker calls as metadata), records it for the access log
(``log_fields["request_id"]``), and the writers send it back on every response.
"""

from __future__ import annotations

import os
import re
from typing import Final

from eventgw.exchange import Headers, RequestHead

__all__ = ["HEADER", "MAX_LENGTH", "assign_request_id", "is_sane", "new_request_id"]

HEADER: Final = b"x-request-id"
MAX_LENGTH: Final = 128
_SANE: Final = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,%d}" % MAX_LENGTH)


def new_request_id() -> bytes:
    """A fresh request id: 128 random bits as 32 hex digits."""
    return os.urandom(16).hex().encode("ascii")


def is_sane(value: bytes) -> bool:
    """Whether a client's ``x-request-id`` value is kept as it is."""
    return _SANE.fullmatch(value) is not None


def assign_request_id(head: RequestHead) -> bytes:
    """Give ``head`` its request id and return it (see the module docstring).

    The head's header list is replaced (never mutated) when the client's value is
    missing, repeated or not sane.
    """
    found: bytes | None = None
    count = 0
    for name, value in head.headers:
        if name == HEADER:
            count += 1
            if found is None:
                found = value
    if found is not None and count == 1 and is_sane(found):
        request_id = found
    else:
        request_id = new_request_id()
        headers: Headers = [(n, v) for n, v in head.headers if n != HEADER]
        headers.append((HEADER, request_id))
        head.headers = headers
    head.log_fields["request_id"] = request_id.decode("ascii")
    return request_id
