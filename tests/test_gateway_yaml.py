"""The example ``gateway.yaml`` at the root: it validates, and fronts the bundled demo."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from demo.launch import parse_args
from eventgw.config import load_config_file
from eventgw.tls import ensure_dev_certificate
from tests.test_tap import ROOT, run_twistd

EXAMPLE = os.path.join(ROOT, "gateway.yaml")
SCHEMA_LINE = "# yaml-language-server: $schema=./eventgw/config/gateway.schema.json"


class GatewayYamlTests(SynchronousTestCase):
    def setUp(self) -> None:
        # A copy, so that the development certificate (relative to the file) is
        # written in a temporary folder, not in the checkout.
        self.folder = tempfile.mkdtemp(prefix="eventgw-example-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        self.copy = os.path.join(self.folder, "gateway.yaml")
        shutil.copy(EXAMPLE, self.copy)

    def test_schema_line(self) -> None:
        """The first line points the YAML language server at the committed schema."""
        with open(EXAMPLE) as f:
            self.assertEqual(f.readline().rstrip("\n"), SCHEMA_LINE)
        self.assertTrue(os.path.exists(os.path.join(ROOT, "eventgw/config/gateway.schema.json")))

    def test_check_with_the_development_certificate(self) -> None:
        """``twistd eventgw --config gateway.yaml --check`` is ok as the file stands, the
        development certificate generated next to the file."""
        result = run_twistd("--config", self.copy, "--check")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "configuration ok\n", ""))
        self.assertTrue(os.path.exists(os.path.join(self.folder, "run/dev-cert/gateway-dev.pem")))

    def test_check_with_certificate_files(self) -> None:
        """With its commented tls.cert and tls.key lines pointing at real files, the
        file is ok too."""
        dev = ensure_dev_certificate(os.path.join(self.folder, "certs"))
        with open(self.copy) as f:
            text = f.read()
        text = text.replace("  # cert: /etc/eventgw/gateway.pem", f"  cert: {dev.cert_path}")
        text = text.replace("  # key: /etc/eventgw/gateway.key", f"  key: {dev.key_path}")
        with open(self.copy, "w") as f:
            f.write(text)
        config = load_config_file(self.copy, environ={})
        self.assertEqual((config.tls.cert, config.tls.key), (dev.cert_path, dev.key_path))
        result = run_twistd("--config", self.copy, "--check")
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "configuration ok\n", ""))

    def test_fronts_the_demo_beside_the_demo_gateway(self) -> None:
        """Its upstreams are the demo services' default ports, and its own ports are
        not the demo gateway's, so both gateways can run together."""
        demo = parse_args([])
        config = load_config_file(EXAMPLE, environ={})
        assert config.master_api_http and config.master_api_grpc and config.event_broker
        self.assertEqual(config.master_api_http.url, f"http://127.0.0.1:{demo.http_port}")
        self.assertEqual(config.master_api_grpc.address, f"127.0.0.1:{demo.grpc_port}")
        self.assertEqual(config.event_broker.target, f"127.0.0.1:{demo.broker_port}")
        self.assertEqual(config.tls.dev_cert_dir, os.path.join(ROOT, "run/dev-cert"))
        ours = {config.listen.tls, config.listen.cleartext}
        self.assertFalse(ours & {demo.port, demo.cleartext_port})

    def test_environment_variables(self) -> None:
        """The variables it names replace their defaults."""
        config = load_config_file(EXAMPLE, environ={
            "EVENTGW_TLS_PORT": "8443", "EVENTGW_CLEARTEXT_PORT": "", "EVENTGW_WORKERS": "2",
            "MASTER_API_URL": "https://api.internal", "EVENT_BROKER_GRPC": "grpcs://b:443",
        })
        assert config.master_api_http and config.event_broker
        self.assertEqual((config.listen.tls, config.listen.cleartext, config.workers),
                         (8443, 9081, 2))
        self.assertEqual(config.master_api_http.url, "https://api.internal")
        self.assertTrue(config.event_broker.tls)
