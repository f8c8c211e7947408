# -*- test-case-name: tests.test_workers -*-
"""``--workers N``: N gateway processes sharing the listening ports.

Shell module.  The supervisor binds the listening sockets itself (so a port in use is
reported once, naming the key) and starts each worker as a *fresh* process -- a new
``twistd eventgw`` with the same options plus ``--adopt-fds`` -- never as a ``fork()``
of itself: grpcio's channels and threads do not survive a fork.  Every worker adopts
the same listening sockets (``IReactorSocket.adoptStreamPort``) and the kernel hands
each new connection to one of them.  The supervisor never accepts a connection.

A worker that dies is started again after a back-off.  SIGTERM to the supervisor
(``stopService``) is passed to every worker, which drains its connections and exits;
one still alive after the grace period is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw.config import GatewayConfig
from eventgw.errors import ConfigError

__all__ = ["WorkerSupervisor", "bind_listening_socket"]

# Restart back-off: a worker that crashes at start must not spin the CPU.
RESTART_DELAY_MIN: Final = 0.5
RESTART_DELAY_MAX: Final = 30.0
# A worker that lived this long is considered healthy: its next restart is immediate-ish.
HEALTHY_AFTER_SECONDS: Final = 10.0
# How long workers get to drain after SIGTERM before SIGKILL.
STOP_GRACE_SECONDS: Final = 15.0
LISTEN_BACKLOG: Final = 1024
# The file descriptor numbers the listening sockets get in each worker.
CHILD_FD_TLS: Final = 3
CHILD_FD_CLEARTEXT: Final = 4


def bind_listening_socket(interface: str, port: int, key: str) -> socket.socket:
    """A listening TCP socket, or a ConfigError naming ``key`` (port in use...)."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise ConfigError(key, f"cannot listen on {interface}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.started_at = supervisor.reactor.seconds()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(service.Service):
    """Binds the ports, runs ``workers`` gateway processes on them, restarts the dead.

    :ivar worker_args: the ``twistd eventgw`` options each worker is started with.
    """

    log = Logger()

    def __init__(self, config: GatewayConfig, worker_args: list[str], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.worker_args = worker_args
        self.reactor = reactor
        self.sockets: list[socket.socket] = []
        self.processes: dict[int, _WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}

    def bind(self) -> None:
        """Bind the listening sockets (ConfigError naming the key on failure)."""
        listen = self.config.listen
        self.sockets.append(bind_listening_socket(listen.interface, listen.tls, "listen.tls"))
        if listen.cleartext is not None:
            try:
                self.sockets.append(
                    bind_listening_socket(listen.interface, listen.cleartext, "listen.cleartext")
                )
            except ConfigError:
                self.sockets[0].close()
                self.sockets = []
                raise

    @property
    def ports(self) -> list[int]:
        return [int(s.getsockname()[1]) for s in self.sockets]

    def startService(self) -> None:
        if not self.sockets:
            self.bind()
        service.Service.startService(self)
        self.log.info(
            "eventgw supervisor: {workers} worker processes sharing {interface} ports {ports}",
            workers=self.config.workers,
            interface=self.config.listen.interface,
            ports=self.ports,
        )
        for index in range(self.config.workers):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        fds = [str(CHILD_FD_TLS)]
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2, CHILD_FD_TLS: self.sockets[0].fileno()}
        if len(self.sockets) > 1:
            fds.append(str(CHILD_FD_CLEARTEXT))
            child_fds[CHILD_FD_CLEARTEXT] = self.sockets[1].fileno()
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "eventgw", *self.worker_args,
            "--workers", "1", "--adopt-fds", ",".join(fds),
        ]
        worker = _WorkerProcess(self, index)
        self.reactor.spawnProcess(
            worker, sys.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.processes[index] = worker

    def worker_ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        if self.processes.get(worker.index) is worker:
            del self.processes[worker.index]
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started_at
        delay = self._delays.get(worker.index, RESTART_DELAY_MIN)
        if lived >= HEALTHY_AFTER_SECONDS:
            delay = RESTART_DELAY_MIN
        self._delays[worker.index] = min(delay * 2, RESTART_DELAY_MAX)
        self.log.warn(
            "worker {index} exited ({reason}); starting it again in {delay:.1f}s",
            index=worker.index,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def signal_workers(self, signum: int) -> None:
        for worker in self.processes.values():
            try:
                worker.transport.signalProcess(signum)  # type: ignore[union-attr]
            except Exception:
                pass

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        service.Service.stopService(self)
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        ended = [w.ended for w in self.processes.values()]
        self.signal_workers(signal.SIGTERM)
        killer = self.reactor.callLater(
            STOP_GRACE_SECONDS, self.signal_workers, signal.SIGKILL
        )
        yield defer.DeferredList(ended)
        if killer.active():
            killer.cancel()
        for sock in self.sockets:
            sock.close()
        self.sockets = []
