# -*- test-case-name: tests.test_admin -*-
"""Whether the process is serving or draining, shared by the gateway and the admin
listener.

Core module: standard library only.  One :class:`ServingState` per process; the gateway
service calls :meth:`ServingState.start_draining` at the first moment of a drain
(SIGTERM), and the admin listener reads :attr:`ServingState.draining` for ``/readyz``
and the gRPC health status, and is told of the change through the callbacks given to
:meth:`ServingState.on_change` (a gRPC health ``Watch`` pushes ``NOT_SERVING``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ServingState"]


class ServingState:
    """``draining`` turns True once, and stays so until the process exits.

    :ivar draining: whether a drain has started.
    :ivar upstreams: the gateway's upstream hosts and their state, for the admin
        page (set by the service that runs the gateway; ``None`` in a supervisor,
        whose workers each balance on their own).
    """

    __slots__ = ("_watchers", "draining", "upstreams")

    def __init__(self) -> None:
        self.draining = False
        self.upstreams: Callable[[], dict[str, object]] | None = None
        self._watchers: list[Callable[[bool], None]] = []

    @property
    def serving(self) -> bool:
        """The opposite of :attr:`draining`: ready for new work."""
        return not self.draining

    def start_draining(self) -> None:
        """The drain begins: readiness fails from now on.  Calling it again is a no-op."""
        if self.draining:
            return
        self.draining = True
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher(False)

    def on_change(self, watcher: Callable[[bool], None]) -> Callable[[], None]:
        """Call ``watcher(serving)`` when the state changes; returns the way to stop."""
        self._watchers.append(watcher)

        def cancel() -> None:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

        return cancel
