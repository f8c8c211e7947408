"""The lifecycle parts in process: which reloads need a restart, the file watcher, and
the service's reload bookkeeping and drain state (on a ``MemoryReactorClock``)."""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import replace

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventgw.config import GatewayConfig, ListenConfig
from eventgw.errors import ConfigError
from eventgw.lifecycle.reload import restart_needed
from eventgw.lifecycle.watch import FileWatcher
from eventgw.service import GatewayService
from tests.test_service import service_config


class RestartNeededTests(SynchronousTestCase):
    """restart_needed names what a running process cannot take."""

    def test_ports_and_workers(self) -> None:
        """A changed port or worker count is named; other changes are not."""
        old = GatewayConfig()
        self.assertIsNone(restart_needed(old, replace(old, grpc_deny=("/x.",))))
        new = replace(old, listen=replace(old.listen, tls=old.listen.tls + 1), workers=3)
        self.assertEqual(
            restart_needed(old, new),
            f"listen.tls {old.listen.tls} -> {old.listen.tls + 1}; workers 1 -> 3",
        )

    def test_log_format(self) -> None:
        """A changed log.format needs a restart; the metrics switch does not."""
        old = GatewayConfig()
        self.assertEqual(
            restart_needed(old, replace(old, log_format="json")), "log.format text -> json"
        )
        metrics_off = replace(old.metrics, enabled=False)
        self.assertIsNone(restart_needed(old, replace(old, metrics=metrics_off)))


class FileWatcherTests(SynchronousTestCase):
    """The watcher reports each change of the file, a ConfigMap symlink swap included."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="eventgw-watch-")
        self.clock = Clock()
        self.changes: list[None] = []

    def watch(self, path: str) -> FileWatcher:
        watcher = FileWatcher(path, lambda: self.changes.append(None), self.clock)
        watcher.start()
        self.addCleanup(watcher.stop)
        return watcher

    def test_replaced_file(self) -> None:
        """A file replaced by rename is one change; no change, no call; a file briefly
        missing is no change."""
        path = os.path.join(self.folder, "gateway.yaml")
        with open(path, "w") as f:
            f.write("a: 1\n")
        self.watch(path)
        self.clock.advance(1)
        self.assertEqual(len(self.changes), 0)
        with open(path + ".new", "w") as f:
            f.write("a: 22\n")
        os.replace(path + ".new", path)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(len(self.changes), 1)
        os.unlink(path)
        self.clock.advance(1)
        self.assertEqual(len(self.changes), 1)

    def test_configmap_swap(self) -> None:
        """Swapping the ``..data`` symlink is a change though the file's path is not."""
        for name in ("..v1", "..v2"):
            os.mkdir(os.path.join(self.folder, name))
            with open(os.path.join(self.folder, name, "gateway.yaml"), "w") as f:
                f.write("a: 1\n")  # same size, maybe the same mtime
        os.symlink("..v1", os.path.join(self.folder, "..data"))
        path = os.path.join(self.folder, "gateway.yaml")
        os.symlink("..data/gateway.yaml", path)
        self.watch(path)
        os.symlink("..v2", os.path.join(self.folder, "..tmp"))
        os.rename(os.path.join(self.folder, "..tmp"), os.path.join(self.folder, "..data"))
        self.clock.advance(1)
        self.assertEqual(len(self.changes), 1)

    def test_seen(self) -> None:
        """A change already read (a SIGHUP reload) is not reported again."""
        path = os.path.join(self.folder, "gateway.yaml")
        with open(path, "w") as f:
            f.write("a: 1\n")
        watcher = self.watch(path)
        with open(path, "a") as f:
            f.write("b: 2\n")
        watcher.seen()
        self.clock.advance(1)
        self.assertEqual(self.changes, [])


class _State:
    """A readiness state that records what the service had when told."""

    def __init__(self, service: list[GatewayService]) -> None:
        self.draining = False
        self.ports_open_when_told: int | None = None
        self._service = service

    def start_draining(self) -> None:
        self.draining = True
        self.ports_open_when_told = len(self._service[0].ports)


class ServiceReloadTests(TestCase):
    """GatewayService.reload applies a good configuration whole and nothing of a bad one,
    and keeps the counts the metrics read."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(100)
        self.config = service_config(self.mktemp())
        self.next: GatewayConfig | Exception = self.config
        self.outcomes: list[bool] = []
        holder: list[GatewayService] = []
        self.state = _State(holder)
        self.service = GatewayService(
            self.config, self.reactor, loader=self.load, state=self.state,
            on_reload=self.outcomes.append,
        )
        holder.append(self.service)
        self.service.startService()
        self.addCleanup(self.service.stopService)

    def load(self) -> GatewayConfig:
        if isinstance(self.next, Exception):
            raise self.next
        return self.next

    def test_start_counts_as_the_first_success(self) -> None:
        """The initial load is the first successful reload, at the reactor's time."""
        self.assertEqual(
            (self.service.reloads_succeeded, self.service.reloads_failed), (1, 0)
        )
        self.assertEqual(self.service.last_reload_success, 100)

    def test_good_reload(self) -> None:
        """A good file replaces the router and the limits of new connections, counts a
        success and calls on_reload(True)."""
        old = self.service.gateway
        limits = replace(self.config.limits, max_header_bytes=4096)
        self.next = replace(self.config, grpc_deny=("/x.",), limits=limits)
        self.reactor.advance(5)
        self.assertTrue(self.service.reload())
        self.assertIsNot(self.service.gateway, old)
        self.assertEqual(self.service.config.grpc_deny, ("/x.",))
        self.assertEqual(self.service.factories[0].limits, limits)
        self.assertEqual(self.service.reloads_succeeded, 2)
        self.assertEqual(self.service.last_reload_success, 105)
        self.assertEqual(self.outcomes, [True])

    def test_bad_reload(self) -> None:
        """A bad file changes nothing, counts a failure and calls on_reload(False)."""
        old = self.service.gateway
        self.next = ConfigError("grpc.deny", "not a list")
        self.assertFalse(self.service.reload())
        self.assertIs(self.service.gateway, old)
        self.assertEqual((self.service.reloads_succeeded, self.service.reloads_failed), (1, 1))
        self.assertEqual(self.service.last_reload_success, 100)
        self.assertEqual(self.outcomes, [False])

    def test_port_change_refused(self) -> None:
        """A changed port is refused whole: the deny that came with it is not applied."""
        listen: ListenConfig = replace(self.config.listen, cleartext=1)
        self.next = replace(self.config, listen=listen, grpc_deny=("/x.",))
        self.assertFalse(self.service.reload())
        self.assertNotEqual(self.service.config.grpc_deny, ("/x.",))
        self.assertEqual(self.service.reloads_failed, 1)

    def test_drain_state_is_told_before_the_ports_close(self) -> None:
        """stopService tells the state first, while the ports still listen."""
        self.assertFalse(self.service.draining)
        self.service.stopService()
        self.assertTrue(self.service.draining)
        self.assertEqual(self.state.ports_open_when_told, 2)


class SignalInstallTests(TestCase):
    """The service's signal handlers are in place before the ports are announced."""

    def setUp(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.addCleanup(signal.signal, signum, signal.getsignal(signum))

    def test_handlers_before_the_reactor_runs_and_again_after_its_own(self) -> None:
        """startService installs the SIGHUP/SIGTERM/SIGINT handlers at once, with the
        reactor not yet running, and installs them again once it runs (the reactor
        has then replaced SIGTERM and SIGINT with its own)."""
        reactor = MemoryReactorClock()
        announced: list[object] = []

        def observe(event: dict[str, object]) -> None:
            if "eventgw listening on" in str(event.get("log_format", "")):
                announced.append(signal.getsignal(signal.SIGHUP))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = GatewayService(
            service_config(self.mktemp()), reactor, handle_signals=True
        )
        service.startService()
        self.addCleanup(service.stopService)
        signals = service.signals
        assert signals is not None
        self.assertFalse(reactor.running)
        self.assertEqual(announced, [signals._reload_signal] * 2)
        self.assertEqual(signal.getsignal(signal.SIGTERM), signals._stop_signal)
        self.assertEqual(signal.getsignal(signal.SIGINT), signals._stop_signal)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as the reactor's own would
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        reactor.run()
        self.assertEqual(signal.getsignal(signal.SIGTERM), signals._stop_signal)
        self.assertEqual(signal.getsignal(signal.SIGINT), signals._stop_signal)
        self.assertEqual(signal.getsignal(signal.SIGHUP), signals._reload_signal)
