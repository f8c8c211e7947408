"""eventgw benchmark: every row against the same backends, in one run, as one table.

Run through ``bench/run`` (which installs the tools and the venv first); see README.md.
Each (workload, row) cell is checked with a real client, then loaded ``--repeats``
times for ``--duration`` seconds, rows interleaved within each repeat so that drift on
the machine spreads evenly over the rows; the table reports medians.  The proxy under
test runs on the proxy CPU; backends and load generators on the side CPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Final

from rig.checks import CheckFailed, check
from rig.processes import (
    RunLock,
    Server,
    cpu_seconds,
    machine_busy_seconds,
    own_cpu_seconds,
    pinned,
)
from rig.report import (
    DISTURBED_CPUS,
    HEADER,
    Run,
    Summary,
    access_cost_table,
    metrics_cost_table,
    summarize,
    table_rows,
    targets_table,
)
from rig.rows import ROW_NAMES, Rig, Row, eventgw_unavailable, make_backends, make_rows
from rig.setup import BENCH_DIR, REPO_DIR, build_backend, make_certificate, make_jwt
from rig.workloads import (
    WORKLOAD_NAMES,
    WORKLOADS,
    Bodies,
    LoadError,
    Workload,
    build_command,
    port_for,
    run_load,
    run_seconds,
)

# The whole run, setup and teardown included, stays under ten minutes.
DEFAULT_BUDGET_S: Final = 570.0
# What one run costs beyond its duration (process start, /proc scan, parsing, pause).
RUN_OVERHEAD_S: Final = 0.6
# Lets the proxy finish closing the previous run's connections before the next one.
PAUSE_S: Final = 0.2
# A run during which processes outside the rig kept CPUs busy (see Run.disturbed) is
# measured again, up to this many attempts in all, after a pause.
DISTURBED_ATTEMPTS: Final = 3
DISTURBED_PAUSE_S: Final = 1.0
# After this many disturbed attempts in a row the noise is not passing: measuring again
# would only spend the budget, so runs are kept (and flagged) until one is quiet again.
PERSISTENT_NOISE_ATTEMPTS: Final = 5
TOOLS: Final = ("nginx", "wrk", "h2load", "taskset", "make", "g++", "protoc")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _names(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return [name for name in known if name in names]  # canonical order


@dataclass(frozen=True)
class Options:
    rows: list[str]
    workloads: list[str]
    duration: int
    repeats: int
    budget: float
    eventgw_config: Path
    hold: bool
    wait: float
    out: Path


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROW_NAMES),
                        help="comma-separated rows (default: all): " + ", ".join(ROW_NAMES))
    parser.add_argument("--workloads", default=",".join(WORKLOAD_NAMES),
                        help="comma-separated workloads (default: all): "
                        + ", ".join(WORKLOAD_NAMES))
    parser.add_argument("--duration", type=int, default=2,
                        help="whole seconds per run (wrk takes no fractions; default 2)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per cell; the table shows medians (default 3)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds for the whole run; cells that would overrun it are "
                        f"skipped and marked (default {DEFAULT_BUDGET_S:.0f})")
    parser.add_argument("--eventgw-config", type=Path, default=BENCH_DIR / "conf" / "gateway.yaml",
                        help="gateway YAML template for the eventgw rows (@{...} placeholders)")
    parser.add_argument("--hold", action="store_true",
                        help="start the backends and rows, print their ports and wait for "
                        "Ctrl-C instead of measuring (for profiling by hand)")
    parser.add_argument("--wait", type=float, default=600.0,
                        help="seconds to wait for a benchmark that is already running "
                        "(one at a time: they would measure each other); 0 fails at once "
                        "(default 600)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out",
                        help="where logs and results go (default bench/out)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.repeats < 1:
        parser.error("--duration must be positive and --repeats at least 1")
    return Options(
        rows=_names(args.rows, ROW_NAMES, "rows"),
        workloads=_names(args.workloads, WORKLOAD_NAMES, "workloads"),
        duration=args.duration,
        repeats=args.repeats,
        budget=args.budget,
        eventgw_config=args.eventgw_config.resolve(),
        hold=args.hold,
        wait=args.wait,
        out=args.out.resolve(),
    )


def cpu_layout() -> tuple[str, str, str]:
    """(proxy CPUs, backend + load generator CPUs, CPUs for the two-worker row)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) == 1:
        only = str(cpus[0])
        return only, only, only
    proxy, side = str(cpus[0]), str(cpus[1])
    # A second worker gets a CPU of its own if there is one; else it shares the side CPU.
    workers = f"{proxy},{cpus[2]}" if len(cpus) > 2 else f"{proxy},{side}"
    return proxy, side, workers


# Run directories (logs, configs, certificates) kept under bench/out/runs/.
KEPT_RUN_DIRS: Final = 5


def new_run_dir(out: Path) -> Path:
    """A fresh directory for this run's files; ``out/run`` points at the latest one."""
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-KEPT_RUN_DIRS]:
        shutil.rmtree(old, ignore_errors=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    run_dir = runs / f"{stamp}-{os.getpid()}"
    run_dir.mkdir()
    latest = out / "run"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(run_dir.relative_to(out))
    return run_dir


class Bench:
    """One benchmark run: owns every process it starts and stops them all at the end."""

    def __init__(self, args: Options, waited_s: float) -> None:
        self.args = args
        # bench/run exports when it started, so installing and building count too;
        # waiting for another run to finish does not.
        already = time.time() - float(os.environ.get("EVENTGW_BENCH_STARTED", time.time()))
        self.started = time.monotonic() - max(already - waited_s, 0.0)
        self.servers: list[Server] = []
        self.results: dict[tuple[str, str], list[Run]] = {}
        self.notes: dict[tuple[str, str], str] = {}
        self.rows: list[Row] = []
        self.bodies: Bodies | None = None
        # CPU seconds that processes outside the rig used while runs were measured.
        self.foreign_cpu_s = 0.0
        self.measured_s = 0.0
        self.repeated_runs = 0
        self.disturbed_in_a_row = 0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def prepare(self) -> Rig:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise SystemExit(f"missing tools: {', '.join(missing)} (bench/run installs them)")
        log("building the gRPC C++ backend ...")
        grpc_backend = build_backend()
        run_dir = new_run_dir(self.args.out)
        proxy, side, workers = cpu_layout()
        return Rig(
            out=run_dir,
            cert=make_certificate(run_dir / "cert"),
            python=Path(sys.executable),
            grpc_backend=grpc_backend,
            proxy_cpus=proxy,
            side_cpus=side,
            workers_cpus=workers,
            eventgw_config=self.args.eventgw_config,
            jwt=make_jwt(run_dir / "jwt"),
        )

    def start(self, rig: Rig) -> None:
        self.bodies = Bodies.write(rig.out / "bodies", bearer=rig.jwt.token)
        backends = make_backends(rig)
        self.rows = make_rows(rig, backends, self.args.rows)
        for server in backends.servers:
            self._start(server)
        if any(row.name.startswith("eventgw") for row in self.rows):
            reason = eventgw_unavailable(rig.python)
            for row in self.rows:
                if row.name.startswith("eventgw"):
                    row.unavailable = reason and f"not runnable: {reason}"
        for row in self.rows:
            if row.unavailable:
                log(f"{row.name}: {row.unavailable}")
                continue
            try:
                for server in row.servers:
                    self._start(server)
            except RuntimeError as error:
                row.unavailable = "did not start (see log)"
                log(f"{row.name}: {error}")

    def _start(self, server: Server) -> None:
        self.servers.append(server)
        server.start()
        server.wait_ready()
        log(f"started {server.name} (pid {server.pid}) on {server.ports}")

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def hold(self) -> None:
        for row in self.rows:
            ports = {name: port for name, port in asdict(row.endpoints).items() if port}
            pids = ", ".join(str(pid) for pid in row.pids()) if row.measured else "-"
            log(f"{row.name}: {row.unavailable or ports} pid {pids}")
        log(f"request bodies for h2load -d: {self.bodies}")
        log("holding; Ctrl-C stops everything")
        while True:
            time.sleep(3600)

    def measure(self, rig: Rig) -> None:
        assert self.bodies is not None, "start() first"
        for workload in (w for w in WORKLOADS if w.name in self.args.workloads):
            rows = self._checked_rows(workload, rig)
            for repeat in range(self.args.repeats):
                for row in rows:
                    key = (workload.name, row.name)
                    if key in self.notes:
                        continue
                    if not self._fits_budget(workload):
                        self.notes[key] = "skipped: time budget"
                        continue
                    self._run(workload, row, self.bodies, rig, repeat)
            # A proxy that still answers, but wrongly, after the load is worth knowing of.
            for row in rows:
                key = (workload.name, row.name)
                if key in self.notes or key not in self.results:
                    continue
                try:
                    check(workload, row, rig.cert, rig.jwt.token)
                except CheckFailed as error:
                    self.notes[key] = "check after load failed"
                    log(f"{workload.name} / {row.name}: check after load failed: {error}")

    def _checked_rows(self, workload: Workload, rig: Rig) -> list[Row]:
        ready = []
        for row in self.rows:
            key = (workload.name, row.name)
            if port_for(workload, row) is None:
                continue  # the row does not offer this kind of traffic
            if row.unavailable:
                self.notes[key] = row.unavailable
                continue
            try:
                check(workload, row, rig.cert, rig.jwt.token)
            except CheckFailed as error:
                self.notes[key] = "check failed"
                log(f"{workload.name} / {row.name}: check failed: {error}")
                continue
            ready.append(row)
        return ready

    def _fits_budget(self, workload: Workload) -> bool:
        seconds = run_seconds(workload, self.args.duration)
        return self.elapsed() + seconds + RUN_OVERHEAD_S + 5 < self.args.budget

    def _run(self, workload: Workload, row: Row, bodies: Bodies, rig: Rig, repeat: int) -> None:
        """One measured run; repeated (budget permitting) if other processes disturbed it."""
        key = (workload.name, row.name)
        for attempt in range(1, DISTURBED_ATTEMPTS + 1):
            try:
                run = self._measure_once(workload, row, bodies, rig)
            except LoadError as error:
                self.notes[key] = "load generator failed"
                log(f"{workload.name} / {row.name}: {error}")
                return
            if not all(server.alive() for server in row.servers):
                row.unavailable = "proxy died (see log)"
                self.notes[key] = row.unavailable
                return
            self.foreign_cpu_s += run.foreign_cpu_s
            self.measured_s += run.load.seconds
            self.disturbed_in_a_row = self.disturbed_in_a_row + 1 if run.disturbed else 0
            if (
                not run.disturbed
                or attempt == DISTURBED_ATTEMPTS
                or self.disturbed_in_a_row >= PERSISTENT_NOISE_ATTEMPTS
                or not self._fits_budget(workload)
            ):
                break
            self.repeated_runs += 1
            log(f"{workload.name} / {row.name} #{repeat + 1}: other processes used "
                f"{run.foreign_cpu_s / run.load.seconds:.2f} CPUs; measuring again")
            time.sleep(DISTURBED_PAUSE_S)
        self.results.setdefault(key, []).append(run)
        load = run.load
        cpu_text = "" if run.cpu_s is None else f", proxy CPU {run.cpu_s:.2f} s"
        noisy = " (disturbed)" if run.disturbed else ""
        log(f"{workload.name} / {row.name} #{repeat + 1}: {load.requests / load.seconds:,.0f}/s, "
            f"{load.errors} errors{cpu_text}{noisy}")

    def _measure_once(self, workload: Workload, row: Row, bodies: Bodies, rig: Rig) -> Run:
        # h2load appends to its log file, so each run gets a fresh one.
        log_file = rig.out / "h2load.log"
        log_file.unlink(missing_ok=True)
        command = build_command(workload, row, self.args.duration, bodies, log_file)
        command = replace(command, argv=pinned(rig.side_cpus, command.argv))
        time.sleep(PAUSE_S)
        before = cpu_seconds(row.pids()) if row.measured else None
        rig_before = self._rig_cpu_seconds()
        machine_before = machine_busy_seconds()
        load = run_load(command, run_seconds(workload, self.args.duration))
        foreign = (machine_busy_seconds() - machine_before) - (
            self._rig_cpu_seconds() - rig_before
        )
        cpu = cpu_seconds(row.pids()) - before if before is not None else None
        return Run(load, cpu, max(foreign, 0.0))

    def _rig_cpu_seconds(self) -> float:
        """CPU time of everything the rig runs: servers, load generators, itself."""
        return cpu_seconds(server.pid for server in self.servers) + own_cpu_seconds()

    def summaries(self) -> dict[tuple[str, str], Summary]:
        by_name = {workload.name: workload for workload in WORKLOADS}
        return {key: summarize(by_name[key[0]], runs) for key, runs in self.results.items()}

    def table(self) -> str:
        lines = [HEADER]
        order = [row.name for row in self.rows]
        for workload in (w for w in WORKLOADS if w.name in self.args.workloads):
            summaries: dict[str, Summary] = {
                row: summarize(workload, runs)
                for (name, row), runs in self.results.items() if name == workload.name
            }
            notes = {row: note for (name, row), note in self.notes.items()
                     if name == workload.name}
            lines += table_rows(workload, summaries, notes, order, self.args.repeats)
        return "\n".join(lines)

    def write(self, table: str, rig: Rig) -> Path:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H%MZ")
        foreign = self.foreign_cpu_s / self.measured_s if self.measured_s else 0.0
        text = results_markdown(
            table, rig, self.args, stamp, self.elapsed(), foreign, self.repeated_runs
        )
        out = self.args.out
        (out / f"results-{stamp}.md").write_text(text)
        (out / "RESULTS.md").write_text(text)
        raw = {f"{workload} / {row}": [asdict(run) for run in runs]
               for (workload, row), runs in self.results.items()}
        (out / f"results-{stamp}.json").write_text(json.dumps(raw, indent=1))
        return out / "RESULTS.md"


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "?"


def machine_description(rig: Rig) -> list[str]:
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    os_name = next((line.split("=", 1)[1].strip('"') for line in
                    Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.platform())
    python = [f"{name} {version(name)}" for name in ("twisted", "grpcio", "h2")]
    return [
        f"- machine: {cpu}, {os.cpu_count()} CPUs, {os_name}, Linux {platform.release()}",
        f"- pinning: proxy on CPU {rig.proxy_cpus} (eventgw-w2 on {rig.workers_cpus}); "
        f"backends and load generators on CPU {rig.side_cpus}",
        f"- {_version(['nginx', '-v'])}; {_version(['h2load', '--version'])}; "
        f"{_version(['wrk', '-v'])}; gRPC C++ {_version(['pkg-config', '--modversion', 'grpc++'])}",
        f"- Python {platform.python_version()}; {', '.join(python)}; "
        f"eventgw {_version(['git', '-C', str(REPO_DIR), 'describe', '--always', '--dirty'])}",
    ]


def results_markdown(
    table: str,
    rig: Rig,
    args: Options,
    stamp: str,
    elapsed: float,
    foreign: float,
    repeated: int,
) -> str:
    return "\n".join([
        "# eventgw benchmark results",
        "",
        f"Run {stamp} with `bench/run --duration {args.duration} --repeats {args.repeats}` "
        f"({elapsed:.0f} s in all). Medians of {args.repeats} runs per cell; "
        "proxy CPU is utime+stime of the proxy and its workers, from /proc.",
        "",
        *machine_description(rig),
        f"- other processes on the machine used {foreign:.2f} CPUs on average while runs "
        f"were measured (0 on a quiet machine); {repeated} runs that they disturbed "
        f"(more than {DISTURBED_CPUS} CPUs) were measured again",
        "",
        table,
        "",
    ])


def acquire(lock: RunLock, wait_s: float) -> float:
    """Take the run lock, waiting up to ``wait_s`` for another run; return the seconds waited."""
    started = time.monotonic()
    if lock.try_acquire():
        return 0.0
    log(f"waiting up to {wait_s:.0f} s for the benchmark that is running ({lock.holder()})")
    while not lock.try_acquire():
        if time.monotonic() - started > wait_s:
            raise SystemExit(f"another benchmark is still running ({lock.holder()})")
        time.sleep(1.0)
    return time.monotonic() - started


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    lock = RunLock(args.out / ".lock")
    try:
        return measure_and_report(args, acquire(lock, args.wait))
    finally:
        lock.release()


def measure_and_report(args: Options, waited_s: float) -> int:
    bench = Bench(args, waited_s)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    failed = False
    rig = bench.prepare()
    try:
        bench.start(rig)
        if args.hold:
            bench.hold()
            return 0
        bench.measure(rig)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    except Exception:
        # Report what was measured before the rig itself failed.
        log("the rig failed; stopping everything:\n" + traceback.format_exc())
        failed = True
    finally:
        bench.stop()
    table = bench.table()
    targets = targets_table(bench.summaries())
    if targets:
        # The single-process eventgw row against the performance targets; the rig runs
        # on any machine, the targets were set for the two-CPU reference one.
        table += "\n\nTargets for one eventgw process (see bench/README.md):\n\n" + targets
    cost = metrics_cost_table(bench.summaries())
    if cost:
        table += "\n\nThe cost of metrics: proxy CPU per request, on against off:\n\n" + cost
    access = access_cost_table(bench.summaries())
    if access:
        table += (
            "\n\nThe cost of access checks: proxy CPU per request over the open route:\n\n"
            + access
        )
    path = bench.write(table, rig)
    print(table)
    if bench.measured_s:
        log(f"other processes used {bench.foreign_cpu_s / bench.measured_s:.2f} CPUs on "
            f"average during the runs; {bench.repeated_runs} runs were measured again")
    log(f"{bench.elapsed():.0f} s in all; results in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
