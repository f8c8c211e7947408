"""Medians of the repeated runs, and the markdown table built from them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from rig.workloads import LoadResult, Workload

# Processes outside the rig that keep this many CPUs busy, on average, disturb a run:
# the proxy and the load generator then share their CPUs with them.
DISTURBED_CPUS: Final = 0.25


@dataclass(frozen=True)
class Run:
    load: LoadResult
    cpu_s: float | None  # the proxy's CPU time during the run; None without a proxy
    # CPU time used during the run by processes outside the rig (noise on the machine).
    foreign_cpu_s: float = 0.0

    @property
    def disturbed(self) -> bool:
        return self.foreign_cpu_s > DISTURBED_CPUS * self.load.seconds


@dataclass(frozen=True)
class Summary:
    """Medians over the repeats of one (workload, row) cell."""

    runs: int
    throughput: float  # req/s, MB/s or events/s
    p50_ms: float | None
    p99_ms: float | None
    cpu: float | None  # ms per 1,000 requests, or s per GB for streaming
    errors: int  # over all runs
    disturbed: int = 0  # runs that other processes disturbed even when measured again


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(workload: Workload, runs: Sequence[Run]) -> Summary:
    throughputs: list[float | None] = []
    cpus: list[float | None] = []
    for run in runs:
        load = run.load
        if workload.unit == "MB":
            throughputs.append(load.data_bytes / 1e6 / load.seconds)
            if run.cpu_s is not None and load.data_bytes:
                cpus.append(run.cpu_s / (load.data_bytes / 1e9))
        else:
            throughputs.append(load.requests / load.seconds)
            if run.cpu_s is not None and load.requests:
                cpus.append(run.cpu_s * 1e6 / load.requests)
    return Summary(
        runs=len(runs),
        throughput=_median(throughputs) or 0.0,
        p50_ms=_median([run.load.p50_ms for run in runs]),
        p99_ms=_median([run.load.p99_ms for run in runs]),
        cpu=_median(cpus),
        errors=sum(run.load.errors for run in runs),
        disturbed=sum(run.disturbed for run in runs),
    )


_THROUGHPUT_UNIT = {"req": "req/s", "MB": "MB/s", "ev": "ev/s"}
_CPU_UNIT = {"req": "ms/1k req", "MB": "s/GB", "ev": "ms/1k ev"}
HEADER = (
    "| workload | row | throughput | p50 ms | p99 ms | proxy CPU | CPU vs nginx "
    "| throughput vs nginx |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|"
)


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "—"
    return f"{value / reference:.2f}x"


def table_rows(
    workload: Workload,
    summaries: dict[str, Summary],
    notes: dict[str, str],
    row_order: Sequence[str],
    repeats: int,
) -> list[str]:
    """Markdown lines for one workload: a measured line or a note per row.

    A cell with fewer runs than asked for (a later run failed, or the time budget ran
    out) shows its medians with the count and the note.
    """
    lines = []
    nginx = summaries.get("nginx")
    for row in row_order:
        if row not in summaries:
            if row in notes:
                lines.append(f"| {workload.name} | {row} | {notes[row]} | | | | | |")
            continue
        s = summaries[row]
        digits = 2 if workload.unit == "MB" else 0
        throughput = f"{_number(s.throughput)} {_THROUGHPUT_UNIT[workload.unit]}"
        remarks = []
        if s.runs < repeats:
            remarks.append(f"{s.runs} of {repeats} runs")
        if row in notes:
            remarks.append(notes[row])
        if s.errors:
            remarks.append(f"{s.errors} errors")
        if s.disturbed:
            remarks.append(f"{s.disturbed} disturbed")
        if remarks:
            throughput += f" ({'; '.join(remarks)})"
        cpu = "—" if s.cpu is None else f"{_number(s.cpu, digits)} {_CPU_UNIT[workload.unit]}"
        lines.append(
            f"| {workload.name} | {row} | {throughput} | {_number(s.p50_ms, 2)} "
            f"| {_number(s.p99_ms, 2)} | {cpu} "
            f"| {_ratio(s.cpu, nginx.cpu if nginx else None)} "
            f"| {_ratio(s.throughput, nginx.throughput if nginx else None)} |"
        )
    return lines
