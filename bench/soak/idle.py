"""Idle TLS connections to the gateway: open N (handshake complete), hold them, count losses.

``python idle.py --port P --ca PEM --count N --status FILE [--until EPOCH]``

Half the connections negotiate ALPN ``h2`` (they send the client preface and SETTINGS,
acknowledge the server's SETTINGS and answer its PINGs, as an idle HTTP/2 client does),
half ``http/1.1`` (they send nothing). ``FILE`` is rewritten every few seconds with a
JSON line: how many are open, how many the gateway closed, how many failed to open.
The soft fd limit is raised to the hard one first (this process only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import ssl
import struct
import sys
import time
from pathlib import Path
from typing import Any

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Holder:
    """Opens and holds the connections; ``stats`` says how it goes."""

    def __init__(self, host: str, port: int, ca: str, parallel: int = 64) -> None:
        self.host, self.port = host, port
        self.contexts = {}
        for alpn in ("h2", "http/1.1"):
            context = ssl.create_default_context(cafile=ca)
            context.set_alpn_protocols([alpn])
            self.contexts[alpn] = context
        self.open = 0
        self.closed_by_peer = 0
        self.failed = 0
        self.alpn: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self._gate = asyncio.Semaphore(parallel)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def stats(self) -> dict[str, Any]:
        return {"t": time.time(), "open": self.open, "closed_by_peer": self.closed_by_peer,
                "failed": self.failed, "alpn": self.alpn, "errors": self.errors}

    async def open_many(self, count: int) -> None:
        await asyncio.gather(*(self._open(i) for i in range(count)))

    async def _open(self, index: int) -> None:
        alpn = "h2" if index % 2 == 0 else "http/1.1"
        async with self._gate:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    self.host, self.port, ssl=self.contexts[alpn], limit=65536), 30)
            except (TimeoutError, OSError, ssl.SSLError) as error:
                self.failed += 1
                kind = type(error).__name__
                self.errors[kind] = self.errors.get(kind, 0) + 1
                return
        got = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        self.alpn[str(got)] = self.alpn.get(str(got), 0) + 1
        self.open += 1
        self._writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._hold(reader, writer, got == "h2"))
        self._tasks.add(task)

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    h2: bool) -> None:
        try:
            if h2:
                writer.write(PREFACE + SETTINGS)
                while True:
                    head = await reader.readexactly(9)
                    length = int.from_bytes(head[:3], "big")
                    kind, flags = head[3], head[4]
                    payload = await reader.readexactly(length) if length else b""
                    if kind == 4 and not flags & 1:
                        writer.write(SETTINGS_ACK)
                    elif kind == 6 and not flags & 1:
                        writer.write(struct.pack(">I", 8)[1:] + b"\x06\x01\x00\x00\x00\x00"
                                     + payload)
            else:
                while await reader.read(65536):
                    pass
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        self.open -= 1
        self.closed_by_peer += 1

    def close_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()


async def hold(options: argparse.Namespace) -> None:
    holder = Holder(options.host, options.port, options.ca, options.parallel)
    status: Path = options.status

    def report() -> None:
        status.write_text(json.dumps(holder.stats()) + "\n")

    started = time.time()
    opening = asyncio.get_running_loop().create_task(holder.open_many(options.count))
    while not opening.done():
        report()
        await asyncio.sleep(1)
    stats = holder.stats()
    stats["open_seconds"] = time.time() - started
    status.write_text(json.dumps(stats) + "\n")
    while options.until is None or time.time() < options.until:
        await asyncio.sleep(5)
        stats.update(holder.stats())
        status.write_text(json.dumps(stats) + "\n")
    holder.close_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--parallel", type=int, default=64, help="handshakes at once")
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--until", type=float, default=None)
    options = parser.parse_args(argv)
    limit = raise_fd_limit()
    if limit < options.count + 100:
        print(f"idle: fd limit {limit} is too low for {options.count}", file=sys.stderr)
        return 1
    asyncio.run(hold(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
