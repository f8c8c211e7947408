"""Configuration parsing: DESIGN.md's keys, defaults, and one-line errors naming the key."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import MIN_EVENT_SIZE, load_config, load_config_file
from eventgw.errors import ConfigError

FULL = """
listen:
  tls: 9001
  cleartext: 9080
  interface: 127.0.0.1
tls:
  cert: certs/gateway.pem
  key: certs/gateway.key
master_api:
  http: http://127.0.0.1:8080
  grpc: 127.0.0.1:50051
event_broker:
  grpc: 127.0.0.1:50052
grpc:
  allow: ["/"]
  deny: ["/eventbroker."]
"""


class LoadConfigTests(SynchronousTestCase):
    def test_design_example(self) -> None:
        """The example of DESIGN.md parses into the documented meanings."""
        config = load_config(FULL)
        self.assertEqual(config.listen.tls, 9001)
        self.assertEqual(config.listen.cleartext, 9080)
        self.assertEqual(config.listen.interface, "127.0.0.1")
        self.assertTrue(config.tls.cert and config.tls.cert.endswith("certs/gateway.pem"))
        assert config.master_api_http is not None
        self.assertEqual(
            (config.master_api_http.scheme, config.master_api_http.host,
             config.master_api_http.port),
            ("http", "127.0.0.1", 8080),
        )
        self.assertEqual(config.master_api_http.connect_timeout, 5.0)
        assert config.master_api_grpc is not None
        self.assertEqual(config.master_api_grpc.address, "127.0.0.1:50051")
        self.assertFalse(config.master_api_grpc.tls)
        assert config.event_broker is not None
        self.assertEqual(config.event_broker.target, "127.0.0.1:50052")
        self.assertEqual(config.event_broker.deadline, 5.0)
        self.assertEqual(config.grpc_allow, ("/",))
        self.assertEqual(config.grpc_deny, ("/eventbroker.",))

    def test_defaults(self) -> None:
        """Only the Master API is required; the rest has documented defaults."""
        config = load_config("master_api: {http: 'https://api.internal'}")
        self.assertEqual(config.listen.tls, 9001)
        self.assertIsNone(config.listen.cleartext)
        self.assertIsNone(config.tls.cert)
        assert config.master_api_http is not None
        self.assertEqual(config.master_api_http.port, 443)
        self.assertIsNone(config.event_broker)
        self.assertEqual(config.grpc_deny, ("/eventbroker.",))
        self.assertGreaterEqual(config.limits.max_event_size, MIN_EVENT_SIZE)

    def test_grpc_pool_keys(self) -> None:
        """The gRPC upstream pool size and keepalive are configurable."""
        config = load_config(
            "master_api: {grpc: '127.0.0.1:1', grpc_connections: 2, keepalive_interval: 5}"
        )
        assert config.master_api_grpc is not None
        self.assertEqual(config.master_api_grpc.max_connections, 2)
        self.assertEqual(config.master_api_grpc.keepalive_interval, 5.0)

    def test_broker_client(self) -> None:
        """event_broker.client selects the broker client; grpcio by default."""
        base = "master_api: {http: 'http://h:1'}\n"
        default = load_config(base + "event_broker: {grpc: 'h:1'}")
        chosen = load_config(base + "event_broker: {grpc: 'h:1', client: h2}")
        assert default.event_broker is not None and chosen.event_broker is not None
        self.assertEqual((default.event_broker.client, chosen.event_broker.client),
                         ("grpcio", "h2"))

    def test_grpcs(self) -> None:
        """grpcs:// selects TLS towards the gRPC upstream."""
        config = load_config("master_api: {grpc: 'grpcs://api.internal:443'}")
        assert config.master_api_grpc is not None
        self.assertTrue(config.master_api_grpc.tls)
        self.assertEqual(config.master_api_grpc.port, 443)

    def assertConfigError(self, text: str, key: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_config(text)
        self.assertEqual(caught.exception.key, key)
        line = str(caught.exception)
        self.assertNotIn("\n", line)
        self.assertTrue(line.startswith(key + ": "), line)
        return line

    def test_bad_values_name_their_key(self) -> None:
        """Each kind of bad value stops the start with one line naming the key."""
        base = "master_api: {http: 'http://127.0.0.1:8080'}\n"
        cases = [
            ("listen: {tls: 70000}\n" + base, "listen.tls"),
            ("listen: {tls: 'x'}\n" + base, "listen.tls"),
            ("listen: {interface: 'nowhere'}\n" + base, "listen.interface"),
            ("listen: {bogus: 1}\n" + base, "listen.bogus"),
            ("bogus: 1\n" + base, "bogus"),
            ("master_api: {http: 'ftp://x'}", "master_api.http"),
            ("master_api: {http: 'http://x:99999'}", "master_api.http"),
            ("master_api: {http: 'http://x/base'}", "master_api.http"),
            ("master_api: {grpc: 'nohostport'}", "master_api.grpc"),
            ("master_api: {}", "master_api.http"),
            ("grpc: {allow: 'x'}\n" + base, "grpc.allow"),
            ("grpc: {deny: ['nope']}\n" + base, "grpc.deny[0]"),
            ("tls: {cert: a.pem}\n" + base, "tls.key"),
            ("limits: {max_event_size: 1000}\n" + base, "limits.max_event_size"),
            ("limits: {idle_timeout: -1}\n" + base, "limits.idle_timeout"),
            ("event_broker: {deadline: 2}\n" + base, "event_broker.grpc"),
            ("log: {access: 'yes'}\n" + base, "log.access"),
            ("event_broker: {grpc: 'h:1', client: grpc}\n" + base, "event_broker.client"),
            ("workers: 0\n" + base, "workers"),
        ]
        for text, key in cases:
            self.assertConfigError(text, key)

    def test_not_a_mapping(self) -> None:
        """A YAML document that is not a mapping names the source."""
        self.assertConfigError("- a\n- b\n", "<string>")

    def test_invalid_yaml(self) -> None:
        """Broken YAML names the line."""
        line = self.assertConfigError("master_api: {http: [\n", "<string>:2")
        self.assertIn("invalid YAML", line)

    def test_unreadable_file(self) -> None:
        """A missing config file is named."""
        with self.assertRaises(ConfigError) as caught:
            load_config_file("/nonexistent/gateway.yaml")
        self.assertEqual(caught.exception.key, "/nonexistent/gateway.yaml")

    def test_relative_cert_paths_follow_the_file(self) -> None:
        """tls.cert and tls.key are relative to the config file's folder."""
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "gateway.yaml")
            with open(path, "w") as f:
                f.write("tls: {cert: c.pem, key: k.pem}\nmaster_api: {http: 'http://h:1'}\n")
            config = load_config_file(path)
        self.assertEqual(config.tls.cert, os.path.join(folder, "c.pem"))
