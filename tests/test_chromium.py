"""A real headless Chromium: the demo page through the gateway over TLS (HTTP/2 by
ALPN) does a gRPC-Web call, a server-streaming call, an error, and a WebSocket echo.

Chromium runs with ``--remote-debugging-port``; the test asks it, over the DevTools
protocol (the ``websockets`` client), for the page's ``window.demoDone`` result.
``.ci/run`` installs Chromium when it is missing; without it the test fails, it is
never skipped.  The dev certificate is not in Chromium's trust store, so it runs with
``--ignore-certificate-errors`` (the connection is TLS all the same).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from websockets.sync.client import connect as ws_connect

from demo.masterapi.grpc_server import serve as serve_master_api
from demo.masterapi.http_server import MasterApi
from demo.masterapi.websocket import WebSocketSite
from tests.rig import gateway_config, start_gateway

DEADLINE = 60.0


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("Chromium is not installed (.ci/run installs it)")


def run_page(url: str) -> dict[str, Any]:
    """Open ``url`` in headless Chromium; the page's result object."""
    profile = tempfile.mkdtemp(prefix="eventgw-chromium-")
    process = subprocess.Popen(
        [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu",
         "--ignore-certificate-errors", "--no-first-run", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        active = Path(profile) / "DevToolsActivePort"
        while not active.exists() or not active.read_text().strip():
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = int(active.read_text().split()[0])
        page: str | None = None
        while page is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"
                         and t["url"].startswith(url)), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise AssertionError("the page never opened")
                time.sleep(0.05)
        with ws_connect(page, open_timeout=10, max_size=None) as devtools:
            ident = 0
            while True:
                ident += 1
                devtools.send(json.dumps({"id": ident, "method": "Runtime.evaluate", "params": {
                    "expression": "window.demoDone ? window.demoDone.then(JSON.stringify) : null",
                    "awaitPromise": True, "returnByValue": True,
                }}))
                while True:
                    answer = json.loads(devtools.recv(DEADLINE))
                    if answer.get("id") == ident:
                        break
                value = answer.get("result", {}).get("result", {}).get("value")
                if isinstance(value, str):
                    result: dict[str, Any] = json.loads(value)
                    return result
                if time.monotonic() > deadline:
                    raise AssertionError(f"the page never finished: {answer}")
                time.sleep(0.1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


class ChromiumTests(TestCase):
    """The demo page in a real browser."""

    timeout = 120

    @inlineCallbacks
    def test_demo_page(self) -> Any:
        """Loaded over HTTP/2, the page's gRPC-Web calls and WebSocket echo all work."""
        from twisted.internet import reactor

        server, grpc_port, _ = serve_master_api(0)
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        site = WebSocketSite(MasterApi())
        site.noisy = False
        listening = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(listening.stopListening)
        gw = start_gateway(self, gateway_config(
            api=f"http://127.0.0.1:{listening.getHost().port}", grpc=f"127.0.0.1:{grpc_port}",
        ))
        result = yield deferToThread(run_page, f"https://localhost:{gw.tls_port}/api/browser/")
        self.assertEqual(result.get("protocol"), "h2", result)
        self.assertEqual(result["unary"], {
            "status": "0", "item": {"id": "42", "name": "item 42", "payload": 5},
        })
        self.assertEqual(result["stream"], {"status": "0", "ids": ["0", "1", "2"]})
        self.assertEqual(result["error"], {"code": "5", "message": "no such item"})
        self.assertEqual(result["echo"], "hello over a WebSocket")
