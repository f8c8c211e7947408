"""The development certificate and the server TLS options (ALPN, TLS 1.2+)."""

from __future__ import annotations

import os
import tempfile

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import ConfigError
from eventgw.tls import ALPN_PROTOCOLS, ensure_dev_certificate, server_context_factory


class DevCertificateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-tls-")

    def test_created_then_reused(self) -> None:
        """The first call writes a localhost certificate; the second reuses it."""
        first = ensure_dev_certificate(self.folder)
        self.assertTrue(first.created)
        with open(first.cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("localhost", names.get_values_for_type(x509.DNSName))
        self.assertEqual(os.stat(first.key_path).st_mode & 0o777, 0o600)
        second = ensure_dev_certificate(self.folder)
        self.assertFalse(second.created)
        self.assertEqual(first.fingerprint, second.fingerprint)

    def test_context_offers_alpn(self) -> None:
        """The server options carry ALPN h2 then http/1.1."""
        dev = ensure_dev_certificate(self.folder)
        options = server_context_factory(dev.cert_path, dev.key_path)
        self.assertEqual(ALPN_PROTOCOLS, [b"h2", b"http/1.1"])
        self.assertEqual(options._acceptableProtocols, ALPN_PROTOCOLS)

    def test_unreadable_cert_names_key(self) -> None:
        """A missing certificate file is a ConfigError naming tls.cert."""
        with self.assertRaises(ConfigError) as caught:
            server_context_factory("/nonexistent.pem", "/nonexistent.key")
        self.assertEqual(caught.exception.key, "tls.cert")

    def test_garbage_cert_names_key(self) -> None:
        """A file that holds no certificate is named."""
        path = os.path.join(self.folder, "bad.pem")
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(ConfigError) as caught:
            server_context_factory(path, path)
        self.assertEqual(caught.exception.key, "tls.cert")

    def test_mismatched_key(self) -> None:
        """A key that does not belong to the certificate fails at start."""
        one = ensure_dev_certificate(os.path.join(self.folder, "one"))
        two = ensure_dev_certificate(os.path.join(self.folder, "two"))
        with self.assertRaises(ConfigError) as caught:
            server_context_factory(one.cert_path, two.key_path)
        self.assertEqual(caught.exception.key, "tls.key")
