"""A real ``twistd -n eventgw`` process under real signals: the drain on SIGTERM, the
reload on SIGHUP and on a ConfigMap-style file swap, and ``--workers`` draining
together, with real sockets, a real grpcio Master API and real clients."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from twisted.trial.unittest import SynchronousTestCase

from eventgw.tls import ensure_dev_certificate
from tests.test_tap import TWISTD, _env

STREAM_METHOD = "/test.Slow/Stream"


class _Started:
    """Counts the calls the Master API has begun to answer, so a test can wait until
    its calls are in flight (not a fixed sleep)."""

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    def add(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> None:
        with self._changed:
            arrived = self._changed.wait_for(lambda: self._count >= count, timeout)
        assert arrived, f"only {self._count} of {count} calls reached the Master API"


class _SlowHandler(BaseHTTPRequestHandler):
    """The Master API's HTTP side: every answer takes ``delay`` seconds."""

    delay = 2.0
    started: _Started

    def do_GET(self) -> None:
        self.started.add()
        time.sleep(self.delay)
        body = b"slow answer"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _streamer(started: _Started) -> Any:
    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        started.add()
        yield from _stream(request, context)

    return stream


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    """``count`` messages (the request's first byte), one every half second."""
    count = request[0] if request else 4
    for index in range(count):
        if not context.is_active():
            return
        time.sleep(0.5)
        yield bytes([index])


class Upstreams:
    """A grpcio server with a slow server stream, and a slow HTTP server; ``started``
    counts the calls either has begun to answer."""

    def __init__(self) -> None:
        self.started = _Started()
        self.grpc = grpc.server(ThreadPoolExecutor(max_workers=8))
        handler = grpc.method_handlers_generic_handler(
            "test.Slow",
            {"Stream": grpc.unary_stream_rpc_method_handler(_streamer(self.started))},
        )
        self.grpc.add_generic_rpc_handlers((handler,))
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()
        handler = type("Handler", (_SlowHandler,), {"started": self.started})
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.http.daemon_threads = True
        self.http_port = self.http.server_address[1]
        self._thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.grpc.stop(0)
        self.http.shutdown()
        self.http.server_close()


class Gateway:
    """``twistd -n eventgw`` in a subprocess, its log in a file."""

    def __init__(self, folder: str, config: str, *extra: str) -> None:
        self.log_path = os.path.join(folder, "gateway.log")
        self._log = open(self.log_path, "w")  # closed in stop()
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "eventgw", "--config", config, *extra],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=folder, env=_env(),
        )
        found = self.wait_for(r"eventgw listening on 127\.0\.0\.1:(\d+) cleartext")
        self.port = int(found.group(1))
        found = self.wait_for(r"eventgw listening on 127\.0\.0\.1:(\d+) TLS")
        self.tls_port = int(found.group(1))

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.log()))
            if len(found) >= count:
                return found[count - 1]
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} never logged:\n{self.log()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def refused(self, timeout: float = 30.0) -> bool:
        """Whether new connections are refused (tried until ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            time.sleep(0.05)
        return False


class _Call(threading.Thread):
    """A client call on a thread: ``result`` or ``error`` once done."""

    def __init__(self, fn: Any) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e

    def outcome(self, timeout: float = 30.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "the call never ended"
        if self.error is not None:
            raise self.error
        return self.result


class LifecycleCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-lifecycle-")
        self.upstreams = Upstreams()
        self.addCleanup(self.upstreams.close)

    def config_text(self, drain: float = 10, deny: str = "[]", extra: str = "",
                    cleartext: int = 0, tls: str | None = None) -> str:
        if tls is None:
            tls = f"{{dev_cert_dir: {self.folder}/dev}}"
        return (
            f"master_api:\n  http: http://127.0.0.1:{self.upstreams.http_port}\n"
            f"  grpc: 127.0.0.1:{self.upstreams.grpc_port}\n"
            f"listen: {{tls: 0, cleartext: {cleartext}, interface: 127.0.0.1}}\n"
            f"tls: {tls}\n"
            f"grpc: {{deny: {deny}}}\n"
            f"shutdown: {{drain_timeout: {drain}}}\n" + extra
        )

    def write(self, text: str, name: str = "gateway.yaml") -> str:
        path = os.path.join(self.folder, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return path

    def start(self, config: str, *extra: str) -> Gateway:
        gateway = Gateway(self.folder, config, *extra)
        self.addCleanup(gateway.stop)
        return gateway

    def channel(self, gateway: Gateway) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
        self.addCleanup(channel.close)
        return channel

    def stream(self, gateway: Gateway, count: int) -> _Call:
        """A server stream of ``count`` messages (half a second each) on its own
        channel; its result is the list of messages."""
        call = self.channel(gateway).unary_stream(STREAM_METHOD)
        return _Call(lambda: list(call(bytes([count]), timeout=30)))

    def unary_status(self, gateway: Gateway) -> grpc.StatusCode:
        """The status a new one-message stream ends with."""
        try:
            list(self.channel(gateway).unary_stream(STREAM_METHOD)(b"\x01", timeout=10))
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    def slow_get(self, gateway: Gateway) -> _Call:
        """A GET the Master API takes two seconds to answer: (status, connection
        header, body)."""

        def get() -> tuple[int, str | None, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
            try:
                connection.request("GET", "/api/slow")
                response = connection.getresponse()
                return response.status, response.getheader("connection"), response.read()
            finally:
                connection.close()

        return _Call(get)


class DrainTests(LifecycleCase):
    """SIGTERM: ports close, work in flight finishes (or is ended at the drain timeout),
    exit 0."""

    def test_work_in_flight_finishes_while_new_connections_are_refused(self) -> None:
        """A slow HTTP/1.1 request and a 2 s gRPC server stream in flight across SIGTERM
        both finish (the HTTP answer with ``connection: close``), new connections are
        refused meanwhile, and the process exits 0."""
        gateway = self.start(self.write(self.config_text(drain=10)))
        stream = self.stream(gateway, 4)
        get = self.slow_get(gateway)
        self.upstreams.started.wait(2)
        gateway.signal(signal.SIGTERM)
        self.assertTrue(gateway.refused())
        self.assertTrue(stream.is_alive())
        self.assertEqual(stream.outcome(), [b"\x00", b"\x01", b"\x02", b"\x03"])
        self.assertEqual(get.outcome(), (200, "close", b"slow answer"))
        self.assertEqual(gateway.wait(), 0)
        self.assertIn("received SIGTERM: draining", gateway.log())

    def test_drain_timeout_ends_a_longer_stream_unavailable(self) -> None:
        """A stream longer than ``shutdown.drain_timeout`` ends with UNAVAILABLE when
        it is over (the client does not hang), and the process still exits 0."""
        gateway = self.start(self.write(self.config_text(drain=1)))
        stream = self.stream(gateway, 60)
        self.upstreams.started.wait(1)
        gateway.signal(signal.SIGTERM)
        with self.assertRaises(grpc.RpcError) as raised:
            stream.outcome()
        self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAVAILABLE)
        # The gateway's own grpc-status 14, not a reset the client maps to UNAVAILABLE.
        self.assertIn("shutting down", raised.exception.details())
        self.assertEqual(gateway.wait(), 0)

    def test_second_sigterm_stops_at_once(self) -> None:
        """A second SIGTERM during a drain stops the process without waiting for the
        drain period (here 60 s) to run out."""
        gateway = self.start(self.write(self.config_text(drain=60)))
        stream = self.stream(gateway, 120)
        self.upstreams.started.wait(1)
        gateway.signal(signal.SIGTERM)
        gateway.wait_for("received SIGTERM: draining")
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(timeout=20), 0)
        self.assertIn("received SIGTERM again: stopping now", gateway.log())
        with self.assertRaises(grpc.RpcError):
            stream.outcome()


class ReloadTests(LifecycleCase):
    """SIGHUP and ``reload.watch``: a good file applies to new calls at once, a bad one
    or a port change changes nothing."""

    def test_sighup_deny_applies_at_once_while_a_stream_completes(self) -> None:
        """A reload that denies the method refuses new calls (UNIMPLEMENTED) at once,
        while a stream already in flight completes."""
        path = self.write(self.config_text())
        gateway = self.start(path)
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.OK)
        stream = self.stream(gateway, 4)
        self.upstreams.started.wait(2)
        self.write(self.config_text(deny="['/test.Slow/']"))
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("configuration reloaded")
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(len(stream.outcome()), 4)
        self.assertIsNone(gateway.process.poll())
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)

    def test_bad_file_keeps_the_old_configuration(self) -> None:
        """A bad file on SIGHUP is one line naming the key; the old configuration keeps
        serving."""
        path = self.write(self.config_text())
        gateway = self.start(path)
        self.write(self.config_text(deny="['/test.Slow/']", extra="shutdown_typo: 1\n"))
        gateway.signal(signal.SIGHUP)
        line = gateway.wait_for(r".*configuration reload failed.*").group(0)
        self.assertIn("shutdown_typo", line)
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.OK)
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)

    def test_port_change_is_refused(self) -> None:
        """A reload that changes a listening port is refused whole: one line saying a
        restart is needed, the deny it also carries is not applied."""
        path = self.write(self.config_text())
        gateway = self.start(path)
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            other = spare.getsockname()[1]
        self.write(self.config_text(deny="['/test.Slow/']", cleartext=other))
        gateway.signal(signal.SIGHUP)
        line = gateway.wait_for(r".*configuration reload refused.*").group(0)
        self.assertIn("restart is needed", line)
        self.assertIn("listen.cleartext", line)
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.OK)
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)

    def test_configmap_symlink_swap_is_picked_up_without_a_signal(self) -> None:
        """With ``reload.watch``, swapping a ConfigMap's ``..data`` symlink reloads."""
        folder = self.folder
        watch = "reload: {watch: true}\n"

        def version(name: str, text: str) -> None:
            os.mkdir(os.path.join(folder, name))
            with open(os.path.join(folder, name, "gateway.yaml"), "w") as f:
                f.write(text)

        version("..v1", self.config_text(extra=watch))
        os.symlink("..v1", os.path.join(folder, "..data"))
        os.symlink("..data/gateway.yaml", os.path.join(folder, "gateway.yaml"))
        gateway = self.start(os.path.join(folder, "gateway.yaml"))
        gateway.wait_for("watching .* for changes")
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.OK)
        version("..v2", self.config_text(deny="['/test.Slow/']", extra=watch))
        os.symlink("..v2", os.path.join(folder, "..data_tmp"))
        os.rename(os.path.join(folder, "..data_tmp"), os.path.join(folder, "..data"))
        gateway.wait_for("configuration reloaded")
        self.assertEqual(self.unary_status(gateway), grpc.StatusCode.UNIMPLEMENTED)
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)


def _served_fingerprint(port: int) -> str:
    """The SHA-256 fingerprint of the certificate a new TLS connection is shown."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


class CertificateReloadTests(LifecycleCase):
    """A reload's certificate and key apply to the next TLS handshake."""

    def test_new_handshakes_get_the_new_certificate(self) -> None:
        """After SIGHUP with other ``tls.cert``/``tls.key`` files, a new TLS connection
        is shown the new certificate."""
        first = ensure_dev_certificate(os.path.join(self.folder, "a"))
        second = ensure_dev_certificate(os.path.join(self.folder, "b"))
        self.assertNotEqual(first.fingerprint, second.fingerprint)

        def tls(cert: Any) -> str:
            return f"{{cert: {cert.cert_path}, key: {cert.key_path}}}"

        gateway = self.start(self.write(self.config_text(tls=tls(first))))
        self.assertEqual(_served_fingerprint(gateway.tls_port), first.fingerprint)
        self.write(self.config_text(tls=tls(second)))
        gateway.signal(signal.SIGHUP)
        gateway.wait_for("configuration reloaded")
        self.assertEqual(_served_fingerprint(gateway.tls_port), second.fingerprint)
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)


class WorkerTests(LifecycleCase):
    """``--workers 2``: the supervisor passes SIGTERM and SIGHUP on to every worker."""

    def test_workers_drain_together(self) -> None:
        """Streams in flight on the workers finish across SIGTERM to the supervisor,
        every worker drains (its log lines name it) and the supervisor exits 0."""
        gateway = self.start(self.write(self.config_text(drain=10)), "--workers", "2")
        gateway.wait_for(r"worker 1.*eventgw listening")
        gateway.wait_for(r"worker 0.*eventgw listening")
        streams = [self.stream(gateway, 4) for _ in range(4)]
        self.upstreams.started.wait(4)
        gateway.signal(signal.SIGTERM)
        for stream in streams:
            self.assertEqual(len(stream.outcome()), 4)
        self.assertEqual(gateway.wait(), 0)
        log = gateway.log()
        self.assertRegex(log, r"worker 0.*received SIGTERM: draining")
        self.assertRegex(log, r"worker 1.*received SIGTERM: draining")

    def test_workers_reload_together(self) -> None:
        """SIGHUP to the supervisor reloads every worker: each logs the reload, and new
        calls, whichever worker takes them, see the new deny."""
        path = self.write(self.config_text())
        gateway = self.start(path, "--workers", "2")
        gateway.wait_for(r"worker 1.*eventgw listening")
        gateway.wait_for(r"worker 0.*eventgw listening")
        self.write(self.config_text(deny="['/test.Slow/']"))
        gateway.signal(signal.SIGHUP)
        gateway.wait_for(r"worker 0.*configuration reloaded")
        gateway.wait_for(r"worker 1.*configuration reloaded")
        for _ in range(4):
            self.assertEqual(self.unary_status(gateway), grpc.StatusCode.UNIMPLEMENTED)
        gateway.signal(signal.SIGTERM)
        self.assertEqual(gateway.wait(), 0)
