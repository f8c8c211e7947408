# -*- test-case-name: tests.test_logwriter -*-
"""The process's log output: one observer for every event, lines written off the reactor.

Shell module (a writer thread, the reactor's timers).  Under ``twistd eventgw`` the
gateway's :class:`GatewayLogObserver` is the log observer twistd installs (it asks the
application for its ``ILogObserver``; see :func:`eventgw.tap.makeService`), in place of
twistd's own text observer, which formats the clock and flushes the file once per
line.  It writes ``log.format`` lines (:mod:`eventgw.logformat`): text, as twistd
writes them, or JSON.

Access events (namespace ``eventgw.access``, one per request) take a short path: their
text is the one %-format the access log prepared, the timestamp is the current
second's, and the line goes to a :class:`LogWriter` buffer.  The buffer is handed to
the writer's own thread once per :data:`FLUSH_INTERVAL`, which writes it in chunks of
at most :data:`PIPE_CHUNK` bytes (writes of that size to a pipe are atomic, so
``--workers`` processes sharing one stdout do not split each other's lines).  A slow
disk or a reader that stopped therefore never stalls the reactor: when more than
:data:`MAX_PENDING_LINES` lines wait to be written, further access lines are dropped,
counted in ``eventgw_log_lines_dropped_total``, and reported in one line once the
writer has caught up.  The gateway's own lines are never dropped.

Twisted's own announcements of a listening port (``GatewayFactory starting on 9001``,
``(TCP Port 9001 Closed)``) and ``Starting factory`` lines are left out: the service
logs one line per listener itself.

While the reactor is not running (before the start, after the stop, in a process
about to daemonize), lines are written at once by the caller, so nothing waits for a
reactor turn that will not come; what is left at exit is written by an ``atexit``
handler.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from collections import deque
from typing import IO, Any, Final

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    eventAsText,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

from eventgw.admin import metrics
from eventgw.logformat import LineFormat

__all__ = [
    "FLUSH_INTERVAL",
    "MAX_PENDING_LINES",
    "PIPE_CHUNK",
    "GatewayLogObserver",
    "LogWriter",
    "twistd_log_observer",
]

# Lines wait at most this long in the reactor thread's buffer: short enough to read a
# log as it happens, long enough that a busy gateway hands over hundreds of lines at
# once (one timer and one wake-up of the writer thread per interval, not per line).
FLUSH_INTERVAL: Final = 0.02
# Lines handed over but not yet written, at most, before access lines are dropped: a
# few seconds of a busy gateway's access log, a few MiB.
MAX_PENDING_LINES: Final = 20_000
# POSIX PIPE_BUF on Linux: a write of at most this many bytes to a pipe is atomic.
PIPE_CHUNK: Final = 4096
# How long the exit waits for the writer thread to write what is left.
CLOSE_TIMEOUT: Final = 5.0

_ACCESS_NAMESPACE: Final = "eventgw.access"
_PORT_NOISE: Final = re.compile(r".+ starting on \d+|\(\w+ Port \d+ Closed\)")
_FACTORY_NOISE: Final = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})
# What an access event carries that is not one of its fields.
_NOT_FIELDS: Final = frozenset({"access_text"})


class LogWriter:
    """Lines in from the reactor thread, written to ``out`` by a thread of its own.

    :ivar dropped: access lines dropped so far (the writer was too far behind).
    """

    log = Logger()

    def __init__(
        self,
        out: IO[str],
        reactor: Any,
        *,
        max_pending: int = MAX_PENDING_LINES,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.out = out
        self.reactor = reactor
        self.max_pending = max_pending
        self.interval = interval
        self.dropped = 0
        self._unreported = 0
        self._batch: list[str] = []
        self._timer: Any = None
        self._closed = False
        self._start_thread_state()

    def _start_thread_state(self) -> None:
        # Fresh in every process: a thread (and a lock held by it) does not survive fork.
        self._pid = os.getpid()
        self._lock = threading.Condition()
        self._queue: deque[list[str]] = deque()
        self._queued = 0  # lines handed over and not yet written
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Lines waiting to be written: in the buffer and handed to the thread."""
        return len(self._batch) + self._queued

    def write(self, line: str, *, droppable: bool = False) -> None:
        """Queue ``line``; a droppable (access) line is dropped when too much waits."""
        if droppable and self._queued + len(self._batch) >= self.max_pending:
            self.dropped += 1
            self._unreported += 1
            metrics.record_log_dropped(1)
            return
        self._batch.append(line)
        if not self.reactor.running:
            self.hand_over()
            self.wait_written(CLOSE_TIMEOUT)
        elif self._timer is None:
            self._timer = self.reactor.callLater(self.interval, self.hand_over)

    def hand_over(self) -> None:
        """Give the buffer to the writer thread."""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        batch, self._batch = self._batch, []
        if batch:
            if os.getpid() != self._pid:
                self._start_thread_state()
            with self._lock:
                self._queue.append(batch)
                self._queued += len(batch)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="eventgw-log-writer", daemon=True
                    )
                    self._thread.start()
                self._lock.notify_all()
        if not self._unreported:
            return
        if self._queued < self.max_pending // 2:
            count, self._unreported = self._unreported, 0
            self.log.warn(
                "{count} access-log lines dropped: the log output could not keep up",
                count=count,
            )
        elif self._timer is None and self.reactor.running:
            # Report once the writer has caught up, even if no line comes meanwhile.
            self._timer = self.reactor.callLater(self.interval, self.hand_over)

    def wait_written(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) until every handed-over line is written."""
        if self._thread is None or os.getpid() != self._pid:
            return self._queued == 0
        with self._lock:
            return self._lock.wait_for(lambda: self._queued == 0, timeout)

    def close(self) -> None:
        """Write what is left and stop the thread (at exit)."""
        if self._closed:
            return
        self.hand_over()
        self.wait_written(CLOSE_TIMEOUT)
        self._closed = True
        with self._lock:
            self._lock.notify_all()

    def _run(self) -> None:
        lock, queue, out = self._lock, self._queue, self.out
        while True:
            with lock:
                lock.wait_for(lambda: bool(queue) or self._closed)
                if not queue:
                    return
                batches = list(queue)
                queue.clear()
            count = 0
            for batch in batches:
                count += len(batch)
                self._write_chunks(out, batch)
            try:
                out.flush()
            except (OSError, ValueError):
                pass
            with lock:
                self._queued -= count
                lock.notify_all()

    @staticmethod
    def _write_chunks(out: IO[str], lines: list[str]) -> None:
        chunk: list[str] = []
        size = 0
        for line in lines:
            length = len(line)
            if size + length > PIPE_CHUNK and chunk:
                _write(out, "".join(chunk))
                chunk, size = [], 0
            chunk.append(line)
            size += length
        if chunk:
            _write(out, "".join(chunk))


def _write(out: IO[str], text: str) -> None:
    try:
        out.write(text)
    except (OSError, ValueError):
        pass  # a closed or broken output: the lines are lost, the gateway goes on


@implementer(ILogObserver)
class GatewayLogObserver:
    """Every log event of the process, as a ``log.format`` line through a LogWriter."""

    def __init__(self, writer: LogWriter, line_format: LineFormat) -> None:
        self.writer = writer
        self.format = line_format

    def __call__(self, event: LogEvent) -> None:
        namespace = event.get("log_namespace")
        if namespace == _ACCESS_NAMESPACE:
            self._access(event)
            return
        if _is_noise(event, namespace):
            return
        fmt = self.format
        if fmt.json:
            message = eventAsText(event, includeTimestamp=False, includeSystem=False)
            if not message:
                return
            when = event.get("log_time") or 0.0
            source = _source(event, fmt.worker)
            line = fmt.json_line(when, _level(event), source, message)
        else:
            text = formatEventAsClassicLogText(event, formatTime=fmt.text_time)
            if text is None:
                return
            line = text
        self.writer.write(line)

    def _access(self, event: LogEvent) -> None:
        render = event.get("access_text")
        message = render() if callable(render) else formatEvent(event)
        when = event.get("log_time") or 0.0
        fmt = self.format
        if fmt.json:
            fields = {k: v for k, v in event.items()
                      if not k.startswith("log_") and k not in _NOT_FIELDS}
            line = fmt.json_line(when, _level(event), _source(event, fmt.worker), message, fields)
        else:
            line = fmt.text_line(when, _system(event), message)
        self.writer.write(line, droppable=True)


def _level(event: LogEvent) -> str:
    level = event.get("log_level")
    return getattr(level, "name", "-") if level is not None else "-"


def _source(event: LogEvent, worker: int | None) -> str:
    """The ``system`` of a JSON line: the event's system, else its namespace; without
    the ``worker N`` tag a ``--workers`` worker adds (JSON has its own ``worker``)."""
    system = event.get("log_system")
    if system is not None and worker is not None:
        tag = f"worker {worker}"
        text = str(system)
        if text == tag:
            system = None
        elif text.startswith(tag + ","):
            system = text[len(tag) + 1:]
    return str(system) if system is not None else str(event.get("log_namespace") or "-")


def _system(event: LogEvent) -> str:
    system = event.get("log_system")
    if system is not None:
        return str(system)
    return f"{event.get('log_namespace') or '-'}#{_level(event)}"


def _is_noise(event: LogEvent, namespace: object) -> bool:
    """Twisted's own port and factory announcements (the service logs its own)."""
    if namespace == "log_legacy":
        text = event.get("log_text")
        if text is None:
            message = event.get("message")
            text = message[0] if isinstance(message, tuple) and len(message) == 1 else None
        return isinstance(text, str) and _PORT_NOISE.fullmatch(text) is not None
    return event.get("log_format") in _FACTORY_NOISE


def twistd_log_observer(
    twistd_options: Any, log_format: str, worker: int | None, reactor: Any = None
) -> GatewayLogObserver | None:
    """The observer for a ``twistd eventgw`` process, writing where twistd would
    (stdout with ``-n`` or ``--logfile=-``, else ``--logfile``, default
    ``twistd.log``); ``None`` where twistd's own choice stays (``--syslog``,
    ``--logger``)."""
    if twistd_options.get("syslog") or twistd_options.get("logger"):
        return None
    from twisted.python.logfile import LogFile

    from eventgw._reactor import default_reactor

    name = twistd_options.get("logfile")
    nodaemon = bool(twistd_options.get("nodaemon"))
    out: IO[str]
    if name == "-" or (nodaemon and not name):
        out = sys.stdout
    else:
        out = LogFile.fromFullPath(name or "twistd.log")
    writer = LogWriter(out, default_reactor(reactor))
    atexit.register(writer.close)
    return GatewayLogObserver(writer, LineFormat(log_format, worker))
