# mypy: disable-error-code="no-untyped-call"
"""``--workers N``: fresh worker processes share the ports, are restarted, and drain."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from eventgw.workers import WorkerSupervisor
from tests.rig import free_port

TWISTD_RUN = "from twisted.scripts.twistd import run; run()"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def wait_for(predicate, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def serves(port: int) -> bool:
    """A TLS HTTP/1.1 request to /nowhere gets the gateway's 404."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return tls.recv(100).startswith(b"HTTP/1.1 404")
    except OSError:
        return False


class WorkersTests(SynchronousTestCase):
    def test_two_workers_restart_and_drain(self) -> None:
        """Two workers serve, a killed one comes back, SIGTERM stops them all."""
        folder = tempfile.mkdtemp(prefix="eventgw-workers-")
        port = free_port()
        config = os.path.join(folder, "gateway.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: {{tls: {port}, interface: 127.0.0.1}}\n"
                f"tls: {{dev_cert_dir: {folder}/cert}}\n"
                "master_api: {http: 'http://127.0.0.1:9'}\n"
            )
        supervisor = subprocess.Popen(
            [sys.executable, "-c", TWISTD_RUN, "-n", "--pidfile=", "eventgw",
             "--config", config, "--workers", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
        )
        def kill_supervisor() -> None:
            if supervisor.poll() is None:
                supervisor.kill()

        self.addCleanup(kill_supervisor)
        self.assertTrue(wait_for(lambda: len(children_of(supervisor.pid)) == 2))
        workers = children_of(supervisor.pid)
        def kill_workers() -> None:
            for pid in children_of(supervisor.pid):
                os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill_workers)
        self.assertTrue(wait_for(lambda: serves(port)))

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_for(
            lambda: len(children_of(supervisor.pid)) == 2
            and victim not in children_of(supervisor.pid)
        ))
        for _ in range(10):
            self.assertTrue(serves(port))

        supervisor.send_signal(signal.SIGTERM)
        # twistd ends a SIGTERM shutdown by re-raising the signal, so the exit
        # status is "terminated by SIGTERM" after a clean stop.
        self.assertIn(supervisor.wait(timeout=30), (0, -signal.SIGTERM))
        remaining = children_of(supervisor.pid)
        self.assertEqual(remaining, set())


class ReusePortTests(SynchronousTestCase):
    """With SO_REUSEPORT each worker gets sockets of its own on the same ports, so the
    kernel spreads connections over all of them; a port in use is still refused."""

    def _supervisor(self, port: int, *, reuse_port: bool = True) -> WorkerSupervisor:
        from twisted.internet.task import Clock

        from eventgw.config import GatewayConfig, ListenConfig

        config = GatewayConfig(
            listen=ListenConfig(tls=port, cleartext=None, interface="127.0.0.1"), workers=2
        )
        supervisor = WorkerSupervisor(config, [], Clock(), reuse_port=reuse_port)
        def close_all() -> None:
            for sock in supervisor.sockets:
                sock.close()
            for sockets in supervisor.worker_sockets.values():
                for sock in sockets:
                    sock.close()

        self.addCleanup(close_all)
        return supervisor

    def test_each_worker_gets_its_own_socket_and_connections_spread(self) -> None:
        """Two workers' sockets are distinct, listen on the same port, and 32 new
        connections reach both (all 32 on one would happen with probability 2**-31)."""
        supervisor = self._supervisor(0)
        supervisor.bind()
        first = supervisor._worker_sockets(0)
        second = supervisor._worker_sockets(1)
        self.assertIsNot(first[0], second[0])
        port = supervisor.ports[0]
        self.assertEqual(first[0].getsockname()[1], port)
        self.assertEqual(second[0].getsockname()[1], port)
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
        for client in clients:
            self.addCleanup(client.close)
        accepted = {0: 0, 1: 0}
        for index, sock in ((0, first[0]), (1, second[0])):
            sock.settimeout(0.5)
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:  # timeout: the queue is empty
                    break
                conn.close()
                accepted[index] += 1
        self.assertEqual(accepted[0] + accepted[1], 32)
        self.assertGreater(accepted[0], 0)
        self.assertGreater(accepted[1], 0)

    def test_port_in_use_is_refused(self) -> None:
        """A port another server listens on (even with SO_REUSEPORT) is a ConfigError
        naming listen.tls, with or without per-worker sockets."""
        from eventgw.errors import ConfigError

        other = socket.socket()
        self.addCleanup(other.close)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(5)
        port = other.getsockname()[1]
        for reuse_port in (True, False):
            supervisor = self._supervisor(port, reuse_port=reuse_port)
            with self.assertRaises(ConfigError) as caught:
                supervisor.bind()
            self.assertIn("listen.tls", str(caught.exception))

    def test_a_dead_workers_sockets_are_closed(self) -> None:
        """When a worker exits its own sockets close (so the kernel stops queueing
        connections for it) and its replacement gets new ones on the same port."""
        from twisted.python.failure import Failure

        from eventgw.workers import _WorkerProcess

        supervisor = self._supervisor(0)
        supervisor.bind()
        old = supervisor._worker_sockets(0)[0]
        port = supervisor.ports[0]
        worker = _WorkerProcess(supervisor, 0)
        supervisor.processes[0] = worker
        supervisor.worker_ended(worker, Failure(Exception("killed")))
        self.assertEqual(old.fileno(), -1)
        new = supervisor._worker_sockets(0)[0]
        self.assertEqual(new.getsockname()[1], port)
