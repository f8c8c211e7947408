# -*- test-case-name: tests.test_reactorloop -*-
"""The epoll reactor's poll loop without Twisted's per-event log context.

Shell module.

For every ready file descriptor, Twisted's ``EPollReactor.doPoll`` calls
``log.callWithLogger(selectable, ...)``: it asks the selectable for its
``logPrefix()``, copies the legacy log context dictionary, pushes it on a
thread-local stack, runs the read or write, and pops it again.  All of that exists so
that a legacy ``twisted.python.log.msg`` call made inside the callback is stamped
with the connection's ``system``.  The gateway logs through ``twisted.logger``, which
never reads that context, and under load the wrapping was the largest single cost of
Twisted's loop: every request costs two to four fd events.

:func:`install_lean_poll` replaces the reactor's ``doIteration`` (the method
``mainLoop`` calls each turn) by :func:`lean_do_poll`, which polls exactly as
``doPoll`` does and hands each event to the reactor's own ``_doReadOrWrite`` -- the
same read, write, disconnect and error handling, unchanged -- only without the
context.  A failure escaping ``_doReadOrWrite`` is logged, as ``callWithLogger``
would log it, and the loop goes on with the next event.  What changes: a legacy log
line emitted from inside a read or write callback shows ``-`` as its system instead
of the protocol's prefix.

Only Twisted's ``EPollReactor`` (the default on Linux) is changed, and only while its
``doIteration`` is still the stock ``doPoll``; any other reactor chosen with
``twistd --reactor`` runs as it is.
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.logger import Logger

__all__ = ["install_lean_poll", "lean_do_poll"]

_log = Logger(namespace="eventgw.reactorloop")


def lean_do_poll(self: Any, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` without ``log.callWithLogger`` around each event."""
    if timeout is None:
        timeout = -1  # wait until an event
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    selectables = self._selectables
    handle = self._doReadOrWrite
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            handle(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            _log.failure("unhandled error while handling an event on fd {fd}", fd=fd)


def install_lean_poll(reactor: object) -> bool:
    """Make ``reactor`` poll with :func:`lean_do_poll` if it is Twisted's epoll
    reactor running its stock loop; return whether it was changed."""
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this platform
        return False
    if type(reactor) is not EPollReactor:
        return False
    if getattr(reactor, "doIteration", None) != getattr(reactor, "doPoll", None):
        return False  # already changed, by us or by someone else
    reactor.doIteration = MethodType(lean_do_poll, reactor)  # type: ignore[method-assign]
    return True
