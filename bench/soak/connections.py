"""Connection scale: 10,000 idle TLS connections to one gateway, its RSS per connection, and
the latency of an active client with and without them.

``bench/soak/connections.py [--count 10000] [--rate 100] [--seconds 20]`` (with the
project venv's python and ``PYTHONPATH`` at the checkout). It starts, on 127.0.0.1, the
demo Master API (HTTP) and ``twistd -n eventgw`` with the development certificate and
``limits.header_timeout`` / ``idle_timeout`` raised to an hour (the defaults, 15 s and
120 s, would close the silent connections while they are held). Then:

1. the active client (``--probe``, its own process): HTTP/1.1 over TLS, one keep-alive
   connection, ``GET /api/hello`` at ``--rate`` requests per second for ``--seconds``;
2. the gateway's RSS and fds; ``idle.py`` opens ``--count`` connections (ALPN ``h2``
   and ``http/1.1`` alternating, handshake complete, h2 ones past the preface and
   SETTINGS exchange) and holds them;
3. RSS and fds again, the active client again, the connections closed, RSS once more.

The figures are printed as markdown (``bench/SCALE.md`` is such a run) and as JSON in
``bench/out/scale/<time>/scale.json``. The soft fd limit is raised to the hard one in
this process (the gateway and the holder inherit it).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

SOAK_DIR: Final = Path(__file__).resolve().parent
BENCH_DIR: Final = SOAK_DIR.parent
REPO_DIR: Final = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from rig.processes import Server, cpu_seconds, free_port  # noqa: E402
from soakcheck import percentile  # noqa: E402

CONFIG: Final = """\
# Written by bench/soak/connections.py.
listen:
  tls: {tls}
  interface: 127.0.0.1
tls:
  dev_cert_dir: {out}/dev-cert
master_api:
  http: http://127.0.0.1:{http}
limits:
  # The held connections send no request: keep them past the defaults (15 s, 120 s).
  header_timeout: 3600
  idle_timeout: 3600
log:
  access: true
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] connections: {message}", file=sys.stderr, flush=True)


def probe(port: int, ca: str, rate: float, seconds: float) -> dict[str, Any]:
    """The active client: fixed-rate keep-alive GETs; latencies of the answered ones."""
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["http/1.1"])
    conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
    latencies: list[float] = []
    errors = 0
    interval = 1.0 / rate
    start = time.perf_counter()
    total = int(rate * seconds)
    for n in range(total):
        wait = start + n * interval - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        try:
            conn.request("GET", "/api/hello")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
    conn.close()
    took = time.perf_counter() - start
    return {"requests": total, "errors": errors, "achieved_rps": total / took,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=0.0) * 1000}


def rss_fds(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024.0
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def raise_fd_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(options: argparse.Namespace) -> dict[str, Any]:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = options.out or BENCH_DIR / "out" / "scale" / stamp
    out.mkdir(parents=True, exist_ok=True)
    limit = raise_fd_limit()
    if limit < options.count + 200:
        raise SystemExit(f"connections: the hard fd limit {limit} is below {options.count + 200}")
    python = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_DIR))
    tls, http_port = free_port(), free_port()
    (out / "gateway.yaml").write_text(CONFIG.format(tls=tls, http=http_port, out=out))
    servers = [
        Server("master-http", [python, "-m", "demo.masterapi.http_server", "--port",
                               str(http_port)], (http_port,), out / "master-http.log",
               cwd=REPO_DIR, env=env),
        Server("eventgw", [str(Path(python).with_name("twistd")), "-n", "--pidfile=",
                           "--logfile", str(out / "twistd.log"), "eventgw", "--config",
                           str(out / "gateway.yaml")], (tls,), out / "eventgw.out",
               cwd=REPO_DIR, env=env),
    ]
    ca = str(out / "dev-cert" / "gateway-dev.pem")
    holder: subprocess.Popen[bytes] | None = None

    def probe_child() -> dict[str, Any]:
        done = subprocess.run(
            [python, __file__, "--probe", "--port", str(tls), "--ca", ca,
             "--rate", str(options.rate), "--seconds", str(options.seconds)],
            env=env, check=True, capture_output=True, timeout=options.seconds * 3 + 60)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    result: dict[str, Any] = {"count": options.count, "rate": options.rate,
                              "seconds": options.seconds, "fd_limit": limit}
    try:
        for server in servers:
            server.start()
            server.wait_ready()
        gateway = servers[1].pid
        log(f"gateway pid {gateway} on {tls}; warming up")
        probe_child()  # warm-up: imports, the upstream pool, the TLS session
        log("active client, no idle connections")
        result["probe_before"] = probe_child()
        time.sleep(2)
        result["rss_before_mib"], result["fds_before"] = rss_fds(gateway)
        status = out / "idle.json"
        log(f"opening {options.count} idle connections")
        started = time.monotonic()
        holder = subprocess.Popen(
            [python, str(SOAK_DIR / "idle.py"), "--port", str(tls), "--ca", ca,
             "--count", str(options.count), "--parallel", str(options.parallel),
             "--status", str(status)],
            env=env, stdout=(out / "idle.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True)
        stats: dict[str, Any] = {}
        while time.monotonic() - started < options.open_timeout:
            time.sleep(1)
            try:
                stats = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            if "open_seconds" in stats:
                break
        result["open_seconds"] = time.monotonic() - started
        result["holder"] = stats
        cpu_mark = cpu_seconds([gateway])
        time.sleep(10)
        result["gateway_cpu_idle_10s"] = cpu_seconds([gateway]) - cpu_mark
        result["rss_held_mib"], result["fds_held"] = rss_fds(gateway)
        opened = int(stats.get("open", 0))
        result["kib_per_connection"] = (
            (result["rss_held_mib"] - result["rss_before_mib"]) * 1024 / opened if opened else None)
        log(f"{opened} open; active client with them held")
        result["probe_held"] = probe_child()
        result["holder_end"] = json.loads(status.read_text())
        os.killpg(holder.pid, signal.SIGTERM)
        holder.wait(30)
        holder = None
        time.sleep(5)
        result["rss_after_close_mib"], result["fds_after_close"] = rss_fds(gateway)
        log("active client after they closed")
        result["probe_after"] = probe_child()
    finally:
        if holder is not None and holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
        for server in reversed(servers):
            server.stop()
    (out / "scale.json").write_text(json.dumps(result, indent=1))
    return result


def markdown(r: dict[str, Any]) -> str:
    held = r["holder"]
    lines = [
        f"{held.get('open', 0):,} of {r['count']:,} connections open after "
        f"{r['open_seconds']:.1f} s (ALPN {held.get('alpn')}, {held.get('failed', 0)} failed "
        f"to open: {held.get('errors') or 'none'}); {r['holder_end'].get('open')} still open "
        f"and {r['holder_end'].get('closed_by_peer')} closed by the gateway when the second "
        "client run ended.",
        "",
        "| | RSS (MiB) | open fds |",
        "|---|---|---|",
        f"| before | {r['rss_before_mib']:.1f} | {r['fds_before']} |",
        f"| {held.get('open', 0):,} held | {r['rss_held_mib']:.1f} | {r['fds_held']} |",
        f"| after they closed | {r['rss_after_close_mib']:.1f} | {r['fds_after_close']} |",
        "",
        f"RSS per idle connection: **{r['kib_per_connection']:.1f} KiB**. Gateway CPU while "
        f"holding them (10 s, no traffic): {r['gateway_cpu_idle_10s']:.2f} s.",
        "",
        f"Active client: one HTTP/1.1 TLS keep-alive connection, `GET /api/hello` at "
        f"{r['rate']:g} requests/s for {r['seconds']:g} s.",
        "",
        "| | requests | errors | achieved req/s | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("probe_before", "no idle connections"),
                       ("probe_held", f"{held.get('open', 0):,} idle connections held"),
                       ("probe_after", "after they closed")):
        p = r[key]
        lines.append(f"| {label} | {p['requests']:,} | {p['errors']} | {p['achieved_rps']:.1f} | "
                     f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['max_ms']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=32, help="handshakes in flight")
    parser.add_argument("--rate", type=float, default=100.0, help="active client req/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="each active client run")
    parser.add_argument("--open-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.probe:
        print(json.dumps(probe(options.port, options.ca, options.rate, options.seconds)))
        return 0
    print(markdown(run(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
