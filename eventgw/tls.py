# -*- test-case-name: tests.test_tls -*-
"""TLS for the listening port: PEM loading, ALPN, and the generated development certificate.

Shell module.  The server offers ALPN ``h2`` then ``http/1.1``, TLS 1.2 and newer only,
with OpenSSL's secure default cipher list (AEAD suites with forward secrecy first),
which is what ``CertificateOptions`` gives when no ``acceptableCiphers`` are forced.

With ``auth.client_certificates`` the server asks every client for a certificate and
verifies it against that CA (``VERIFY_PEER``; ``VERIFY_FAIL_IF_NO_PEER_CERT`` too when
``required``): a certificate that does not verify fails the handshake even when none is
required.  :func:`peer_identity` reads the verified certificate's identity once per
connection for :attr:`~eventgw.exchange.RequestHead.client_identity`.

The listening port is given a :class:`SwappableServerTLS`: a reload replaces its
options, and the next handshake uses the new certificate and key while established
connections keep the ones they were made with.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from eventgw.auth.identity import certificate_identity
from eventgw.config import ClientCertificates
from eventgw.errors import ConfigError

__all__ = [
    "DevCertificate",
    "SwappableServerTLS",
    "ensure_dev_certificate",
    "peer_identity",
    "server_context_factory",
]

ALPN_PROTOCOLS = [b"h2", b"http/1.1"]


@dataclass(frozen=True, slots=True)
class DevCertificate:
    cert_path: str
    key_path: str
    fingerprint: str
    created: bool


def _fingerprint(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def ensure_dev_certificate(directory: str, now: datetime.datetime | None = None) -> DevCertificate:
    """Write (or reuse) a self-signed certificate for localhost in ``directory``."""
    cert_path = os.path.join(directory, "gateway-dev.pem")
    key_path = os.path.join(directory, "gateway-dev.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        current = now or datetime.datetime.now(datetime.UTC)
        if cert.not_valid_after_utc > current + datetime.timedelta(days=1):
            return DevCertificate(cert_path, key_path, _fingerprint(cert), False)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ConfigError("tls.dev_cert_dir", f"cannot create {directory}: {e.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventgw development")])
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return DevCertificate(cert_path, key_path, _fingerprint(cert), True)


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None


def server_context_factory(
    cert_path: str, key_path: str, clients: ClientCertificates | None = None
) -> ssl.CertificateOptions:
    """``CertificateOptions`` for the listening port: the chain, the key, ALPN h2/http1.1,
    and with ``clients`` the CA client certificates are verified against."""
    cert_pem = _read(cert_path, "tls.cert")
    key_pem = _read(key_path, "tls.key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError("tls.cert", f"{cert_path} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError("tls.key", f"{key_path} holds no unencrypted PEM private key") from None
    try:
        # pyOpenSSL takes cryptography's objects directly (its own X509/PKey wrappers
        # are deprecated); CertificateOptions hands them through unchanged, though its
        # annotations still name the old types.
        options = ssl.CertificateOptions(
            privateKey=private_key,  # type: ignore[arg-type]
            certificate=chain[0],  # type: ignore[arg-type]
            extraCertChain=chain[1:],  # type: ignore[arg-type]
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            acceptableProtocols=ALPN_PROTOCOLS,
        )
        # Build the context now so a key that does not match the certificate fails at
        # start, naming the file, instead of at the first handshake.
        context = options.getContext()
    except SSL.Error as e:
        raise ConfigError("tls.key", f"{key_path} does not match {cert_path}: {e}") from None
    if clients is not None:
        _verify_clients(context, clients)
    return options


def _verify_clients(context: SSL.Context, clients: ClientCertificates) -> None:
    """Ask for a client certificate and verify it against ``clients.ca``."""
    key = "auth.client_certificates.ca"
    pem = _read(clients.ca, key)
    try:
        if not x509.load_pem_x509_certificates(pem):
            raise ValueError
    except ValueError:
        raise ConfigError(key, f"{clients.ca} holds no PEM certificate") from None
    try:
        context.load_verify_locations(clients.ca)
        # The CA names offered in the CertificateRequest, so clients pick the right one.
        context.load_client_ca(clients.ca.encode())
    except SSL.Error as e:
        raise ConfigError(key, f"cannot use {clients.ca}: {e}") from None
    mode = SSL.VERIFY_PEER
    if clients.required:
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    context.set_verify(mode)
    # Session resumption with client verification needs a session id context.
    context.set_session_id(b"eventgw")


def peer_identity(transport: object) -> str | None:
    """The verified client certificate's identity on a TLS transport (``None``: no
    certificate, or not TLS)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except (SSL.Error, AttributeError):
        return None
    if certificate is None:
        return None
    to_cryptography = getattr(certificate, "to_cryptography", None)
    if to_cryptography is not None:
        certificate = to_cryptography()
    if not isinstance(certificate, x509.Certificate):
        return None
    return certificate_identity(certificate)


@implementer(IOpenSSLServerConnectionCreator)
class SwappableServerTLS:
    """The TLS port's connection creator, whose certificate can be replaced.

    :ivar options: what new connections are made with; assign new options (from
        :func:`server_context_factory`) to serve another certificate from the next
        handshake on.
    """

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        # CertificateOptions builds its context once and hands out that one.
        return SSL.Connection(self.options.getContext(), None)
