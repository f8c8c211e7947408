# -*- test-case-name: tests.test_tlsdirect -*-
"""The server-side TLS wrapper: each write encrypted and handed to TCP at once.

Shell module: it wraps Twisted's TLS protocol (``twisted.protocols.tls``).

Twisted's default TLS transport (``BufferingTLSTransport``) holds every write back
for a reactor turn (a ``callLater(0)`` per burst of writes) so that many small writes
become one TLS record.  The gateway's protocols batch their output themselves -- the
HTTP/1.1 server writes once per read, per finished response or per reactor turn, the
HTTP/2 server once per read or timer -- so that wait buys nothing and costs a timer
and a turn per response.  :class:`DirectTLSFactory` builds the plain
``TLSMemoryBIOProtocol``, which encrypts a write at once (16 KiB records) and passes
the records to the TCP transport, which queues them until the socket is writable, as
for a cleartext connection.  Back-pressure, ``loseConnection`` (TLS close_notify after
the last byte) and ALPN are the plain protocol's, unchanged.
"""

from __future__ import annotations

from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

__all__ = ["DirectTLSFactory"]


class DirectTLSFactory(TLSMemoryBIOFactory):
    """:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` whose connections write
    through (no aggregation of small writes for a reactor turn)."""

    protocol = TLSMemoryBIOProtocol
