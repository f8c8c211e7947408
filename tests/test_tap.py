"""``twistd eventgw``: the plugin, the options, and one-line start failures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from eventgw.tap import Options

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def run_twistd(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "eventgw", *args],
        capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir(),
    )


class PluginTests(SynchronousTestCase):
    def test_plugin_is_found(self) -> None:
        """getPlugins(IServiceMaker) finds eventgw, and it provides the interfaces."""
        import twisted.plugins

        makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("eventgw", makers)
        maker = makers["eventgw"]
        self.assertTrue(verifyObject(IServiceMaker, maker))
        self.assertTrue(verifyObject(IPlugin, maker))
        self.assertIs(maker.options, Options)


class OptionsTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.unlink, path)
        return path

    def test_overrides(self) -> None:
        """Flags override single keys of the file."""
        path = self.write("master_api: {http: 'http://127.0.0.1:8080'}\n")
        options = Options()
        options.parseOptions([
            "--config", path, "--port", "9443", "--cleartext-port", "9080",
            "--master-api-grpc", "grpcs://api:443", "--event-broker-grpc", "127.0.0.1:7",
            "--no-access-log",
        ])
        config = options["gateway_config"]
        self.assertEqual(config.listen.tls, 9443)
        self.assertEqual(config.listen.cleartext, 9080)
        self.assertTrue(config.master_api_grpc.tls)
        self.assertEqual(config.event_broker.target, "127.0.0.1:7")
        self.assertFalse(config.access_log)

    def test_bad_port_flag(self) -> None:
        """A non-numeric --port is a usage error."""
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--port", "http"])


class StartFailureTests(SynchronousTestCase):
    """Each bad start is one line on stderr naming the key or file, and exit status 1."""

    def assertOneLine(self, result: subprocess.CompletedProcess[str], needle: str) -> None:
        self.assertEqual(result.returncode, 1, result.stderr + result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)

    def test_unknown_key(self) -> None:
        """An unknown key names itself."""
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write("master_api: {http: 'http://127.0.0.1:1'}\nlisten: {tsl: 1}\n")
        self.addCleanup(os.unlink, path)
        self.assertOneLine(run_twistd("--config", path), "listen.tsl")

    def test_missing_file(self) -> None:
        """A config file that does not exist is named."""
        self.assertOneLine(run_twistd("--config", "/nonexistent.yaml"), "/nonexistent.yaml")

    def test_unreadable_cert(self) -> None:
        """A certificate that cannot be read is named with its key."""
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write("master_api: {http: 'http://127.0.0.1:1'}\n"
                    "listen: {tls: 0}\ntls: {cert: /nonexistent.pem, key: /nonexistent.key}\n")
        self.addCleanup(os.unlink, path)
        self.assertOneLine(run_twistd("--config", path), "tls.cert")

    def test_port_in_use(self) -> None:
        """A port in use is named with its key."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            folder = tempfile.mkdtemp()
            path = os.path.join(folder, "gateway.yaml")
            with open(path, "w") as f:
                f.write("master_api: {http: 'http://127.0.0.1:1'}\n"
                        f"listen: {{tls: {port}, interface: 127.0.0.1}}\n"
                        f"tls: {{dev_cert_dir: {folder}}}\n")
            self.assertOneLine(run_twistd("--config", path), "listen.tls")

    def test_garbage_broker_ca_file(self) -> None:
        """An event_broker.ca_file that holds no certificate stops the start, named."""
        folder = tempfile.mkdtemp()
        ca_file = os.path.join(folder, "ca.pem")
        with open(ca_file, "w") as f:
            f.write("not a certificate\n")
        path = os.path.join(folder, "gateway.yaml")
        with open(path, "w") as f:
            f.write("master_api: {http: 'http://127.0.0.1:1'}\n"
                    "listen: {tls: 0, interface: 127.0.0.1}\n"
                    f"tls: {{dev_cert_dir: {folder}}}\n"
                    f"event_broker: {{grpc: 'grpcs://127.0.0.1:1', ca_file: {ca_file}}}\n")
        self.assertOneLine(run_twistd("--config", path), "event_broker.ca_file")
