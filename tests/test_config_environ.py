"""``${VAR}`` and ``${VAR:-default}`` in the configuration file's string values."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import GatewayConfig, Override, load_config
from eventgw.config.environ import expand_text
from eventgw.errors import ConfigError

API = "master_api:\n  http: http://127.0.0.1:8080\n"


def load(text: str, **environ: str) -> GatewayConfig:
    return load_config(text, environ=environ)


class ExpandTextTests(SynchronousTestCase):
    def test_set_variable(self) -> None:
        """``${NAME}`` is the variable's value."""
        self.assertEqual(expand_text("${HOST}", {"HOST": "api"}, "k"), "api")

    def test_default(self) -> None:
        """``${NAME:-default}`` is the default when the variable is unset or empty,
        the value otherwise."""
        self.assertEqual(expand_text("${P:-9443}", {}, "k"), "9443")
        self.assertEqual(expand_text("${P:-9443}", {"P": ""}, "k"), "9443")
        self.assertEqual(expand_text("${P:-9443}", {"P": "1"}, "k"), "1")
        self.assertEqual(expand_text("${P:-}", {}, "k"), "")

    def test_several_in_one_string(self) -> None:
        """Every reference of a string is expanded, with the text around them kept."""
        self.assertEqual(
            expand_text("https://${H}:${P:-443}/${H}", {"H": "api"}, "k"), "https://api:443/api"
        )

    def test_dollars(self) -> None:
        """``$$`` is one literal ``$``; a ``$`` not starting ``${`` stays as written."""
        self.assertEqual(expand_text("pa$$word", {}, "k"), "pa$word")
        self.assertEqual(expand_text("$${HOME}", {"HOME": "/root"}, "k"), "${HOME}")
        self.assertEqual(expand_text("pa$word 5$ $", {}, "k"), "pa$word 5$ $")

    def test_one_pass(self) -> None:
        """A value from the environment is not expanded again."""
        self.assertEqual(expand_text("${A}", {"A": "${B}", "B": "x"}, "k"), "${B}")

    def test_missing_names_key_and_variable(self) -> None:
        """An unset variable without a default names the key and the variable."""
        with self.assertRaises(ConfigError) as caught:
            expand_text("x${NOPE}", {}, "tls.cert")
        self.assertEqual(str(caught.exception), "tls.cert: environment variable NOPE is not set")

    def test_malformed(self) -> None:
        """``${}``, a name starting with a digit, another operator or a missing ``}``
        is an error naming the key."""
        for text in ("${}", "${1X}", "${A-b}", "${A", "a ${B:-c"):
            with self.assertRaises(ConfigError) as caught:
                expand_text(text, {"A": "1"}, "listen.interface")
            self.assertTrue(
                str(caught.exception).startswith("listen.interface: malformed reference"),
                str(caught.exception),
            )


class LoadConfigEnvironTests(SynchronousTestCase):
    def test_set(self) -> None:
        """A reference in a value of the file is expanded before validation."""
        config = load("master_api:\n  http: ${MASTER_URL}\n", MASTER_URL="https://api:8443")
        assert config.master_api_http is not None
        self.assertEqual(config.master_api_http.url, "https://api:8443")

    def test_defaulted(self) -> None:
        """An unset variable with a default gives the default."""
        config = load(API + "listen:\n  interface: ${BIND:-127.0.0.1}\n")
        self.assertEqual(config.listen.interface, "127.0.0.1")

    def test_missing(self) -> None:
        """An unset variable without a default is one error naming the key and variable."""
        with self.assertRaises(ConfigError) as caught:
            load("master_api:\n  http: ${MASTER_URL}\n")
        self.assertEqual(
            str(caught.exception), "master_api.http: environment variable MASTER_URL is not set"
        )

    def test_nested_in_lists(self) -> None:
        """List items are expanded, and an error in one names its index."""
        text = API + "grpc:\n  allow:\n    - /${PKG}.Items/\n    - /${OTHER}/\n"
        config = load(text, PKG="demo", OTHER="x.Y")
        self.assertEqual(config.grpc_allow, ("/demo.Items/", "/x.Y/"))
        with self.assertRaises(ConfigError) as caught:
            load(text, PKG="demo")
        self.assertEqual(
            str(caught.exception), "grpc.allow[1]: environment variable OTHER is not set"
        )

    def test_flow_style_lists(self) -> None:
        """References in a flow-style list (quoted there, as YAML needs) are expanded."""
        config = load(API + 'grpc:\n  deny: ["/${A}.", "/${B:-b}/${A}/"]\n', A="a")
        self.assertEqual(config.grpc_deny, ("/a.", "/b/a/"))

    def test_several_in_one_string(self) -> None:
        """Several references in one value are each expanded."""
        config = load("master_api:\n  http: ${SCHEME:-http}://${HOST}:${PORT}\n",
                      HOST="api.internal", PORT="8080")
        assert config.master_api_http is not None
        self.assertEqual(config.master_api_http.url, "http://api.internal:8080")

    def test_unquoted_values_are_typed_after_expansion(self) -> None:
        """An unquoted reference is typed as YAML types the same text written in place:
        a number is a number, ``false`` a boolean, empty the key's default."""
        config = load(
            API + "listen:\n  tls: ${PORT}\n  cleartext: ${CLEAR:-}\n"
            "log:\n  access: ${ACCESS:-false}\n",
            PORT="9443",
        )
        self.assertEqual(config.listen.tls, 9443)
        self.assertIsNone(config.listen.cleartext)
        self.assertFalse(config.access_log)

    def test_quoted_values_stay_strings(self) -> None:
        """A quoted reference stays a string, so a port written so is refused."""
        with self.assertRaises(ConfigError) as caught:
            load(API + 'listen:\n  tls: "${PORT}"\n', PORT="9443")
        self.assertIn("listen.tls: expected a port number", str(caught.exception))

    def test_keys_are_not_expanded(self) -> None:
        """Mapping keys are never expanded: a reference as a key is an unknown key."""
        with self.assertRaises(ConfigError) as caught:
            load(API + "listen:\n  ${KEY}: 1\n", KEY="tls")
        self.assertIn("listen.${KEY}: unknown key", str(caught.exception))

    def test_literal_dollars_in_values(self) -> None:
        """``$$`` in a value is one ``$``; a lone ``$`` stays."""
        config = load(API + "grpc:\n  allow: ['/a$$b', '/c$d']\n")
        self.assertEqual(config.grpc_allow, ("/a$b", "/c$d"))

    def test_aliases_are_expanded_once(self) -> None:
        """A value shared through a YAML alias is expanded once, not once per use."""
        config = load(API + "grpc:\n  allow: &p ['/$${X}']\n  deny: *p\n", X="no")
        self.assertEqual(config.grpc_allow, ("/${X}",))
        self.assertEqual(config.grpc_deny, ("/${X}",))

    def test_overrides_are_not_expanded(self) -> None:
        """Command-line values are taken as given (the shell has expanded them)."""
        config = load_config(
            API, overrides=[Override("--interface", "listen.interface", "127.0.0.1")],
            environ={},
        )
        self.assertEqual(config.listen.interface, "127.0.0.1")
        with self.assertRaises(ConfigError) as caught:
            load_config(
                API, overrides=[Override("--master-api-grpc", "master_api.grpc", "${X}")],
                environ={"X": "h:1"},
            )
        self.assertTrue(str(caught.exception).startswith("--master-api-grpc:"))

    def test_process_environment_by_default(self) -> None:
        """Without an explicit environment, the process's is used."""
        name = "EVENTGW_TEST_MASTER_URL"
        os.environ[name] = "http://127.0.0.1:9"
        self.addCleanup(os.environ.pop, name, None)
        config = load_config(f"master_api:\n  http: ${{{name}}}\n")
        assert config.master_api_http is not None
        self.assertEqual(config.master_api_http.port, 9)
