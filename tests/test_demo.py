"""``./demo/run`` (``python -m demo.launch``): a taken port stops it before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def launch(*args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "demo.launch", *args], capture_output=True, text=True,
        timeout=30, cwd=ROOT, env=dict(os.environ, PYTHONPATH=path),
    )


class DemoPortTests(SynchronousTestCase):
    def ports(self, **given: int) -> list[str]:
        tls, cleartext, http, grpc, broker = free_ports(5)
        chosen = {"port": tls, "cleartext-port": cleartext, "http-port": http,
                  "grpc-port": grpc, "broker-port": broker, **given}
        return [part for flag, port in chosen.items() for part in (f"--{flag}", str(port))]

    def test_taken_port_is_named_and_nothing_starts(self) -> None:
        """A port some other program listens on stops the demo at once: one line
        naming the port and its flag, exit 1, no service started, no "demo is up"."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            result = launch(*self.ports(**{"http-port": port}))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertEqual(
            result.stderr.splitlines(),
            [f"demo: port {port} for the demo Master API (HTTP) is taken (cannot listen on "
             f"127.0.0.1:{port}: Address already in use); stop what listens there, or choose "
             "another port with --http-port N"],
        )

    def test_port_given_twice(self) -> None:
        """The same port for two of the demo's servers is refused before anything starts."""
        (port,) = free_ports(1)
        result = launch(*self.ports(**{"port": port, "broker-port": port}))
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(result.stdout, "")
        self.assertIn(f"port {port} is given to both --port and --broker-port", result.stderr)
