"""Configuration: the documented keys and defaults, one-line errors naming the key, the schema."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import (
    MIN_EVENT_SIZE,
    GatewayConfig,
    Override,
    load_config,
    load_config_file,
)
from eventgw.config import schema as config_schema
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
        """The documented example parses into the documented meanings."""
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
            ("log: {format: xml}\n" + base, "log.format"),
            ("metrics: {enabled: 'no'}\n" + base, "metrics.enabled"),
            ("event_broker: {grpc: 'h:1', client: grpc}\n" + base, "event_broker.client"),
            ("workers: 0\n" + base, "workers"),
        ]
        for text, key in cases:
            self.assertConfigError(text, key)

    def test_log_format_and_metrics_switch(self) -> None:
        """log.format (text by default, or json) and metrics.enabled (true by default)."""
        base = "master_api: {http: 'http://127.0.0.1:8080'}\n"
        default = load_config(base)
        self.assertEqual((default.log_format, default.metrics.enabled), ("text", True))
        chosen = load_config(base + "log: {format: json}\nmetrics: {enabled: false}\n")
        self.assertEqual((chosen.log_format, chosen.metrics.enabled), ("json", False))
        line = self.assertConfigError("log: {format: xml}\n" + base, "log.format")
        self.assertIn("text, json", line)

    def test_not_a_mapping(self) -> None:
        """A YAML document that is not a mapping names the source."""
        self.assertConfigError("- a\n- b\n", "<string>")

    def test_invalid_yaml(self) -> None:
        """Broken YAML names the line."""
        line = self.assertConfigError("master_api: {http: [\n", "<string>:2")
        self.assertIn("invalid YAML", line)

    def test_unprintable_character(self) -> None:
        """A control character PyYAML refuses before parsing is a ConfigError too."""
        line = self.assertConfigError("\x1f", "<string>")
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

    def test_every_relative_path_follows_the_file(self) -> None:
        """The CA bundles and a written tls.dev_cert_dir are relative to the file's
        folder too; absolute paths are kept; the default dev_cert_dir is the working
        directory's."""
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "gateway.yaml")
            with open(path, "w") as f:
                f.write("tls: {dev_cert_dir: dev}\n"
                        "master_api: {http: 'https://h:1', grpc: 'grpcs://h:2', ca_file: ca.pem}\n"
                        "event_broker: {grpc: 'grpcs://b:1', ca_file: /etc/ca.pem}\n")
            config = load_config_file(path)
            with open(path, "w") as f:
                f.write("master_api: {http: 'http://h:1'}\n")
            default = load_config_file(path)
        assert config.master_api_http and config.master_api_grpc and config.event_broker
        self.assertEqual(config.tls.dev_cert_dir, os.path.join(folder, "dev"))
        self.assertEqual(config.master_api_http.ca_file, os.path.join(folder, "ca.pem"))
        self.assertEqual(config.master_api_grpc.ca_file, os.path.join(folder, "ca.pem"))
        self.assertEqual(config.event_broker.ca_file, "/etc/ca.pem")
        self.assertEqual(default.tls.dev_cert_dir, "./run/dev-cert")


BASE: dict[str, Any] = {"master_api": {"http": "http://127.0.0.1:8080"}}

# A value of the wrong type for each JSON Schema type a key may have.
WRONG_TYPED: dict[str, object] = {
    "integer": "12",
    "number": "fast",
    "boolean": "yes",
    "string": 12345,
    "array": "/not-a-list",
    "object": ["not", "a", "mapping"],
}


def schema_keys() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every key of the published schema, dotted, with its property schema."""
    schema = config_schema.schema()
    for name, prop in schema["properties"].items():
        yield name, prop
        for ref in (alt.get("$ref") for alt in prop.get("anyOf", [])):
            if ref:
                section = schema["$defs"][ref.rsplit("/", 1)[1]]
                for key, inner in section["properties"].items():
                    yield f"{name}.{key}", inner


def json_type(prop: dict[str, Any]) -> str:
    """The one non-null JSON type a key holds (``object`` for a section)."""
    if "enum" in prop:
        return "string"
    types = {alt.get("type", "object") for alt in prop.get("anyOf", [prop])} - {"null"}
    if types == {"string", "array"}:
        return "string"  # one address, or a list of them
    assert len(types) == 1, prop
    return types.pop()


def with_key(key: str, value: object) -> str:
    """The base configuration, plus what a section needs, with ``key`` set to ``value``."""
    document: dict[str, Any] = {"master_api": dict(BASE["master_api"])}
    section, _, name = key.partition(".")
    if name:
        inner = document.setdefault(section, {})
        if section == "event_broker":
            inner["grpc"] = "127.0.0.1:50052"
        inner[name] = value
    else:
        document[section] = value
    return yaml.safe_dump(document)


class ErrorLineTests(SynchronousTestCase):
    """Every key's bad value is one line naming exactly that key."""

    def error_line(self, text: str, **kwargs: Any) -> ConfigError:
        with self.assertRaises(ConfigError) as caught:
            load_config(text, **kwargs)
        line = str(caught.exception)
        self.assertNotIn("\n", line)
        self.assertNotIn("pydantic", line.lower())
        self.assertTrue(line.startswith(caught.exception.key + ": "), line)
        return caught.exception

    def test_every_key_of_the_schema_refuses_a_wrong_type(self) -> None:
        """Each key of the schema, given a value of the wrong type, names itself."""
        keys = dict(schema_keys())
        self.assertGreater(len(keys), 30)
        for key, prop in keys.items():
            value = WRONG_TYPED[json_type(prop)]
            error = self.error_line(with_key(key, value))
            self.assertEqual(error.key, key, str(error))
            expected = "expected a mapping" if json_type(prop) == "object" else "expected "
            self.assertTrue(error.message.startswith(expected), str(error))
            self.assertIn(repr(value), error.message)

    def test_every_section_refuses_an_unknown_key(self) -> None:
        """An unknown key in any section names itself and lists the known ones."""
        for key, prop in schema_keys():
            if json_type(prop) == "object":
                error = self.error_line(with_key(f"{key}.tsl", 1))
                self.assertEqual(error.key, f"{key}.tsl")
                self.assertTrue(error.message.startswith("unknown key (known: "), str(error))

    def test_list_items_are_indexed(self) -> None:
        """A bad item of a list names the list and the item's index."""
        error = self.error_line(with_key("grpc.allow", ["/", 5]))
        self.assertEqual(
            str(error), "grpc.allow[1]: expected a prefix starting with '/', got int 5"
        )

    def test_wording_of_common_errors(self) -> None:
        """The lines people see most read as before, with the refused value."""
        cases = [
            ("master_api: {http: 'ftp://x'}",
             "master_api.http: expected an http:// or https:// URL, got 'ftp://x'"),
            (with_key("listen.tsl", 1),
             "listen.tsl: unknown key (known: cleartext, interface, tls)"),
            (with_key("listen.tls", 70000),
             "listen.tls: expected a port number 0-65535, got int 70000"),
            (with_key("limits.max_event_size", 1000),
             "limits.max_event_size: must be at least 65536 "
             "(CloudEvents intermediaries accept 64 KiB)"),
            (with_key("event_broker.client", "grpc"),
             "event_broker.client: expected one of: grpcio, h2, got 'grpc'"),
            ("listen: {1: 2}\n" + with_key("workers", 1), "listen: keys must be strings, got 1"),
            ("listen: {}",
             "master_api.http: required: the Master API's URL (e.g. http://127.0.0.1:8080)"),
        ]
        for text, line in cases:
            self.assertEqual(str(self.error_line(text)), line)

    def test_strict_types(self) -> None:
        """A quoted number is not a number, nor 1 a boolean; seconds may be integers."""
        self.assertEqual(self.error_line(with_key("listen.tls", "9001")).key, "listen.tls")
        self.assertEqual(self.error_line(with_key("log.access", 1)).key, "log.access")
        config = load_config(with_key("limits.idle_timeout", 7))
        self.assertEqual(config.limits.idle_timeout, 7.0)
        self.assertIsInstance(config.limits.idle_timeout, float)

    def test_defaults_are_the_runtime_defaults(self) -> None:
        """The file's defaults give exactly the runtime dataclasses' defaults."""
        config = load_config(yaml.safe_dump(BASE))
        defaults = GatewayConfig()
        for name in ("listen", "tls", "grpc_allow", "grpc_deny", "limits", "access_log",
                     "workers", "event_broker"):
            self.assertEqual(getattr(config, name), getattr(defaults, name), name)


class OverrideTests(SynchronousTestCase):
    """Command-line flags set single keys of the file and are validated with it."""

    def test_override_keeps_the_rest_of_the_section(self) -> None:
        """Setting master_api.grpc from a flag keeps the file's ca_file and pool size."""
        text = "master_api: {http: 'http://h:1', ca_file: ca.pem, grpc_connections: 2}\n"
        config = load_config(
            text, overrides=[Override("--master-api-grpc", "master_api.grpc", "grpcs://g:443")]
        )
        assert config.master_api_grpc is not None
        self.assertEqual(
            (config.master_api_grpc.address, config.master_api_grpc.tls,
             config.master_api_grpc.ca_file, config.master_api_grpc.max_connections),
            ("g:443", True, os.path.join(".", "ca.pem"), 2),
        )

    def test_override_fills_a_missing_section(self) -> None:
        """A flag may give the one required key when there is no file at all."""
        config = load_config(
            "", "<command line>", [Override("--master-api-http", "master_api.http", "http://h:2")]
        )
        assert config.master_api_http is not None
        self.assertEqual((config.master_api_http.port, config.source), (2, "<command line>"))

    def test_a_bad_flag_is_named(self) -> None:
        """A flag's bad value is reported under the flag's name."""
        with self.assertRaises(ConfigError) as caught:
            load_config(
                yaml.safe_dump(BASE), overrides=[Override("--interface", "listen.interface", "x")]
            )
        self.assertEqual(str(caught.exception), "--interface: expected an IP address, got 'x'")


class SchemaTests(SynchronousTestCase):
    """The committed JSON Schema is what the models generate, and documents every key."""

    def test_committed_schema_is_current(self) -> None:
        """Regenerating the schema in memory gives exactly the committed file."""
        with open(config_schema.SCHEMA_FILE, encoding="utf-8") as f:
            committed = f.read()
        self.assertEqual(
            committed, config_schema.schema_text(),
            "gateway.schema.json is stale; run "
            "`python -m eventgw.config.schema > eventgw/config/gateway.schema.json`",
        )

    def test_schema_is_json_and_names_its_dialect(self) -> None:
        """The schema is JSON Schema 2020-12 and refuses unknown top-level keys."""
        schema = json.loads(config_schema.schema_text())
        self.assertEqual(schema["$schema"], "https://json-schema.org/draft/2020-12/schema")
        self.assertIs(schema["additionalProperties"], False)
        self.assertEqual(schema["required"], ["master_api"])

    def test_every_key_is_described(self) -> None:
        """Each key of a section carries a description (what an editor shows)."""
        for key, prop in schema_keys():
            if "." in key or json_type(prop) != "object":
                self.assertTrue(prop.get("description"), key)


class UpstreamListTests(SynchronousTestCase):
    """One address or a list for each upstream, with the balancing keys."""

    def test_a_bad_entry_is_named_with_its_index(self) -> None:
        """master_api.http[1], master_api.grpc[2], event_broker.grpc[1]: one line each."""
        cases = [
            ("master_api: {http: ['http://a:1', 'ftp://b']}",
             "master_api.http[1]: expected an http:// or https:// URL, got 'ftp://b'"),
            ("master_api: {http: ['http://a:1', 'https://b:2']}",
             "master_api.http[1]: every host of a list must use the scheme of the first"),
            ("master_api: {grpc: ['a:1', 'b:2', 'c']}",
             "master_api.grpc[2]: missing port in 'c'"),
            ("master_api: {http: []}",
             "master_api.http: expected an http(s):// URL or a non-empty list of them, got []"),
            ("master_api: {http: 'http://a:1'}\nevent_broker: {grpc: ['a:1', 7]}",
             "event_broker.grpc[1]: expected a non-empty string, got int 7"),
            ("master_api: {http: 'http://a:1', balance: random}",
             "master_api.balance: expected one of: least_request, round_robin, got 'random'"),
            ("master_api: {http: 'http://a:1', outlier: {eject_for: 0}}",
             "master_api.outlier.eject_for: expected a positive number of seconds, got int 0"),
        ]
        for text, line in cases:
            with self.assertRaises(ConfigError) as caught:
                load_config(text)
            self.assertEqual(str(caught.exception), line)

    def test_list_and_keys_reach_the_runtime(self) -> None:
        """The list, balance, health_check and outlier become the runtime objects; the
        single form still has no host list."""
        config = load_config(
            "master_api:\n  http: ['http://10.0.0.1:8080', 'http://10.0.0.2:8080']\n"
            "  balance: round_robin\n  health_check: {interval: 0.5, path: /ready}\n"
            "  outlier: {consecutive_failures: 3, eject_for: 10}\n"
            "event_broker: {grpc: '127.0.0.1:50052'}\n"
        )
        api = config.master_api_http
        assert api is not None and config.event_broker is not None
        self.assertEqual(api.entries, (("10.0.0.1", 8080), ("10.0.0.2", 8080)))
        self.assertEqual(api.balancing.balance, "round_robin")
        assert api.balancing.health_check is not None
        self.assertEqual((api.balancing.health_check.interval,
                          api.balancing.health_check.path), (0.5, "/ready"))
        self.assertEqual((api.balancing.consecutive_failures, api.balancing.eject_for),
                         (3, 10.0))
        self.assertEqual(config.event_broker.hosts, ())
        self.assertIsNone(config.event_broker.balancing.health_check)
