# -*- test-case-name: tests.test_lifecycle -*-
"""Signals of a running gateway process, its supervisor's death, and worker log lines.

Shell module.  :class:`StopSignals` replaces the SIGTERM and SIGINT handlers twistd's
reactor installs: the first such signal starts the drain (the reactor stops, which
stops the services) and any later one stops at once.  Twisted's own handlers would
turn a second signal into an error message (the reactor is already stopping) and
make twistd end a clean drain by killing itself with the signal (status 143); ours
leave the exit status 0.  SIGHUP, which would otherwise kill the process without a
word (status 129), reloads the configuration.

A ``--workers`` child runs in a process group of its own, so a signal sent to the
supervisor's whole group (Ctrl-C in a terminal) reaches the workers once, forwarded by
the supervisor, and is never counted as their second.  :class:`ParentWatch` notices
that the supervisor is gone (the worker's parent process changes) and starts the
drain.  :func:`tag_worker_logs` makes each log line of a worker name the worker.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import provider

__all__ = [
    "PARENT_POLL_INTERVAL",
    "SUPERVISOR_ENV",
    "WORKER_ENV",
    "ParentWatch",
    "StopSignals",
    "stop_reactor",
    "tag_worker_logs",
]

PARENT_POLL_INTERVAL: Final = 1.0

#: Set by the ``--workers`` supervisor in each worker's environment: the worker's index,
#: and the supervisor's pid.
WORKER_ENV: Final = "EVENTGW_WORKER"
SUPERVISOR_ENV: Final = "EVENTGW_SUPERVISOR_PID"

_NAMES: Final[dict[int, str]] = {
    signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT", signal.SIGHUP: "SIGHUP"
}


class StopSignals:
    """SIGTERM/SIGINT: ``on_drain`` the first time, ``on_stop_now`` every later time;
    SIGHUP: ``on_reload``.  Each runs on the reactor thread, not in the handler.

    :ivar received: the stop signals received so far.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        on_drain: Callable[[], object],
        on_stop_now: Callable[[], object],
        on_reload: Callable[[], object],
    ) -> None:
        self.reactor = reactor
        self.on_drain = on_drain
        self.on_stop_now = on_stop_now
        self.on_reload = on_reload
        self.received = 0

    def install(self) -> None:
        """Install the handlers: when the service starts, so that no signal sent
        after the ports are announced finds the default action (a signal before the
        reactor runs waits for it), and again once the reactor runs, after its own
        SIGTERM and SIGINT handlers."""
        signal.signal(signal.SIGTERM, self._stop_signal)
        signal.signal(signal.SIGINT, self._stop_signal)
        signal.signal(signal.SIGHUP, self._reload_signal)

    def _stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        first = self.received == 1
        self.reactor.callFromThread(self._stop, signum, first)

    def _reload_signal(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self._reload)

    def _stop(self, signum: int, first: bool) -> None:
        name = _NAMES.get(signum, str(signum))
        if first:
            self.log.info("received {signal}: draining", signal=name)
            self.on_drain()
        else:
            self.log.warn("received {signal} again: stopping now", signal=name)
            self.on_stop_now()

    def _reload(self) -> None:
        self.log.info("received SIGHUP: reloading the configuration")
        self.on_reload()


def stop_reactor(reactor: Any) -> None:
    """``reactor.stop()``, unless it is already stopping."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


class ParentWatch:
    """Calls ``on_gone`` once when this process's parent (the supervisor) is gone."""

    log = Logger()

    def __init__(
        self,
        parent_pid: int,
        on_gone: Callable[[], object],
        reactor: Any,
        interval: float = PARENT_POLL_INTERVAL,
    ) -> None:
        self.parent_pid = parent_pid
        self._on_gone = on_gone
        self._interval = interval
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self._interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() == self.parent_pid:
            return
        self.stop()
        self.log.warn(
            "the supervisor (pid {pid}) is gone: draining", pid=self.parent_pid
        )
        self._on_gone()


def tag_worker_logs(index: int) -> ILogObserver:
    """Make every later log event of this process say ``worker <index>`` in its system
    field (the ``[...]`` of a log line), before the log file sees it.

    Call it before logging begins: the observer is then ahead of twistd's log file in
    the publisher's list.  Returns the observer (to remove it again).
    """
    tag = f"worker {index}"

    @provider(ILogObserver)
    def observer(event: LogEvent) -> None:
        system = event.get("log_system")
        if system is None or system == "-":
            event["log_system"] = tag
        elif not str(system).startswith(tag):
            event["log_system"] = f"{tag},{system}"

    globalLogPublisher.addObserver(observer)
    return observer  # type: ignore[no-any-return]
