"""``twistd eventgw``: the plugin, the options, ``--check``, and one-line start failures
with and without ``-n``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from eventgw.config import load_config
from eventgw.service import gateway_service
from eventgw.tap import Options, StartFailed, _OneLineErrors
from eventgw.tls import ensure_dev_certificate

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # The checkout first on the path, wherever the subprocess runs.
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **(extra or {}))


def run_twistd(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "eventgw", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd or tempfile.gettempdir(),
        env=_env(env),
    )


def run_daemon(folder: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``twistd eventgw`` without ``-n``: pidfile and log in ``folder``."""
    return subprocess.run(
        [TWISTD, f"--pidfile={folder}/twistd.pid", f"--logfile={folder}/twistd.log",
         "eventgw", *args],
        capture_output=True, text=True, timeout=timeout, cwd=folder, env=_env(),
    )


def write_config(folder: str, text: str) -> str:
    path = os.path.join(folder, "gateway.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def listening_socket() -> socket.socket:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    return busy


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


class StartFailureAssertions(SynchronousTestCase):
    def assertOneLine(self, result: subprocess.CompletedProcess[str], needle: str) -> None:
        self.assertEqual(result.returncode, 1, result.stderr + result.stdout)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("eventgw: bad configuration: "), lines[0])
        self.assertIn(needle, lines[0])
        self.assertNotIn("Traceback", result.stderr + result.stdout)
        self.assertEqual(result.stdout, "")


class StartFailureTests(StartFailureAssertions):
    """Each bad start is one line on stderr naming the key or file, and exit status 1."""

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


class CheckTests(StartFailureAssertions):
    """``--check``: the file, the certificate, the CA bundles and the routes, nothing bound."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-check-")

    def good(self, port: int = 0, extra: str = "") -> str:
        return write_config(
            self.folder,
            "master_api:\n  http: http://127.0.0.1:1\n  grpc: 127.0.0.1:2\n"
            f"listen: {{tls: {port}, cleartext: {port}, interface: 127.0.0.1}}\n"
            f"tls: {{dev_cert_dir: {self.folder}/dev}}\n"
            "event_broker: {grpc: '127.0.0.1:3'}\n" + extra,
        )

    def assertOk(self, result: subprocess.CompletedProcess[str]) -> None:
        self.assertEqual((result.returncode, result.stdout, result.stderr),
                         (0, "configuration ok\n", ""))

    def test_good_file(self) -> None:
        """A good file prints ``configuration ok`` and exits 0; the development
        certificate it needs is generated as the start would."""
        self.assertOk(run_twistd("--config", self.good(), "--check"))
        self.assertTrue(os.path.exists(os.path.join(self.folder, "dev", "gateway-dev.pem")))

    def test_good_file_while_its_port_is_taken(self) -> None:
        """Nothing is bound: a file is ok while its ports are in use (by the gateway
        it configures, say)."""
        with listening_socket() as busy:
            port = busy.getsockname()[1]
            self.assertOk(run_twistd("--config", self.good(port), "--check"))

    def test_good_file_with_certificate_files(self) -> None:
        """A configured certificate and its key are loaded and accepted."""
        dev = ensure_dev_certificate(os.path.join(self.folder, "pair"))
        path = write_config(
            self.folder,
            "master_api: {http: 'https://127.0.0.1:1', ca_file: pair/gateway-dev.pem}\n"
            "tls: {cert: pair/gateway-dev.pem, key: pair/gateway-dev.key}\n",
        )
        self.assertTrue(os.path.exists(dev.cert_path))
        self.assertOk(run_twistd("--config", path, "--check"))

    def test_bad_key(self) -> None:
        """An unknown key is the one-line error, exit 1, and no ``configuration ok``."""
        path = write_config(self.folder, "master_api: {http: 'http://127.0.0.1:1'}\n"
                                         "listen: {tsl: 1}\n")
        self.assertOneLine(run_twistd("--config", path, "--check"), "listen.tsl: unknown key")

    def test_missing_variable(self) -> None:
        """An unset ``${VAR}`` names the key and the variable."""
        path = write_config(self.folder, "master_api:\n  http: ${EVENTGW_TEST_UNSET}\n")
        self.assertOneLine(
            run_twistd("--config", path, "--check"),
            "master_api.http: environment variable EVENTGW_TEST_UNSET is not set",
        )

    def test_variable_from_the_environment(self) -> None:
        """``${VAR}`` is read from twistd's environment."""
        path = write_config(
            self.folder,
            "master_api:\n  http: ${EVENTGW_TEST_URL}\n"
            f"tls:\n  dev_cert_dir: {self.folder}/dev\n",
        )
        self.assertOk(run_twistd("--config", path, "--check",
                                 env={"EVENTGW_TEST_URL": "http://127.0.0.1:1"}))

    def test_unreadable_certificate(self) -> None:
        """A certificate file that cannot be read names tls.cert."""
        path = write_config(self.folder, "master_api: {http: 'http://127.0.0.1:1'}\n"
                                         "tls: {cert: /nonexistent.pem, key: /nonexistent.key}\n")
        self.assertOneLine(run_twistd("--config", path, "--check"), "tls.cert: cannot read")

    def test_key_of_another_certificate(self) -> None:
        """A key that does not match the certificate names tls.key."""
        one = ensure_dev_certificate(os.path.join(self.folder, "one"))
        two = ensure_dev_certificate(os.path.join(self.folder, "two"))
        path = write_config(self.folder, "master_api: {http: 'http://127.0.0.1:1'}\n"
                                         f"tls: {{cert: {one.cert_path}, key: {two.key_path}}}\n")
        self.assertOneLine(run_twistd("--config", path, "--check"), "tls.key: ")

    def test_garbage_ca_files(self) -> None:
        """A CA bundle that holds no certificate is named by its key, for the Master API
        (even over plain HTTP) and for the Event Broker."""
        garbage = os.path.join(self.folder, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        api = write_config(self.folder, "master_api:\n  http: http://127.0.0.1:1\n"
                                        f"  ca_file: {garbage}\n"
                                        f"tls: {{dev_cert_dir: {self.folder}/dev}}\n")
        self.assertOneLine(run_twistd("--config", api, "--check"), "master_api.ca_file: ")
        broker = self.good(extra=f"event_broker: {{grpc: 'grpcs://h:1', ca_file: {garbage}}}\n")
        with open(broker) as f:
            text = f.read().replace("event_broker: {grpc: '127.0.0.1:3'}\n", "")
        write_config(self.folder, text)
        self.assertOneLine(run_twistd("--config", broker, "--check"), "event_broker.ca_file: ")


def wait_for_exit(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class DaemonStartTests(StartFailureAssertions):
    """Without ``-n`` (twistd daemonizes): start failures are one line on the terminal
    and exit 1, not a parent waiting forever for a child that died."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-daemon-")

    def config(self, port: int, interface: str = "127.0.0.1") -> str:
        return write_config(
            self.folder,
            "master_api: {http: 'http://127.0.0.1:1'}\n"
            f"listen: {{tls: {port}, interface: '{interface}'}}\n"
            f"tls: {{dev_cert_dir: {self.folder}/dev}}\n",
        )

    def test_port_in_use(self) -> None:
        """A port in use is named with its key, exit 1, and no daemon is left."""
        with listening_socket() as busy:
            port = busy.getsockname()[1]
            result = run_daemon(self.folder, "--config", self.config(port))
        self.assertOneLine(result, f"listen.tls: cannot listen on 127.0.0.1:{port}")
        self.assertFalse(os.path.exists(os.path.join(self.folder, "twistd.pid")))

    def test_address_not_here(self) -> None:
        """An interface address this machine does not have is named with its key."""
        result = run_daemon(self.folder, "--config", self.config(0, "192.0.2.1"))
        self.assertOneLine(result, "listen.tls: cannot listen on 192.0.2.1:0")

    def test_bad_file(self) -> None:
        """A bad file is the same one line as with ``-n``."""
        path = write_config(self.folder, "master_api: {http: 'ftp://x'}\n")
        self.assertOneLine(run_daemon(self.folder, "--config", path), "master_api.http: ")

    def test_good_start_serves_then_stops(self) -> None:
        """A good file: exit 0 at once, the daemon serves the port it logs, SIGTERM
        stops it."""
        result = run_daemon(self.folder, "--config", self.config(0))
        self.assertEqual((result.returncode, result.stderr), (0, ""), result.stdout)
        with open(os.path.join(self.folder, "twistd.pid")) as f:
            pid = int(f.read())
        self.addCleanup(self._kill, pid)
        log = os.path.join(self.folder, "twistd.log")
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            with open(log) as f:
                found = re.search(r"eventgw listening on 127\.0\.0\.1:(\d+) TLS", f.read())
            port = int(found.group(1)) if found else None
            time.sleep(0.05)
        assert port is not None, "the daemon never logged its port"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_for_exit(pid))

    def _kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class OneLineErrorsTests(SynchronousTestCase):
    def test_daemonized_failure_is_an_exception(self) -> None:
        """In a daemonized child a start failure is raised as an ordinary exception
        (which twistd reports to the waiting parent), not SystemExit."""
        with listening_socket() as busy:
            config = load_config(
                "master_api: {http: 'http://127.0.0.1:1'}\n"
                f"listen: {{tls: {busy.getsockname()[1]}, interface: 127.0.0.1}}\n"
                f"tls: {{dev_cert_dir: {tempfile.mkdtemp()}}}\n"
            )
            wrapper = _OneLineErrors(gateway_service(config), daemonized=True)
            with self.assertRaises(StartFailed) as caught:
                wrapper.startService()
        self.assertIn("eventgw: bad configuration: listen.tls: ", str(caught.exception))
        self.assertFalse(wrapper.running)

    def test_options_know_whether_twistd_daemonizes(self) -> None:
        """The options read ``-n`` from twistd's own options."""
        from twisted.scripts.twistd import ServerOptions

        for flags, daemonizing in (([], True), (["-n"], False)):
            server = ServerOptions()
            server.parseOptions([*flags, "eventgw", "--master-api-http", "http://h:1"])
            self.assertIs(server.subOptions.daemonizing, daemonizing)
        self.assertFalse(Options().daemonizing)
