# mypy: disable-error-code="no-untyped-call"
"""``--workers 2`` with an admin listener: one scrape is the sum over the workers.

A real supervisor and two real worker processes (``twistd eventgw``); the supervisor's
admin listener serves the workers' values from prometheus-client's multiprocess files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from eventgw.admin.service import FLUSH_INTERVAL
from tests.rig import free_port
from tests.test_workers import TWISTD_RUN, children_of, wait_for


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def not_found_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (s.name == "eventgw_requests_total" and s.labels["route"] == "none"
                    and s.labels["code"] == "404"):
                return float(s.value)
    return 0.0


def reloads(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "eventgw_config_reloads_total" and s.labels["result"] == "success":
                return float(s.value)
    return 0.0


def request_404(port: int) -> bool:
    """A cleartext HTTP/1.1 request to /nowhere on a new connection gets a 404."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(100).startswith(b"HTTP/1.1 404")
    except OSError:
        return False


class WorkersMetricsTests(SynchronousTestCase):
    def test_one_scrape_sums_the_workers(self) -> None:
        """Requests spread over two workers all show in one scrape of the supervisor's
        admin listener, and stay counted after a worker is killed and restarted."""
        folder = tempfile.mkdtemp(prefix="eventgw-workers-")
        tls, cleartext, admin = free_port(), free_port(), free_port()
        config = os.path.join(folder, "gateway.yaml")
        with open(config, "w") as f:
            f.write(
                f"listen: {{tls: {tls}, cleartext: {cleartext}, interface: 127.0.0.1}}\n"
                f"tls: {{dev_cert_dir: {folder}/cert}}\n"
                "master_api: {http: 'http://127.0.0.1:9'}\n"
                f"admin: {{listen: '127.0.0.1:{admin}'}}\n"
                "log: {access: false}\n"
            )
        supervisor = subprocess.Popen(
            [sys.executable, "-c", TWISTD_RUN, "-n", "--pidfile=", "eventgw",
             "--config", config, "--workers", "2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder,
        )

        def kill_all() -> None:
            for pid in children_of(supervisor.pid):
                os.kill(pid, signal.SIGKILL)
            if supervisor.poll() is None:
                supervisor.kill()
                supervisor.wait()

        self.addCleanup(kill_all)
        self.assertTrue(wait_for(lambda: len(children_of(supervisor.pid)) == 2))
        self.assertTrue(wait_for(lambda: request_404(cleartext)))
        self.assertTrue(wait_for(lambda: reloads(get(admin, "/metrics")[1]) == 2))
        # The workers add their counts to their files once a second: let the probing
        # requests' counts land before the base.
        time.sleep(2 * FLUSH_INTERVAL)
        base = not_found_count(get(admin, "/metrics")[1])
        for _ in range(20):
            self.assertTrue(request_404(cleartext))
        self.assertTrue(wait_for(
            lambda: not_found_count(get(admin, "/metrics")[1]) == base + 20
        ))
        self.assertEqual(get(admin, "/readyz")[0], 200)

        victim = sorted(children_of(supervisor.pid))[0]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_for(
            lambda: len(children_of(supervisor.pid)) == 2
            and victim not in children_of(supervisor.pid)
        ))
        self.assertEqual(not_found_count(get(admin, "/metrics")[1]), base + 20)

        supervisor.send_signal(signal.SIGTERM)
        self.assertIn(supervisor.wait(timeout=30), (0, -signal.SIGTERM))
