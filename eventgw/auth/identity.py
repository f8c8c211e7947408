# -*- test-case-name: tests.test_auth_guard -*-
"""The identity a TLS client certificate stands for.

Core module: imports the standard library and ``cryptography``'s X.509 parser (no I/O).

The identity is the first URI subject alternative name, else the first DNS name, else
the subject's common name; ``None`` when the certificate has none of them, or when the
chosen name holds a control character (it goes into an upstream header as it is).  The TLS
layer has verified the certificate against ``auth.client_certificates.ca`` before any
of this is read.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["certificate_identity"]


def certificate_identity(certificate: x509.Certificate) -> str | None:
    """First URI SAN, else first DNS SAN, else subject CN (``None``: none of them)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    except ValueError:  # a malformed extension: fall back to the subject
        names = None
    if names is not None:
        for kind in (x509.UniformResourceIdentifier, x509.DNSName):
            values = names.get_values_for_type(kind)
            if values:
                return _printable(str(values[0]))
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        value = common[0].value
        return _printable(value if isinstance(value, str) else value.decode("utf-8", "replace"))
    return None


def _printable(name: str) -> str | None:
    return name if name and name.isprintable() else None
