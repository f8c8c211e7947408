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
    "| workload | row | throughput | p50 ms | p99 ms | proxy CPU | CPU vs peer "
    "| CPU vs nginx | throughput vs nginx |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def peer_of(workload: Workload) -> str | None:
    """The Python peer a workload's rows are compared with: the Twisted reverse proxy
    for HTTP, the grpcio proxy for gRPC; none for the events flow."""
    if workload.endpoint.startswith("grpc"):
        return "py-grpc-proxy"
    if workload.endpoint.startswith("http"):
        return "twisted-rp"
    return None


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
    peer_name = peer_of(workload)
    peer = summaries.get(peer_name) if peer_name else None
    for row in row_order:
        if row not in summaries:
            if row in notes:
                lines.append(f"| {workload.name} | {row} | {notes[row]} | | | | | | |")
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
            f"| {_ratio(s.cpu, peer.cpu if peer else None)} "
            f"| {_ratio(s.cpu, nginx.cpu if nginx else None)} "
            f"| {_ratio(s.throughput, nginx.throughput if nginx else None)} |"
        )
    return lines


@dataclass(frozen=True)
class Target:
    """A goal for one eventgw process on one workload, as a ratio measured in the same
    run (absolute figures on a shared machine move between days; same-run ratios much
    less): eventgw's ``measure`` over the ``against`` row's (``against_workload``'s
    when given), at most ``limit``."""

    workload: str
    measure: str  # "cpu" or "p99"
    against: str  # a row name
    limit: float
    label: str
    against_workload: str | None = None


TARGETS: Final = (
    Target("h1-small-tls", "cpu", "twisted-rp", 0.30,
           "HTTP/1.1 small GET, TLS: CPU ≤ 0.30x twisted-rp"),
    Target("h1-16k-tls", "cpu", "twisted-rp", 0.30,
           "HTTP/1.1 16 KiB GET, TLS: CPU ≤ 0.30x twisted-rp"),
    Target("h2-small-tls", "cpu", "twisted-rp", 0.25,
           "HTTP/2 small GET, TLS: CPU ≤ 0.25x twisted-rp"),
    Target("grpc-unary-tls", "cpu", "py-grpc-proxy", 0.30,
           "gRPC unary, TLS: CPU ≤ 0.30x py-grpc-proxy"),
    Target("grpc-unary-h2c", "cpu", "py-grpc-proxy", 0.30,
           "gRPC unary, h2c: CPU ≤ 0.30x py-grpc-proxy"),
    Target("grpc-stream-tls", "cpu", "py-grpc-proxy", 0.35,
           "gRPC server-streaming: CPU per GB ≤ 0.35x py-grpc-proxy"),
    Target("lat-h1-tls", "p99", "twisted-rp", 0.25,
           "p99 at 500 req/s, HTTP/1.1: ≤ 0.25x twisted-rp"),
    Target("lat-h1-tls", "p99", "nginx", 2.5, "p99 at 500 req/s, HTTP/1.1: ≤ 2.5x nginx"),
    Target("lat-grpc-tls", "p99", "py-grpc-proxy", 0.25,
           "p99 at 500 req/s, gRPC: ≤ 0.25x py-grpc-proxy"),
    Target("lat-grpc-tls", "p99", "nginx", 2.5, "p99 at 500 req/s, gRPC: ≤ 2.5x nginx"),
    Target("events-tls", "cpu", "eventgw", 1.2,
           "POST /events: CPU per event ≤ 1.2x a relayed gRPC unary call (TLS)",
           against_workload="grpc-unary-tls"),
)
# --workers 2 must give this much of one process's throughput on HTTP/1.1 TLS.
WORKERS_SCALING: Final = 1.7


# Metrics on (as shipped) against metrics off: at most this much more CPU per request.
METRICS_COST_LIMIT: Final = 1.10
METRICS_COST_WORKLOADS: Final = (
    "h1-small-tls", "h1-small-clear", "h1-16k-tls", "h1-16k-clear",
    "grpc-unary-tls", "grpc-unary-h2c",
)


def metrics_cost_table(summaries: dict[tuple[str, str], Summary]) -> str:
    """The ``eventgw`` row's CPU per request over ``eventgw-metrics-off``'s, for the
    HTTP/1.1 and gRPC workloads measured on both."""
    lines = [
        "| workload | eventgw | eventgw, metrics off | metrics on / off "
        f"| ≤ {METRICS_COST_LIMIT:.2f}x |",
        "|---|---:|---:|---:|---|",
    ]
    for workload in METRICS_COST_WORKLOADS:
        on, off = summaries.get((workload, "eventgw")), summaries.get(
            (workload, "eventgw-metrics-off")
        )
        if on is None or off is None or on.cpu is None or not off.cpu:
            continue
        ratio = on.cpu / off.cpu
        disturbed = " (disturbed)" if on.disturbed or off.disturbed else ""
        lines.append(
            f"| {workload} | {_number(on.cpu)} ms/1k req | {_number(off.cpu)} ms/1k req "
            f"| {ratio:.2f}x{disturbed} | {'yes' if ratio <= METRICS_COST_LIMIT else 'no'} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


# The access checks beside the open route (h1-small-tls), on the eventgw row: a cached
# JWT check adds at most this much CPU per request.
ACCESS_COST_LIMIT: Final = 1.15
ACCESS_COST_WORKLOADS: Final = (
    ("h1-jwt-tls", "JWT (cached)", ACCESS_COST_LIMIT),
    ("h1-ratelimit-tls", "rate limit", None),
)


def access_cost_table(summaries: dict[tuple[str, str], Summary]) -> str:
    """The ``eventgw`` row's CPU per request on the access-checked routes over the open
    route's (``h1-small-tls``)."""
    lines = [
        "| workload | check | CPU | open route | over the open route | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    open_route = summaries.get(("h1-small-tls", "eventgw"))
    if open_route is None or not open_route.cpu:
        return ""
    for workload, what, limit in ACCESS_COST_WORKLOADS:
        checked = summaries.get((workload, "eventgw"))
        if checked is None or checked.cpu is None:
            continue
        ratio = checked.cpu / open_route.cpu
        disturbed = " (disturbed)" if checked.disturbed or open_route.disturbed else ""
        target = "—" if limit is None else (
            f"≤ {limit:.2f}x: {'yes' if ratio <= limit else 'no'}"
        )
        lines.append(
            f"| {workload} | {what} | {_number(checked.cpu)} ms/1k req "
            f"| {_number(open_route.cpu)} ms/1k req | {ratio:.2f}x{disturbed} | {target} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def targets_table(summaries: dict[tuple[str, str], Summary]) -> str:
    """The eventgw row against the targets, for the cells that were measured."""
    lines = ["| target | eventgw | reference | ratio | met |", "|---|---:|---:|---:|---|"]
    for target in TARGETS:
        own = summaries.get((target.workload, "eventgw"))
        other = summaries.get((target.against_workload or target.workload, target.against))
        if own is None or other is None:
            continue
        value = own.cpu if target.measure == "cpu" else own.p99_ms
        reference = other.cpu if target.measure == "cpu" else other.p99_ms
        if value is None or not reference:
            continue
        ratio = value / reference
        digits = 2 if target.measure == "p99" or value < 10 else 0
        disturbed = " (disturbed)" if own.disturbed or other.disturbed else ""
        lines.append(
            f"| {target.label} | {_number(value, digits)} | {_number(reference, digits)} "
            f"| {ratio:.2f}x{disturbed} | {'yes' if ratio <= target.limit else 'no'} |"
        )
    one, two = summaries.get(("h1-small-tls", "eventgw")), summaries.get(
        ("h1-small-tls", "eventgw-w2")
    )
    if one is not None and two is not None and one.throughput:
        scale = two.throughput / one.throughput
        lines.append(
            f"| --workers 2 throughput, HTTP/1.1 small TLS: ≥ {WORKERS_SCALING}x one process "
            f"| {_number(two.throughput)} | {_number(one.throughput)} "
            f"| {scale:.2f}x | {'yes' if scale >= WORKERS_SCALING else 'no'} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""
