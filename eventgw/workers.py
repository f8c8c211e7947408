# -*- test-case-name: tests.test_workers -*-
"""``--workers N``: N gateway processes sharing the listening ports.

Shell module.  The supervisor binds the listening sockets itself (so a port in use is
reported once, naming the key) and starts each worker as a *fresh* process -- a new
``twistd eventgw`` with the same options plus ``--adopt-fds`` -- never as a ``fork()``
of itself: grpcio's channels and threads do not survive a fork.  The supervisor never
accepts a connection.

Each worker gets listening sockets of its own, all bound to the same ports with
``SO_REUSEPORT``, so the kernel spreads new connections evenly over the workers (by a
hash of the client's address and port).  One socket shared by every worker would not:
the first worker to wake up accepts every connection waiting, and a burst of new
connections (a load balancer's pool, a benchmark) can all land on one worker while
the others idle.  The port-in-use check is a plain bind (without ``SO_REUSEPORT``)
before the workers' sockets are made, so a port some other server listens on is still
refused.  A worker's sockets live as long as the worker: when it dies they are closed
(connections still queued on them are reset, new ones go to the live workers) and its
replacement gets new ones.  Without ``SO_REUSEPORT`` (not Linux/BSD) all workers share
one socket per port.

A worker that dies is started again after a back-off.  SIGTERM (or SIGINT) to the
supervisor (``stopService``) is passed once to every worker, which drains its
connections and exits; the supervisor exits (status 0) when they all have, and kills
one still alive after its drain period (``shutdown.drain_timeout``) plus
:data:`STOP_MARGIN`.  A second SIGTERM or SIGINT is passed on as the workers' second,
which stops them at once.  SIGHUP, and with ``reload.watch`` a change of the file (the
supervisor watches it; the workers do not), is passed to every worker, and each
reloads (:meth:`~eventgw.service.GatewayService.reload`); the supervisor reads the file
too, for the drain period it waits.  Each worker runs in a process group of its own
(signals to the supervisor's group reach it only as forwarded) and starts its own
drain when the supervisor dies.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any, Final

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventgw._reactor import default_reactor
from eventgw.admin.metrics import worker_exited
from eventgw.config import GatewayConfig
from eventgw.errors import ConfigError
from eventgw.lifecycle.reload import restart_needed
from eventgw.lifecycle.signals import SUPERVISOR_ENV, WORKER_ENV, StopSignals, stop_reactor
from eventgw.lifecycle.watch import FileWatcher

__all__ = ["REUSE_PORT", "WorkerSupervisor", "bind_listening_socket", "check_port_free"]

# Restart back-off: a worker that crashes at start must not spin the CPU.
RESTART_DELAY_MIN: Final = 0.5
RESTART_DELAY_MAX: Final = 30.0
# A worker that lived this long is considered healthy: its next restart is immediate-ish.
HEALTHY_AFTER_SECONDS: Final = 10.0
# How long workers get after SIGTERM before SIGKILL: their whole drain period
# (shutdown.drain_timeout, the one the service gives HTTP/1.1 and HTTP/2 work in
# flight), plus this margin for exiting.
STOP_MARGIN: Final = 5.0
LISTEN_BACKLOG: Final = 1024
# The file descriptor numbers the listening sockets get in each worker.
CHILD_FD_TLS: Final = 3
CHILD_FD_CLEARTEXT: Final = 4


# Whether each worker can have sockets of its own on the shared ports.
REUSE_PORT: Final = hasattr(socket, "SO_REUSEPORT")


def bind_listening_socket(
    interface: str, port: int, key: str, *, reuse_port: bool = False
) -> socket.socket:
    """A listening TCP socket, or a ConfigError naming ``key`` (port in use...).

    With ``reuse_port`` the socket joins the ``SO_REUSEPORT`` group of the port.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        raise ConfigError(key, f"cannot listen on {interface}:{port}: {e.strerror}") from None
    sock.setblocking(False)
    return sock


def check_port_free(interface: str, port: int, key: str) -> int:
    """Bind (without listening) a plain socket to see whether ``port`` is free; the
    port number (the one chosen, for port 0), or a ConfigError naming ``key``."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((interface, port))
        except OSError as e:
            raise ConfigError(key, f"cannot listen on {interface}:{port}: {e.strerror}") from None
        return int(probe.getsockname()[1])


class _WorkerProcess(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.started_at = supervisor.reactor.seconds()
        self.pid: int | None = None

    def processEnded(self, reason: Failure) -> None:
        if self.pid is not None:
            worker_exited(self.pid)
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(service.Service):
    """Binds the ports, runs ``workers`` gateway processes on them, restarts the dead.

    :ivar worker_args: the ``twistd eventgw`` options each worker is started with.
    """

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        worker_args: list[str],
        reactor: Any = None,
        *,
        reuse_port: bool = REUSE_PORT,
        loader: Callable[[], GatewayConfig] | None = None,
        watch_path: str | None = None,
        handle_signals: bool = False,
    ) -> None:
        reactor = default_reactor(reactor)
        self.config = config
        self.loader = loader
        self.watch_path = watch_path
        self.handle_signals = handle_signals
        self.signals: StopSignals | None = None
        self._watcher: FileWatcher | None = None
        self.worker_args = worker_args
        self.reactor = reactor
        self.reuse_port = reuse_port
        # The sockets every worker shares (without reuse_port).
        self.sockets: list[socket.socket] = []
        # (key, port) of each listening port, TLS first.
        self._listen: list[tuple[str, int]] = []
        # With reuse_port: each worker's own sockets, by worker index.
        self.worker_sockets: dict[int, list[socket.socket]] = {}
        self.processes: dict[int, _WorkerProcess] = {}
        self._delays: dict[int, float] = {}
        self._pending: dict[int, Any] = {}

    def bind(self) -> None:
        """Bind the listening sockets (ConfigError naming the key on failure)."""
        listen = self.config.listen
        wanted = [("listen.tls", listen.tls)]
        if listen.cleartext is not None:
            wanted.append(("listen.cleartext", listen.cleartext))
        if not self.reuse_port:
            sockets: list[socket.socket] = []
            try:
                for key, port in wanted:
                    sockets.append(bind_listening_socket(listen.interface, port, key))
            except ConfigError:
                for sock in sockets:
                    sock.close()
                raise
            self.sockets = sockets
            self._listen = [(key, int(s.getsockname()[1])) for (key, _), s in zip(
                wanted, sockets, strict=True)]
            return
        self._listen = [
            (key, check_port_free(listen.interface, port, key)) for key, port in wanted
        ]
        self._worker_sockets(0)  # the first worker's now: any bind error shows at start

    def _worker_sockets(self, index: int) -> list[socket.socket]:
        """Worker ``index``'s sockets: its own with reuse_port, else the shared ones."""
        if not self.reuse_port:
            return self.sockets
        sockets = self.worker_sockets.get(index)
        if sockets is not None:
            return sockets
        sockets = []
        try:
            for key, port in self._listen:
                sockets.append(bind_listening_socket(
                    self.config.listen.interface, port, key, reuse_port=True
                ))
        except ConfigError:
            for sock in sockets:
                sock.close()
            raise
        self.worker_sockets[index] = sockets
        return sockets

    def _close_worker_sockets(self, index: int) -> None:
        for sock in self.worker_sockets.pop(index, []):
            sock.close()

    @property
    def ports(self) -> list[int]:
        return [port for _, port in self._listen]

    def startService(self) -> None:
        if not self._listen:
            self.bind()
        service.Service.startService(self)
        if self.handle_signals:
            # Before the workers start: a SIGHUP meanwhile must reload, not kill.
            self._install_signals()
        self.log.info(
            "eventgw supervisor: {workers} worker processes sharing {interface} ports "
            "{ports} ({how})",
            workers=self.config.workers,
            interface=self.config.listen.interface,
            ports=self.ports,
            how="SO_REUSEPORT, a socket per worker" if self.reuse_port else "shared sockets",
        )
        for index in range(self.config.workers):
            self._spawn(index)
        if self.config.reload_watch and self.watch_path is not None:
            self._watcher = FileWatcher(self.watch_path, self._file_changed, self.reactor)
            self._watcher.start()
            self.log.info("watching {path} for changes", path=self.watch_path)

    def _install_signals(self) -> None:
        self.signals = StopSignals(
            self.reactor,
            on_drain=lambda: stop_reactor(self.reactor),
            on_stop_now=lambda: self.signal_workers(signal.SIGTERM),
            on_reload=self.reload,
        )
        self.signals.install()
        self.reactor.callWhenRunning(self.signals.install)

    @property
    def stop_grace(self) -> float:
        """Seconds the workers get after SIGTERM before they are killed."""
        return self.config.drain_timeout + STOP_MARGIN

    def _file_changed(self) -> None:
        self.log.info("{path} changed: the workers reload", path=self.watch_path)
        self.reload()

    def reload(self) -> None:
        """Pass SIGHUP to every worker (each reloads, and logs the outcome), and take
        the new drain period when the file is good."""
        if not self.running:
            return
        if self._watcher is not None:
            self._watcher.seen()
        self.signal_workers(signal.SIGHUP)
        if self.loader is None:
            return
        try:
            new = self.loader()
        except ConfigError:
            return  # the workers say what is wrong
        if restart_needed(self.config, new) is None:
            self.config = new

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        try:
            sockets = self._worker_sockets(index)
        except ConfigError as e:
            # Someone else took the port between two workers' lives: try again later.
            self.log.error("worker {index}: {error}", index=index, error=str(e))
            self._schedule_restart(index, lived=0.0)
            return
        fds = [str(CHILD_FD_TLS)]
        child_fds: dict[int, Any] = {0: 0, 1: 1, 2: 2, CHILD_FD_TLS: sockets[0].fileno()}
        if len(sockets) > 1:
            fds.append(str(CHILD_FD_CLEARTEXT))
            child_fds[CHILD_FD_CLEARTEXT] = sockets[1].fileno()
        args = [
            sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "eventgw", *self.worker_args,
            "--adopt-fds", ",".join(fds),
        ]
        worker = _WorkerProcess(self, index)
        env = {**os.environ, WORKER_ENV: str(index), SUPERVISOR_ENV: str(os.getpid())}
        transport = self.reactor.spawnProcess(
            worker, sys.executable, args, env=env, childFDs=child_fds
        )
        # Metrics: its live gauges are dropped when it ends.
        worker.pid = getattr(transport, "pid", None)
        self.processes[index] = worker

    def worker_ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        if self.processes.get(worker.index) is worker:
            del self.processes[worker.index]
            if self.reuse_port:
                # Its queue would hold new connections until a restart; closed, the
                # kernel sends them to the live workers meanwhile.
                self._close_worker_sockets(worker.index)
        if not self.running:
            return
        self.log.warn(
            "worker {index} exited ({reason})",
            index=worker.index,
            reason=reason.getErrorMessage(),
        )
        self._schedule_restart(worker.index, self.reactor.seconds() - worker.started_at)

    def _schedule_restart(self, index: int, lived: float) -> None:
        delay = self._delays.get(index, RESTART_DELAY_MIN)
        if lived >= HEALTHY_AFTER_SECONDS:
            delay = RESTART_DELAY_MIN
        self._delays[index] = min(delay * 2, RESTART_DELAY_MAX)
        self.log.info("starting worker {index} again in {delay:.1f}s", index=index, delay=delay)
        self._pending[index] = self.reactor.callLater(delay, self._spawn, index)

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
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        ended = [w.ended for w in self.processes.values()]
        self.log.info(
            "draining {workers} workers (killed after {grace}s)",
            workers=len(ended), grace=self.stop_grace,
        )
        self.signal_workers(signal.SIGTERM)
        killer = self.reactor.callLater(self.stop_grace, self.signal_workers, signal.SIGKILL)
        yield defer.DeferredList(ended)
        if killer.active():
            killer.cancel()
        for index in list(self.worker_sockets):
            self._close_worker_sockets(index)
        for sock in self.sockets:
            sock.close()
        self.sockets = []
