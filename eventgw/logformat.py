# -*- test-case-name: tests.test_logwriter -*-
"""Log lines from what a log event carries: twistd's classic text, or one JSON object.

Core module: it turns ``(time, level, system, message, fields)`` into the text of one
line and keeps the timestamp of the current second, so that a busy second formats its
clock once rather than once per line (the time zone lookup and ``strftime`` cost more
than the rest of an access line).  It reads no clock: the time comes with the event.

``text`` is what twistd writes: ``2026-12-02T16:19:15+0000 [system] message``, local
time with its offset, continuation lines indented with a tab.  ``json`` is one object
per line for log shippers: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``system``, ``worker`` (with ``--workers``), ``message`` and, for an access event, every
structured field under its own name (``peer``, ``method``, ``path``, ``status``...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final, Literal

__all__ = ["LOG_FORMATS", "LineFormat", "LogFormatName"]

LogFormatName = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")

# The keys a JSON line begins with; a field of the event with one of these names is
# written as ``field_<name>`` so that it cannot hide them.
_OWN_KEYS: Final = frozenset({"time", "level", "system", "worker", "message"})

_encode = json.JSONEncoder(separators=(",", ":"), default=str).encode


class LineFormat:
    """Formats lines in one of :data:`LOG_FORMATS`; caches the current second's stamp.

    :ivar json: whether lines are JSON objects (else twistd's text).
    :ivar worker: the ``--workers`` index of this process, or ``None``.
    """

    __slots__ = ("_json_second", "_json_stamp", "_text_second", "_text_stamp", "json",
                 "worker")

    def __init__(self, name: str = "text", worker: int | None = None) -> None:
        if name not in LOG_FORMATS:
            raise ValueError(f"unknown log format {name!r}")
        self.json = name == "json"
        self.worker = worker
        self._text_second = -1
        self._text_stamp = ""
        self._json_second = -1
        self._json_stamp = ""

    def text_time(self, when: float | None) -> str:
        """``when`` as twistd writes it (local time, seconds, UTC offset); ``-`` for
        an event without a time."""
        if when is None:
            return "-"
        second = int(when)
        if second != self._text_second:
            local = datetime.fromtimestamp(second).astimezone()
            self._text_stamp = local.strftime("%Y-%m-%dT%H:%M:%S%z")
            self._text_second = second
        return self._text_stamp

    def json_time(self, when: float) -> str:
        """``when`` in ISO 8601, UTC, with milliseconds: ``2026-12-02T16:19:15.123Z``."""
        second = int(when)
        if second != self._json_second:
            self._json_stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._json_second = second
        millis = int((when - second) * 1000.0)
        return f"{self._json_stamp}.{millis:03d}Z"

    def text_line(self, when: float, system: str, message: str) -> str:
        """One classic twistd line, newline included."""
        if "\n" in message:
            message = message.replace("\n", "\n\t")
        return f"{self.text_time(when)} [{system}] {message}\n"

    def json_line(
        self,
        when: float,
        level: str,
        system: str,
        message: str,
        fields: Mapping[str, object] | None = None,
    ) -> str:
        """One JSON object and a newline; values JSON cannot hold are written as text."""
        line: dict[str, object] = {
            "time": self.json_time(when), "level": level, "system": system,
        }
        if self.worker is not None:
            line["worker"] = self.worker
        line["message"] = message
        if fields:
            for key, value in fields.items():
                line[f"field_{key}" if key in _OWN_KEYS else key] = value
        return _encode(line) + "\n"

    def line(
        self,
        when: float,
        level: str,
        system: str,
        message: str,
        fields: Mapping[str, object] | None = None,
    ) -> str:
        """The line in this format (``fields`` are written only as JSON)."""
        if self.json:
            return self.json_line(when, level, system, message, fields)
        return self.text_line(when, system, message)
