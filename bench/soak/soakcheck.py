"""The soak's checks, on plain data: samples, request records, fault windows, event ids.

No I/O here: ``soak.py`` reads the run's files and calls these; ``tests/test_soak_smoke.py``
calls them on synthetic data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

# Which service a flow needs: an error of the flow is explained only by a fault of it.
FLOW_SERVICE: Final = {"api": "master-http", "grpc": "master-grpc", "events": "broker"}


@dataclass(frozen=True)
class Window:
    """A fault: ``service`` was killed at ``start`` and listened again at ``end``."""

    service: str
    start: float
    end: float


@dataclass(frozen=True)
class Record:
    """One request of the load: when it started, how long it took, how it ended."""

    t: float
    lane: str
    flow: str
    elapsed: float
    ok: bool
    deadline: float
    detail: str = ""


@dataclass(frozen=True)
class Result:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _median(values: Sequence[float]) -> float:
    return percentile(values, 0.5)


def flat(
    name: str,
    samples: Sequence[tuple[float, float]],
    warmup: float,
    absolute: float,
    relative: float,
    unit: str = "",
) -> Result:
    """The value is flat after ``warmup`` seconds (samples are ``(t, value)``, t from 0).

    The median of the first fifth of the samples after warm-up is compared with the
    median of the last fifth: the growth may not exceed ``absolute + relative * first``.
    Medians, so that one sample taken during a fault (fewer upstream connections, a
    burst of buffers) does not decide.
    """
    after = [value for t, value in samples if t >= warmup]
    if len(after) < 5:
        return Result(name, False, f"only {len(after)} samples after warm-up ({warmup:g} s)")
    fifth = max(1, len(after) // 5)
    first, last = _median(after[:fifth]), _median(after[-fifth:])
    tolerance = absolute + relative * first
    growth = last - first
    detail = (f"{first:,.1f} -> {last:,.1f} {unit} (growth {growth:+,.1f}, "
              f"tolerance {tolerance:,.1f}; medians of the first and last fifth after "
              f"{warmup:g} s warm-up)")
    return Result(name, growth <= tolerance, detail)


def explained(record: Record, windows: Iterable[Window], grace: float,
              flow_service: Mapping[str, str] = FLOW_SERVICE) -> bool:
    """The request overlapped a fault of its flow's service (or its grace after)."""
    service = flow_service.get(record.flow)
    end = record.t + record.elapsed
    return any(
        window.service == service and record.t <= window.end + grace and end >= window.start
        for window in windows
    )


def errors_in_windows(records: Iterable[Record], windows: Sequence[Window], grace: float,
                      flow_service: Mapping[str, str] = FLOW_SERVICE) -> Result:
    """Every failed request overlapped a fault window of its own flow's service."""
    errors = [r for r in records if not r.ok]
    stray = [r for r in errors if not explained(r, windows, grace, flow_service)]
    detail = (f"{len(errors)} errors, {len(errors) - len(stray)} inside fault windows "
              f"(+{grace:g} s grace), {len(stray)} outside")
    if stray:
        kinds = Counter(f"{r.lane}: {r.detail}" for r in stray)
        detail += "; outside: " + "; ".join(f"{n}x {k}" for k, n in kinds.most_common(5))
    return Result("errors only in fault windows", not stray, detail)


def deadline_overruns(records: Iterable[Record], slack: float = 1.0) -> Result:
    """No request took longer than its deadline plus ``slack`` seconds."""
    total = 0
    worst: Record | None = None
    over: list[Record] = []
    for record in records:
        total += 1
        if worst is None or record.elapsed - record.deadline > worst.elapsed - worst.deadline:
            worst = record
        if record.elapsed > record.deadline + slack:
            over.append(record)
    detail = f"{len(over)} of {total} requests over deadline + {slack:g} s"
    if worst is not None:
        detail += (f"; closest: {worst.lane} {worst.elapsed:.3f} s against a "
                   f"{worst.deadline:g} s deadline")
    return Result("no request outlives its deadline", not over, detail)


def exactly_once(accepted: Iterable[str], at_broker: Iterable[str]) -> Result:
    """Every event answered 202 was recorded by the broker exactly once."""
    answered = Counter(accepted)
    recorded = Counter(at_broker)
    dup_answers = sum(1 for n in answered.values() if n > 1)
    missing = [i for i in answered if recorded[i] == 0]
    doubled = [i for i in answered if recorded[i] > 1]
    unanswered = sum(1 for i in recorded if i not in answered)
    passed = not missing and not doubled and not dup_answers
    detail = (f"{len(answered)} events answered 202: {len(missing)} missing at the broker, "
              f"{len(doubled)} recorded more than once"
              + (f", {dup_answers} ids answered twice" if dup_answers else "")
              + f"; {unanswered} recorded but not answered 202 (faults)")
    if missing:
        detail += f"; e.g. missing {missing[:3]}"
    if doubled:
        detail += f"; e.g. doubled {doubled[:3]}"
    return Result("every 202 event at the broker exactly once", passed, detail)


@dataclass(frozen=True)
class Recovery:
    """What one fault cost its flow: the errors it explains and when the last one ended."""

    window: Window
    errors: int
    # Seconds from the service listening again to the end of the flow's last failed
    # request of this window (negative: the flow recovered before the service was up).
    last_error_after_up: float | None


def recoveries(records: Iterable[Record], windows: Sequence[Window],
               flow_service: Mapping[str, str] = FLOW_SERVICE) -> list[Recovery]:
    """Each failed request charged to the latest fault of its flow's service that began
    before it ended; per fault, how many and how long after the restart the last one was."""
    charged: dict[int, list[Record]] = {i: [] for i in range(len(windows))}
    for record in records:
        if record.ok:
            continue
        service = flow_service.get(record.flow)
        end = record.t + record.elapsed
        candidates = [i for i, w in enumerate(windows) if w.service == service and w.start <= end]
        if candidates:
            charged[max(candidates, key=lambda i: windows[i].start)].append(record)
    result = []
    for i, window in enumerate(windows):
        rows = charged[i]
        last = max((r.t + r.elapsed for r in rows), default=None)
        result.append(Recovery(window, len(rows), None if last is None else last - window.end))
    return result
