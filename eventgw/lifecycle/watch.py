# -*- test-case-name: tests.test_lifecycle -*-
"""``reload.watch``: a change of the configuration file, found by polling.

Shell module.  Once a second the file's path is resolved (symlinks followed) and the
resolved file stat'ed; a change of the resolved path, the device, the inode, the size
or the modification time is a change.  This sees a file edited in place, a file
replaced by ``rename`` (how editors and ``kubectl cp`` write), and the way Kubernetes
updates a mounted ConfigMap: the file is a symlink through ``..data``, itself a symlink
to a timestamped directory, and the update swaps ``..data`` atomically, so the
*directory* changes while the file's own inode never does.  Polling works on every
platform and filesystem (a ConfigMap volume, NFS) and costs one ``realpath`` and one
``stat`` a second.  A file that is briefly missing (between two renames) is no change;
its return with other contents is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.task import LoopingCall

__all__ = ["POLL_INTERVAL", "FileWatcher", "signature"]

POLL_INTERVAL: Final = 1.0

Signature = tuple[str, int, int, int, int]


def signature(path: str) -> Signature | None:
    """What identifies the file's current contents, or ``None`` if it cannot be stat'ed."""
    resolved = os.path.realpath(path)
    try:
        st = os.stat(resolved)
    except OSError:
        return None
    return (resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileWatcher:
    """Calls ``on_change`` once per change of the file at ``path`` (see the module).

    :ivar path: the file watched, as configured (not resolved).
    """

    def __init__(
        self,
        path: str,
        on_change: Callable[[], object],
        reactor: Any,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.path = path
        self._on_change = on_change
        self._interval = interval
        self._last = signature(path)
        self._loop = LoopingCall(self._poll)
        self._loop.clock = reactor

    @property
    def running(self) -> bool:
        return bool(self._loop.running)

    def start(self) -> None:
        """Poll from now on; the file as it is now is the baseline."""
        if not self._loop.running:
            self._last = signature(self.path)
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def seen(self) -> None:
        """The file as it is now has been read: no change to report for it."""
        self._last = signature(self.path) or self._last

    def _poll(self) -> None:
        current = signature(self.path)
        if current is None or current == self._last:
            return
        self._last = current
        self._on_change()
