"""The soak: the gateway under a steady mixed load for minutes, its upstreams killed on a
schedule, thousands of idle TLS connections held, its configuration reloaded (SIGHUP)
on a schedule; then PASS/FAIL per check.

``bench/soak/run --minutes 30`` (see bench/README.md, "Soak"). Everything runs on
127.0.0.1: the demo Master API (HTTP and gRPC), the demo Event Broker recording every
accepted event id, ``twistd -n eventgw`` (TLS with the development certificate, and
cleartext; an admin listener whose ``eventgw_config_reloads_total`` counts the reloads:
every ``--reload-every`` seconds the file alternates between two valid configurations,
the second denying one more gRPC method prefix that no lane calls, and the gateway gets
SIGHUP), ``idle.py`` holding the idle connections and ``loadgen.py`` sending the
load. The run's files go to ``bench/out/soak/<time>/``: the gateway's configuration and
log, every request (``records.jsonl``), the samples, the fault windows, ``report.md``,
``soak.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any, Final

SOAK_DIR: Final = Path(__file__).resolve().parent
BENCH_DIR: Final = SOAK_DIR.parent
REPO_DIR: Final = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from rig.processes import Server, cpu_seconds, free_port  # noqa: E402
from soakcheck import (  # noqa: E402
    Record,
    Result,
    Window,
    deadline_overruns,
    errors_in_windows,
    exactly_once,
    flat,
    percentile,
    recoveries,
)

SERVICES: Final = ("master-http", "master-grpc", "broker")
# The two gRPC deny lists the reloads alternate between (no lane calls /soak.reload.).
DENY_LISTS: Final = ('["/eventbroker."]', '["/eventbroker.", "/soak.reload."]')
# How long a reload may take to show in the admin listener's reload counter.
RELOAD_WAIT_S: Final = 10.0
# A failed request is still explained by a fault this long after the service listens again
# (the gateway's pools reconnect on the next request; a grpcio channel backs off ~1 s).
GRACE_S: Final = 5.0
# Memory: growth after warm-up at most 8 MiB + 5 %; fds: at most 20 + 2 %.
RSS_TOLERANCE: Final = (8.0, 0.05)
FD_TOLERANCE: Final = (20.0, 0.02)

CONFIG: Final = """\
# Written by bench/soak/soak.py.
listen:
  tls: {tls}
  cleartext: {clear}
  interface: 127.0.0.1
tls:
  dev_cert_dir: {out}/dev-cert
master_api:
  http: http://127.0.0.1:{http}
  grpc: 127.0.0.1:{grpc}
  connect_timeout: 2
  response_timeout: 5
event_broker:
  grpc: 127.0.0.1:{broker}
  deadline: 3
  client: {broker_client}
grpc:
  allow: ["/"]
  deny: {deny}
admin:
  listen: 127.0.0.1:{admin}
limits:
  # The idle connections send nothing for the whole run: keep them past the defaults
  # (header_timeout 15 s, idle_timeout 120 s), which would close them.
  header_timeout: {hold}
  idle_timeout: {hold}
log:
  access: true
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] soak: {message}", file=sys.stderr, flush=True)


def raise_fd_limit() -> int:
    """The rig's own soft fd limit up to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def proc_sample(pid: int) -> tuple[float, int, int]:
    """RSS in MiB, open fds and threads of ``pid`` (from /proc)."""
    rss_kb, threads = 0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss_kb / 1024.0, len(os.listdir(f"/proc/{pid}/fd")), threads


class Soak:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out: Path = options.out or BENCH_DIR / "out" / "soak" / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        self.python = sys.executable
        self.ports = {name: free_port()
                      for name in ("tls", "clear", "http", "grpc", "broker", "admin")}
        self.reloads: list[dict[str, Any]] = []
        self.windows: list[Window] = []
        self.samples: list[dict[str, Any]] = []
        self.servers: dict[str, Server] = {}
        self.stop_sampling = threading.Event()
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_DIR))
        self.grace: float = options.grace

    # -- processes ----------------------------------------------------------------

    def _service(self, name: str) -> Server:
        p = self.ports
        argv = {
            "master-http": [self.python, "-m", "demo.masterapi.http_server",
                            "--port", str(p["http"])],
            "master-grpc": [self.python, "-m", "demo.masterapi.grpc_server",
                            "--port", str(p["grpc"])],
            "broker": [self.python, "-m", "demo.eventbroker", "--port", str(p["broker"]),
                       "--quiet", "--keep", "10", "--record", str(self.out / "broker-ids.txt")],
        }[name]
        port = {"master-http": p["http"], "master-grpc": p["grpc"], "broker": p["broker"]}[name]
        # A restarted service appends to its own log.
        count = sum(1 for w in self.windows if w.service == name)
        return Server(name, argv, (port,), self.out / f"{name}.{count}.log", cwd=REPO_DIR,
                      env=self.env)

    def start_service(self, name: str) -> None:
        server = self._service(name)
        server.start()
        server.wait_ready()
        self.servers[name] = server

    def start_services(self) -> None:
        """All three at once (each takes a second or two to import grpcio or Twisted)."""
        for name in SERVICES:
            self.servers[name] = self._service(name)
            self.servers[name].start()
        for name in SERVICES:
            self.servers[name].wait_ready()

    def write_config(self, variant: int) -> Path:
        """The gateway's file with deny list ``variant``, replaced in one rename."""
        config = self.out / "gateway.yaml"
        hold = int(self.options.minutes * 60 + 600)
        text = CONFIG.format(out=self.out, hold=hold, deny=DENY_LISTS[variant],
                             broker_client=self.options.broker_client, **self.ports)
        scratch = config.with_suffix(".tmp")
        scratch.write_text(text)
        scratch.replace(config)
        return config

    def reload_counts(self) -> tuple[float, float]:
        """``eventgw_config_reloads_total`` (success, failure) from the admin listener."""
        url = f"http://127.0.0.1:{self.ports['admin']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        counts = {"success": 0.0, "failure": 0.0}
        for line in text.splitlines():
            if line.startswith("eventgw_config_reloads_total{"):
                for result in counts:
                    if f'result="{result}"' in line:
                        counts[result] = float(line.rsplit(" ", 1)[1])
        return counts["success"], counts["failure"]

    def reload(self, gateway: Server) -> None:
        """Switch the file to the other deny list, SIGHUP, and wait for the outcome."""
        variant = (len(self.reloads) + 1) % len(DENY_LISTS)
        try:
            before = self.reload_counts()
        except OSError as error:
            self.reloads.append({"t": time.time(), "ok": False, "detail": f"no metrics: {error}"})
            return
        self.write_config(variant)
        start = time.time()
        os.kill(gateway.pid, signal.SIGHUP)
        outcome: dict[str, Any] = {"t": start, "ok": False, "detail": "no outcome in time"}
        while time.time() < start + RELOAD_WAIT_S:
            try:
                after = self.reload_counts()
            except OSError:
                after = before
            if after[1] > before[1]:
                outcome = {"t": start, "ok": False, "detail": "reload failed"}
                break
            if after[0] > before[0]:
                outcome = {"t": start, "ok": True, "detail": f"deny list {variant}"}
                break
            time.sleep(0.1)
        outcome["took_s"] = time.time() - start
        self.reloads.append(outcome)
        log(f"reload {len(self.reloads)} (deny list {variant}): "
            f"{'ok' if outcome['ok'] else outcome['detail']} in {outcome['took_s']:.1f} s")

    def start_gateway(self) -> Server:
        config = self.write_config(0)
        twistd = str(Path(self.python).with_name("twistd"))
        gateway = Server("eventgw", [twistd, "-n", "--pidfile=", "--logfile",
                                     str(self.out / "twistd.log"), "eventgw", "--config",
                                     str(config)],
                         (self.ports["tls"], self.ports["clear"]), self.out / "eventgw.out",
                         cwd=REPO_DIR, env=self.env)
        gateway.start()
        gateway.wait_ready()
        self.servers["eventgw"] = gateway
        return gateway

    def fault(self, name: str, down: float) -> None:
        server = self.servers[name]
        start = time.time()
        os.killpg(server.pid, signal.SIGKILL)
        server.process.wait(10)  # type: ignore[union-attr]
        server.stop()  # closes its log
        log(f"fault: {name} killed (SIGKILL), down for {down:g} s")
        time.sleep(down)
        self.windows.append(Window(name, start, start))  # placeholder: counts restarts
        self.start_service(name)
        self.windows[-1] = Window(name, start, time.time())
        log(f"fault: {name} listening again after {time.time() - start:.1f} s")

    # -- sampling -----------------------------------------------------------------

    def sample_loop(self, pid: int, others: dict[str, int]) -> None:
        while not self.stop_sampling.wait(self.options.sample):
            try:
                rss, fds, threads = proc_sample(pid)
            except OSError:
                continue
            sample: dict[str, Any] = {"t": time.time(), "rss_mib": rss, "fds": fds,
                                      "threads": threads, "gateway_cpu_s": cpu_seconds([pid])}
            sample["load_cpu_s"] = cpu_seconds(others.values())
            try:
                sample["idle"] = json.loads((self.out / "idle.json").read_text())
            except (OSError, ValueError):
                pass
            self.samples.append(sample)

    # -- the run ------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        limit = raise_fd_limit()
        log(f"out {self.out}; fd limit {limit}; ports {self.ports}")
        if limit < options.idle + 500:
            log(f"fd limit {limit} too low for {options.idle} idle connections")
            return 2
        self.start_services()
        gateway = self.start_gateway()
        ca = str(self.out / "dev-cert" / "gateway-dev.pem")
        log(f"gateway pid {gateway.pid} on TLS {self.ports['tls']}, "
            f"cleartext {self.ports['clear']}")
        t0 = time.time()
        duration = options.minutes * 60.0
        end = t0 + duration
        base = proc_sample(gateway.pid)
        idle = subprocess.Popen(
            [self.python, str(SOAK_DIR / "idle.py"), "--port", str(self.ports["tls"]),
             "--ca", ca, "--count", str(options.idle), "--status", str(self.out / "idle.json"),
             "--until", str(end + 5)],
            env=self.env, stdout=(self.out / "idle.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        load = subprocess.Popen(
            [self.python, str(SOAK_DIR / "loadgen.py"), "--tls-port", str(self.ports["tls"]),
             "--clear-port", str(self.ports["clear"]), "--ca", ca, "--until", str(end),
             "--out", str(self.out), "--scale", str(options.scale)],
            env=self.env, stdout=(self.out / "loadgen.log").open("wb"),
            stderr=subprocess.STDOUT, start_new_session=True)
        sampler = threading.Thread(target=self.sample_loop, daemon=True,
                                   args=(gateway.pid, {"idle": idle.pid, "load": load.pid}))
        sampler.start()
        every = options.fault_every or max(20.0, min(90.0, duration / 6))
        downs = [float(d) for d in options.down.split(",")]
        # No fault starts so late that the service is not back (plus grace) well before the end.
        tail = min(10.0, duration / 10)
        log(f"running {options.minutes:g} min; a fault every {every:g} s "
            f"(down {options.down} s), {options.idle} idle connections")
        reload_every = options.reload_every
        next_reload = t0 + reload_every if reload_every > 0 else float("inf")
        if reload_every > 0:
            log(f"a configuration reload (SIGHUP) every {reload_every:g} s")
        status = 0
        try:
            index = 0
            next_fault = t0 + every
            while time.time() < end:
                if gateway.process is not None and gateway.process.poll() is not None:
                    log("the gateway exited!")
                    status = 1
                    break
                now = time.time()
                # Each service goes down for each of the durations in turn.
                down = downs[(index // len(SERVICES)) % len(downs)]
                if now >= next_fault and next_fault + down + self.grace + tail < end:
                    self.fault(SERVICES[index % len(SERVICES)], down)
                    index += 1
                    next_fault += every
                if time.time() >= next_reload and time.time() + 2.0 < end:
                    self.reload(gateway)
                    next_reload += reload_every
                time.sleep(min(1.0, max(0.0, end - time.time())))
            load.wait(timeout=120)
        finally:
            self.stop_sampling.set()
            sampler.join(10)
            final = proc_sample(gateway.pid) if gateway.alive() else (0.0, 0, 0)
            for process in (load, idle):
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)
            for server in self.servers.values():
                server.stop()
        return self.report(t0, base, final) or status

    # -- the report ---------------------------------------------------------------

    def report(self, t0: float, base: tuple[float, int, int],
               final: tuple[float, int, int]) -> int:
        options = self.options
        records = [Record(**json.loads(line))
                   for line in (self.out / "records.jsonl").read_text().splitlines() if line]
        accepted = (self.out / "accepted.txt").read_text().split()
        broker_ids = (self.out / "broker-ids.txt").read_text().split()
        duration = options.minutes * 60.0
        warmup = options.warmup if options.warmup is not None else max(30.0, duration * 0.1)
        rss = [(s["t"] - t0, s["rss_mib"]) for s in self.samples]
        fds = [(s["t"] - t0, float(s["fds"])) for s in self.samples]
        results: list[Result] = [
            flat("gateway RSS flat", rss, warmup, *RSS_TOLERANCE, unit="MiB"),
            flat("gateway open fds flat", fds, warmup, *FD_TOLERANCE, unit="fds"),
            errors_in_windows(records, self.windows, self.grace),
            deadline_overruns(records, 1.0),
            exactly_once(accepted, broker_ids),
        ]
        idle_final = self.samples[-1].get("idle", {}) if self.samples else {}
        idle_ok = (idle_final.get("open") == options.idle
                   and idle_final.get("closed_by_peer", 1) == 0)
        results.append(Result("idle connections held", idle_ok,
                              f"{idle_final.get('open')} of {options.idle} open at the end, "
                              f"{idle_final.get('closed_by_peer')} closed by the gateway, "
                              f"{idle_final.get('failed')} failed to open, ALPN "
                              f"{idle_final.get('alpn')}"))
        reloads_ok = sum(1 for r in self.reloads if r["ok"])
        reloads_failed = len(self.reloads) - reloads_ok
        results.append(Result("every reload applied", reloads_failed == 0,
                              f"{reloads_ok} ok, {reloads_failed} failed"
                              f" of {len(self.reloads)} SIGHUP reloads"))
        tracebacks = sum(path.read_text(errors="replace").count("Traceback")
                         for path in self.out.glob("twistd.log*"))
        results.append(Result("no tracebacks in the gateway's log", tracebacks == 0,
                              f"{tracebacks} tracebacks"))
        passed = all(r.passed for r in results)

        lanes: dict[str, list[Record]] = defaultdict(list)
        for record in records:
            lanes[record.lane].append(record)
        per_lane = {}
        for lane, rows in sorted(lanes.items()):
            good = [r.elapsed for r in rows if r.ok]
            errors = [r for r in rows if not r.ok]
            kinds: dict[str, int] = defaultdict(int)
            for r in errors:
                kinds[r.detail] += 1
            per_lane[lane] = {"flow": rows[0].flow, "requests": len(rows),
                              "rate": len(rows) / duration, "errors": len(errors),
                              "error_kinds": dict(kinds),
                              "p50_ms": percentile(good, 0.5) * 1000,
                              "p99_ms": percentile(good, 0.99) * 1000,
                              "max_ms": max(good, default=0.0) * 1000}
        gateway_cpu = self.samples[-1]["gateway_cpu_s"] if self.samples else 0.0
        load_cpu = self.samples[-1]["load_cpu_s"] if self.samples else 0.0
        recovered = [{"service": r.window.service, "start_s": r.window.start - t0,
                      "end_s": r.window.end - t0, "errors": r.errors,
                      "last_error_after_up_s": r.last_error_after_up}
                     for r in recoveries(records, self.windows)]
        summary = {
            "command": " ".join(sys.argv), "t0": t0, "minutes": options.minutes,
            "started": datetime.datetime.fromtimestamp(t0, datetime.UTC).isoformat(),
            "options": {k: str(v) for k, v in vars(options).items()},
            "passed": passed, "recoveries": recovered,
            "reloads": {"ok": reloads_ok, "failed": reloads_failed, "each": self.reloads},
            "rss_after_warmup_mib": next((s["rss_mib"] for s in self.samples
                                          if s["t"] - t0 >= warmup), None),
            "fds_after_warmup": next((s["fds"] for s in self.samples
                                      if s["t"] - t0 >= warmup), None),
            "machine": machine(), "ports": self.ports, "idle": options.idle,
            "warmup_s": warmup, "grace_s": self.grace,
            "windows": [{"service": w.service, "start_s": w.start - t0, "end_s": w.end - t0}
                        for w in self.windows],
            "checks": [{"name": r.name, "passed": r.passed, "detail": r.detail}
                       for r in results],
            "lanes": per_lane,
            "rss_mib": {"start": base[0], "end": final[0]},
            "fds": {"start": base[1], "end": final[1]},
            "threads": {"start": base[2], "end": final[2]},
            "gateway_cpu_s": gateway_cpu, "load_cpu_s": load_cpu,
            "samples": self.samples,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        (self.out / "report.md").write_text(markdown(summary))
        if options.plot:
            try:
                from plot import plot
            except ImportError as error:
                log(f"no plot ({error}); pip install matplotlib (the bench extra)")
            else:
                plot(summary, records, self.out / "soak.png")
        for result in results:
            print(result.line())
        print(f"{'PASS' if passed else 'FAIL'} overall; details in {self.out}")
        return 0 if passed else 1


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:,.1f}"


def markdown(summary: dict[str, Any]) -> str:
    """The run as markdown: command, machine, faults, checks, flows, memory and fds."""
    m = summary["machine"]
    samples = summary["samples"]
    lines = [
        f"Started {summary['started']}, {summary['minutes']:g} minutes, "
        f"{summary['idle']} idle TLS connections held, overall "
        f"**{'PASS' if summary['passed'] else 'FAIL'}**.",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['mem_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}; shared with other work during the run.",
        "",
        "### Checks",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for check in summary["checks"]:
        lines.append(f"| {check['name']} | {'PASS' if check['passed'] else '**FAIL**'} | "
                     f"{check['detail']} |")
    reloads = summary["reloads"]
    lines += ["", f"Configuration reloads (SIGHUP, two valid files in turn): {reloads['ok']} ok, "
              f"{reloads['failed']} failed."]
    lines += ["", "### Faults (SIGKILL, then a restart on the same port)", "",
              "| # | service | killed at (s) | listening again (s) | down (s) | errors charged "
              "| last error, s after it listened |", "|---|---|---|---|---|---|---|"]
    for n, r in enumerate(summary["recoveries"], 1):
        after = r["last_error_after_up_s"]
        lines.append(f"| {n} | {r['service']} | {r['start_s']:.1f} | {r['end_s']:.1f} | "
                     f"{r['end_s'] - r['start_s']:.1f} | {r['errors']} | "
                     f"{'-' if after is None else f'{after:+.1f}'} |")
    lines += ["", "### Flows (latency of the successful requests)", "",
              "| lane | flow | requests | req/s | errors | p50 ms | p99 ms | max ms "
              "| errors by kind |",
              "|---|---|---|---|---|---|---|---|---|"]
    for lane, v in summary["lanes"].items():
        kinds = ", ".join(f"{k}: {n}" for k, n in v["error_kinds"].items()) or "-"
        lines.append(f"| {lane} | {v['flow']} | {v['requests']:,} | {v['rate']:.1f} | "
                     f"{v['errors']:,} | {_ms(v['p50_ms'])} | {_ms(v['p99_ms'])} | "
                     f"{_ms(v['max_ms'])} | {kinds} |")
    peak_rss = max((s["rss_mib"] for s in samples), default=0.0)
    peak_fds = max((s["fds"] for s in samples), default=0)
    lines += ["", "### The gateway process", "",
              "| | before the idle connections | after warm-up | end | peak |",
              "|---|---|---|---|---|",
              f"| RSS (MiB) | {summary['rss_mib']['start']:.1f} | "
              f"{summary['rss_after_warmup_mib'] or 0:.1f} | {summary['rss_mib']['end']:.1f} "
              f"| {peak_rss:.1f} |",
              f"| open fds | {summary['fds']['start']} | {summary['fds_after_warmup']} | "
              f"{summary['fds']['end']} | {peak_fds} |",
              f"| threads | {summary['threads']['start']} | | {summary['threads']['end']} | |",
              "",
              f"CPU: the gateway used {summary['gateway_cpu_s']:.0f} s "
              f"({summary['gateway_cpu_s'] / (summary['minutes'] * 60) * 100:.0f} % of one CPU), "
              f"the load generator and the idle holder {summary['load_cpu_s']:.0f} s "
              f"({summary['load_cpu_s'] / (summary['minutes'] * 60) * 100:.0f} %).", ""]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=2000, help="idle TLS connections held")
    parser.add_argument("--fault-every", type=float, default=None,
                        help="seconds between faults (default: a sixth of the run, 20-90 s)")
    parser.add_argument("--down", default="5,10,20",
                        help="seconds a killed service stays down (a list: taken in turn)")
    parser.add_argument("--reload-every", type=float, default=60.0,
                        help="seconds between SIGHUP reloads, alternating two valid "
                        "configurations (0: none; default 60)")
    parser.add_argument("--broker-client", choices=("grpcio", "h2"), default="grpcio",
                        help="the gateway's event_broker.client")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before memory/fds must be flat "
                        "(default 10 %% of the run, at least 30)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every load rate")
    parser.add_argument("--grace", type=float, default=GRACE_S,
                        help=f"seconds after a restart errors are still explained ({GRACE_S:g})")
    parser.add_argument("--no-plot", dest="plot", action="store_false")
    parser.add_argument("--out", type=Path, default=None)
    return Soak(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
