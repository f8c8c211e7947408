"""gRPC-Web from the JavaScript ecosystem: @connectrpc/connect's gRPC-Web transport,
run under Node against the real gateway (TLS, ALPN) and the demo Master API.

The client is ``tests/browser/grpcweb_client.mjs`` (its packages pinned by
``tests/browser/package-lock.json``; ``npm ci`` there installs them, as ``.ci/run``
does).  Node and the packages are required: without them the test fails, it is never
skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from demo.masterapi.grpc_server import serve as serve_master_api
from eventgw.admin.metrics import REGISTRY, flush
from tests.rig import gateway_config, start_gateway

BROWSER = Path(__file__).parent / "browser"


def node_client(base_url: str, flavour: str, http_version: str, ca_file: str) -> dict[str, Any]:
    """Run the Node client; its JSON result."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed (.ci/run installs it)")
    if not (BROWSER / "node_modules" / "@connectrpc" / "connect-node").is_dir():
        raise AssertionError("run `npm ci` in tests/browser (.ci/run does)")
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": ca_file}
    done = subprocess.run(
        [node, "grpcweb_client.mjs", base_url, flavour, http_version],
        cwd=BROWSER, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"node client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class ConnectGrpcWebTests(TestCase):
    """Unary and server-streaming calls, errors with details, deadline and cancel."""

    timeout = 180

    @inlineCallbacks
    def test_connect_client(self) -> Any:
        """Binary over HTTP/2 and HTTP/1.1 (connect-node), text over HTTP/1.1
        (connect-web over fetch): every call ends as the Master API decided."""
        server, port, servicer = serve_master_api(0)
        self.addCleanup(lambda: server.stop(grace=None).wait(10))
        cancelled = threading.Event()
        servicer.on_cancel = lambda method: cancelled.set()
        gw = start_gateway(self, gateway_config(grpc=f"127.0.0.1:{port}"))
        base = f"https://localhost:{gw.tls_port}"
        for flavour, version in (("binary", "2"), ("binary", "1.1"), ("text", "1.1")):
            cancelled.clear()
            flush()
            labels = {"flavour": flavour, "grpc_code": "OK"}
            before = REGISTRY.get_sample_value("eventgw_grpc_web_calls_total", labels) or 0.0
            out = yield deferToThread(node_client, base, flavour, version, gw.ca_file)
            where = f"{flavour} HTTP/{version}"
            self.assertEqual(out["unary"], {"id": "7", "name": "item 7", "payload": 3}, where)
            self.assertEqual((out["echoHeader"], out["echoTrailer"]), ("node", "node"), where)
            self.assertEqual(out["stream"], ["0", "1", "2"], where)
            self.assertEqual(out["error"], {
                "code": 5, "codeName": "NotFound", "message": "no such item", "details": ["d1"],
            }, where)
            self.assertEqual(out["deadline"]["codeName"], "DeadlineExceeded", where)
            self.assertEqual(out["cancel"]["codeName"], "Canceled", where)
            # The abort reached the Master API as a cancellation.
            self.assertTrue((yield deferToThread(cancelled.wait, 15)), where)
            # The calls were counted under their flavour (unary and stream ended OK).
            flush()
            after = REGISTRY.get_sample_value("eventgw_grpc_web_calls_total", labels) or 0.0
            self.assertEqual(after - before, 2, where)
