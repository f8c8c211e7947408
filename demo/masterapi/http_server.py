"""The demo Master API's HTTP side: ``python -m demo.masterapi.http_server --port N``.

A small twisted.web application, so the README's curl lines have something real to
reach through the gateway:

- ``GET /api/hello``: a JSON greeting that shows what the gateway forwarded
  (``X-Forwarded-*``, the path and query as received);
- ``GET /api/items`` and ``GET /api/items/<id>``: a tiny in-memory collection;
- ``POST /api/items``: adds an item (JSON body), answers 201;
- ``POST /api/echo``: echoes the request body with its content type;
- ``GET /api/bytes/<n>``: ``n`` bytes, for trying large responses;
- ``GET /api/ws/echo`` (WebSocket): an echo (:mod:`demo.masterapi.websocket`);
- ``GET /api/browser/``: a page that calls this Master API over gRPC-Web and the
  WebSocket echo, through the gateway (``demo/masterapi/browser/index.html``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import endpoints
from twisted.web import resource, server

__all__ = ["MasterApi", "main"]

MAX_BYTES = 64 * 1024 * 1024


def _json(request: server.Request, status: int, payload: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(payload, indent=2).encode() + b"\n"


BROWSER_DIR = Path(__file__).parent / "browser"
_PAGES = {
    (): ("index.html", b"text/html; charset=utf-8"),
    ("app.js",): ("app.js", b"text/javascript; charset=utf-8"),
}


def _page(request: server.Request, rest: list[str]) -> bytes:
    """The demo page and its script (``/api/browser/``, ``/api/browser/app.js``)."""
    found = _PAGES.get(tuple(rest))
    if found is None:
        return _json(request, 404, {"error": "no such page"})
    name, content_type = found
    request.setHeader(b"content-type", content_type)
    return (BROWSER_DIR / name).read_bytes()


class MasterApi(resource.Resource):
    """Everything under ``/api``."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {
            "1": {"id": "1", "name": "first item"},
            "2": {"id": "2", "name": "second item"},
        }

    def render(self, request: server.Request) -> bytes:  # type: ignore[override]
        path = request.path.decode("latin-1")
        method = request.method.decode("latin-1")
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["api"]:
            return _json(request, 404, {"error": f"no such path {path}"})
        rest = parts[1:]
        if rest[:1] == ["browser"] and method == "GET":
            return _page(request, rest[1:])
        if rest == ["hello"]:
            return _json(request, 200, {
                "hello": "from the demo Master API",
                "method": method,
                "uri": request.uri.decode("latin-1"),
                "forwarded": {
                    name.decode(): (request.getHeader(name) or b"").decode("latin-1")
                    for name in (b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto")
                },
            })
        if rest == ["items"] and method == "GET":
            return _json(request, 200, {"items": list(self.items.values())})
        if rest == ["items"] and method == "POST":
            try:
                item = json.loads(request.content.read() or b"{}")  # type: ignore[union-attr]
            except ValueError:
                return _json(request, 400, {"error": "body is not JSON"})
            if not isinstance(item, dict):
                return _json(request, 400, {"error": "body must be a JSON object"})
            item["id"] = str(len(self.items) + 1)
            self.items[item["id"]] = item
            return _json(request, 201, item)
        if len(rest) == 2 and rest[0] == "items" and method == "GET":
            found = self.items.get(rest[1])
            if found is None:
                return _json(request, 404, {"error": f"no item {rest[1]}"})
            return _json(request, 200, found)
        if rest == ["echo"] and method == "POST":
            request.setHeader(
                b"content-type",
                request.getHeader(b"content-type") or b"application/octet-stream",
            )
            return request.content.read()  # type: ignore[union-attr,no-any-return]
        if len(rest) == 2 and rest[0] == "bytes" and rest[1].isdigit():
            size = min(int(rest[1]), MAX_BYTES)
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * size
        return _json(request, 404, {"error": f"no such path {method} {path}"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor
    from twisted.python import log

    log.startLogging(sys.stdout)
    from demo.masterapi.websocket import WebSocketSite

    site = WebSocketSite(MasterApi())
    site.noisy = False
    endpoint = endpoints.TCP4ServerEndpoint(reactor, args.port, interface=args.interface)
    endpoint.listen(site)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
