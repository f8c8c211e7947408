# -*- test-case-name: tests.test_trust -*-
"""The certificate authorities an upstream's certificate must chain to, read once at start.

Shell module: reads files, and builds Twisted's (pyOpenSSL's) client TLS options.

Every TLS upstream -- the ``/api`` HTTP/1.1 pool, the HTTP/2 pool of the gRPC relay
and of the HTTP/2 broker client, and grpcio's broker channel -- gets its trust from
:func:`load_trust`, which reads a ``ca_file`` when the gateway is built:

* the file must hold at least one PEM certificate, and every PEM block in it must be
  a certificate that parses (text outside the blocks, such as the comments of a CA
  bundle, is ignored); a missing, unreadable or malformed file is a
  :class:`~eventgw.errors.ConfigError` naming the configuration key, so the gateway
  does not start;
* ALL the certificates of the bundle are trusted, by Twisted
  (:attr:`UpstreamTrust.trust_root`, ``trustRootFromCertificates``) and by grpcio
  (:attr:`UpstreamTrust.pem`, the same certificates re-encoded);
* no ``ca_file`` means the platform's trust store (Twisted's ``platformTrust``,
  grpcio's default roots).

Connections never read the file again: :func:`client_tls_options` builds the options
once per upstream and every connection shares them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl

from eventgw.errors import ConfigError
from eventgw.upstream.address import UpstreamAddress

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

__all__ = ["UpstreamTrust", "client_tls_options", "load_trust"]

# One PEM block (RFC 7468): its label, and everything up to the matching END line.
_BLOCK: Final = re.compile(rb"-----BEGIN ([^\r\n]*?)-----(.*?)-----END \1-----", re.DOTALL)
_BEGIN: Final = b"-----BEGIN "


class UpstreamTrust:
    """The CAs to verify an upstream against: a CA file's, or the platform's.

    :ivar source: the CA file, or ``None`` for the platform's trust store.
    :ivar certificates: the file's certificates, in file order (empty for the platform).
    :ivar pem: the same certificates as PEM, for grpcio's ``root_certificates``;
        ``None`` for grpcio's default roots.
    :ivar trust_root: a Twisted trust root over every certificate (or the platform's
        store), for ``optionsForClientTLS``.
    """

    __slots__ = ("certificates", "pem", "source", "trust_root")

    def __init__(
        self, source: str | None = None, certificates: tuple[x509.Certificate, ...] = ()
    ) -> None:
        self.source = source
        self.certificates = certificates
        self.trust_root: IOpenSSLTrustRoot
        if source is None:
            self.pem: bytes | None = None
            self.trust_root = ssl.platformTrust()
        else:
            self.pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
            self.trust_root = ssl.trustRootFromCertificates(
                [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certificates]
            )

    def __repr__(self) -> str:
        return f"<UpstreamTrust {self.source or 'platform'}: {len(self.certificates)} CAs>"


def load_trust(path: str | None, key: str) -> UpstreamTrust:
    """The trust for ``path`` (``None``: the platform's store).

    :param key: the configuration key that named the file, for the error.
    :raises ConfigError: the file cannot be read, holds no certificate, or holds a
        block that is not a certificate or does not parse.
    """
    if path is None:
        return UpstreamTrust()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror or e}") from None
    certificates: list[x509.Certificate] = []
    blocks = 0
    for number, match in enumerate(_BLOCK.finditer(data), start=1):
        blocks += 1
        label = match.group(1).decode("ascii", "replace")
        if label != "CERTIFICATE":
            raise ConfigError(
                key, f"{path}: PEM block {number} is {label!r}, not a CERTIFICATE"
            )
        try:
            certificates.append(x509.load_pem_x509_certificate(match.group(0)))
        except ValueError:
            raise ConfigError(
                key, f"{path}: PEM block {number} is not a valid certificate"
            ) from None
    if data.count(_BEGIN) != blocks:
        raise ConfigError(key, f"{path}: a PEM block has no matching END line")
    if not certificates:
        raise ConfigError(key, f"{path} holds no PEM certificate")
    return UpstreamTrust(path, tuple(certificates))


def client_tls_options(
    address: UpstreamAddress, trust: UpstreamTrust, protocols: list[bytes]
) -> IOpenSSLClientConnectionCreator:
    """Client TLS options verifying ``address``'s certificate (service-identity) against
    ``trust``, offering ALPN ``protocols``; build once, share across connections."""
    return ssl.optionsForClientTLS(
        address.server_name, trustRoot=trust.trust_root, acceptableProtocols=protocols
    )
