# -*- test-case-name: tests.test_websocket -*-
"""The demo Master API's WebSocket endpoints, beside its twisted.web site.

``GET /api/ws/echo`` with ``Upgrade: websocket`` is an echo: every message comes back
as it was sent (text as text, binary as binary), pings are answered, a Close is
answered and the connection closed.  The WebSocket protocol is ``wsproto``'s.

:class:`WebSocketSite` is a ``twisted.web`` ``Site`` whose connections first look at
the request head: a WebSocket handshake for ``/api/ws/...`` goes to
:class:`EchoWebSocket`, anything else to the site's usual HTTP channel, with the bytes
read so far replayed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web import server
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

__all__ = ["EchoWebSocket", "WebSocketSite"]

# A request head larger than this is left to the HTTP channel (which refuses it).
_MAX_HEAD = 64 * 1024


def _is_websocket_head(head: bytes) -> bool:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or not parts[1].startswith(b"/api/ws/"):
        return False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class EchoWebSocket(Protocol):
    """One WebSocket connection: the echo."""

    def __init__(self) -> None:
        self.ws = WSConnection(ConnectionType.SERVER)

    def dataReceived(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        out: list[bytes] = []
        close = False
        for event in ws.events():
            if isinstance(event, Request):
                if event.target.split("?")[0] != "/api/ws/echo":
                    out.append(ws.send(RejectConnection(status_code=404)))
                    close = True
                    continue
                offered = list(event.subprotocols)
                out.append(ws.send(AcceptConnection(
                    subprotocol=offered[0] if offered else None
                )))
            elif isinstance(event, (TextMessage, BytesMessage)):
                message: Message[Any] = event
                out.append(ws.send(type(message)(
                    data=message.data, message_finished=message.message_finished
                )))
            elif isinstance(event, Ping):
                out.append(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                out.append(ws.send(event.response()))
                close = True
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if close and self.transport is not None:
            self.transport.loseConnection()


class _FrontDoor(Protocol):
    """Reads the first request head, then hands the connection on."""

    def __init__(self, http: Protocol) -> None:
        self.http = http
        self.inner: Protocol | None = None
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) < _MAX_HEAD:
            return
        head = self.buffer[: max(end, 0)]
        inner: Protocol = EchoWebSocket() if _is_websocket_head(head) else self.http
        self.inner = inner
        if self.transport is not None:
            inner.makeConnection(self.transport)
        buffered, self.buffer = self.buffer, b""
        inner.dataReceived(buffered)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)


class WebSocketSite(server.Site):
    """A ``Site`` that also serves the WebSocket endpoints under ``/api/ws/``."""

    def buildProtocol(self, addr: Any) -> Protocol:
        http = super().buildProtocol(addr)
        assert http is not None
        return _FrontDoor(http)
