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
        self.addCleanup(lambda: supervisor.poll() is None and supervisor.kill())
        self.assertTrue(wait_for(lambda: len(children_of(supervisor.pid)) == 2))
        workers = children_of(supervisor.pid)
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in children_of(supervisor.pid)])
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
