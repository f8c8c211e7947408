# -*- test-case-name: tests.test_sniff -*-
"""Which protocol a new connection speaks, from its ALPN token or its first bytes.

Core module: imports only the standard library.

On TLS the ALPN result decides: ``h2`` is HTTP/2, anything else (``http/1.1``, no
ALPN at all) is HTTP/1.1.  On the cleartext listener the HTTP/2 connection preface
(RFC 9113 section 3.4, "prior knowledge", what gRPC clients send) means HTTP/2 and
anything else HTTP/1.1; the decision is taken as soon as the bytes seen so far stop
being a prefix of the preface, the way h2's ``frame_buffer.py`` checks the preface.

On the TLS port a first byte that is an upper-case ASCII letter is plain HTTP (a
request line's method) sent to the wrong port: every TLS record starts with a content
type byte (20 to 23, a handshake being 22) and an SSLv2 hello with a byte of 128 or
more, so one byte decides (:func:`is_plain_http`).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["PREFACE", "Protocol", "by_alpn", "by_first_bytes", "is_plain_http"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Protocol(enum.Enum):
    HTTP1 = "http/1.1"
    H2 = "h2"
    NEED_MORE = "need-more"


def by_alpn(negotiated: bytes | str | None) -> Protocol:
    """The protocol for an ALPN result (``None`` when the client offered no ALPN)."""
    if isinstance(negotiated, str):
        negotiated = negotiated.encode("ascii", "replace")
    return Protocol.H2 if negotiated == b"h2" else Protocol.HTTP1


def by_first_bytes(data: bytes) -> Protocol:
    """The protocol for the first bytes of a cleartext connection.

    ``NEED_MORE`` while ``data`` is a proper prefix of the preface (including empty).
    """
    if data.startswith(PREFACE):
        return Protocol.H2
    if PREFACE.startswith(data):
        return Protocol.NEED_MORE
    return Protocol.HTTP1


def is_plain_http(data: bytes) -> bool:
    """Whether the first bytes of a connection to the TLS port are cleartext HTTP/1.x
    rather than a TLS record (see the module docstring)."""
    return data[:1].isalpha() and data[:1].isupper()
