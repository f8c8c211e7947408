"""The one place a shell class falls back to the global reactor.

Shell module.  Every shell class takes its reactor as an argument (tests pass a
``Clock`` or ``MemoryReactorClock``); ``None`` means the running process's reactor,
imported here lazily so that importing eventgw never installs one.
"""

from __future__ import annotations

from typing import TypeVar, cast

__all__ = ["default_reactor"]

_Reactor = TypeVar("_Reactor")


def default_reactor(reactor: _Reactor | None) -> _Reactor:
    """``reactor``, or the global reactor when it is ``None``."""
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as global_reactor

    return cast(_Reactor, global_reactor)
