# -*- test-case-name: tests.test_trust -*-
"""Where an upstream is: the authority sent to it and the name its certificate must carry.

Core module: imports only the standard library.

One upstream address (a host as the configuration gives it -- a DNS name, an IPv4
address, or an IPv6 address without brackets -- and a port) appears in two places on
the wire, and both are built here:

* the authority, ``Host`` for HTTP/1.1 and ``:authority`` for HTTP/2: the host
  (IPv6 in brackets, a non-ASCII name as its IDNA A-label), then ``:port`` -- left out
  when it is the scheme's default port (RFC 9110 section 7.2, what nginx's
  ``$proxy_host`` does), always written for gRPC (whose clients send ``host:port``);
* the TLS server name: the host itself, without brackets or port.  Twisted's
  ``optionsForClientTLS`` sends a DNS name as SNI and matches it against the
  certificate's DNS names; an IP address is matched against its IP address entries
  and sent as no SNI (RFC 6066 section 3 forbids literal addresses there).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["UpstreamAddress"]


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """An upstream's host and port, and the scheme's port that the authority omits.

    :ivar host: a DNS name, an IPv4 address or an IPv6 address (no brackets).
    :ivar port: the TCP port.
    :ivar default_port: the scheme's default port (80 for ``http``, 443 for ``https``),
        left out of :attr:`authority`; ``None`` to always write the port (gRPC).
    """

    host: str
    port: int
    default_port: int | None = None

    @classmethod
    def for_http(cls, scheme: str, host: str, port: int) -> UpstreamAddress:
        """An ``http://`` or ``https://`` upstream: the scheme's own port is implied."""
        return cls(host, port, 443 if scheme == "https" else 80)

    @property
    def authority(self) -> bytes:
        """``host[:port]`` for ``Host`` and ``:authority``."""
        host = self.host
        if ":" in host:
            text = f"[{host}]"
        elif host.isascii():
            text = host
        else:
            text = host.encode("idna").decode("ascii")
        if self.port != self.default_port:
            text = f"{text}:{self.port}"
        return text.encode("ascii")

    @property
    def server_name(self) -> str:
        """The name the upstream's certificate must carry (and, for a DNS name, SNI)."""
        return self.host
