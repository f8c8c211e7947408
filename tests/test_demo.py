"""``./demo/run`` (``python -m demo.launch``): a taken port stops it before anything starts;
once up, its gateway has an admin listener, whose URL the demo prints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

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
        tls, cleartext, http, grpc, broker, admin = free_ports(6)
        chosen = {"port": tls, "cleartext-port": cleartext, "http-port": http,
                  "grpc-port": grpc, "broker-port": broker, "admin-port": admin, **given}
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


class DemoAdminTests(SynchronousTestCase):
    def test_demo_starts_an_admin_listener_and_prints_it(self) -> None:
        """The running demo's gateway has an admin listener; the demo prints its URL,
        and /readyz there answers 200 serving."""
        tls, cleartext, http, grpc, broker, admin = free_ports(6)
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        demo = subprocess.Popen(
            [sys.executable, "-m", "demo.launch", "--port", str(tls), "--cleartext-port",
             str(cleartext), "--http-port", str(http), "--grpc-port", str(grpc),
             "--broker-port", str(broker), "--admin-port", str(admin)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=path), start_new_session=True,
        )

        def stop() -> None:
            if demo.poll() is None:
                demo.send_signal(signal.SIGTERM)
                try:
                    demo.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait()
            assert demo.stdout is not None
            demo.stdout.close()

        self.addCleanup(stop)
        assert demo.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith("admin listener on"):
                break
        self.assertIn(f"admin listener on http://127.0.0.1:{admin} (/healthz, /readyz, /metrics)\n",
                      seen, "".join(seen))
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=10) as answer:
            self.assertEqual(answer.status, 200)
            self.assertEqual(json.loads(answer.read())["status"], "serving")
