"""A/B the ``/api`` proxy's CPU per request: several eventgw trees, interleaved runs.

Each variant is a source tree (a directory holding ``eventgw/``, put first on
``PYTHONPATH``); all variants run at once on their own ports (pinned to CPU 0, as in
``bench/``), behind one nginx ``return 200`` backend (CPU 1), and ``wrk`` (CPU 1)
loads them in turn, round after round, so slow drifts in the machine's load hit every
variant alike.  The figure is the gateway's CPU (``/proc/PID/stat``) per 1,000
requests; the median over rounds is printed.  Takes ``bench/out/.lock`` like
``bench/run``, so it never overlaps a benchmark.

Usage::

    .venv/bin/python profiling/api/ab.py base=/tmp/base new=. quiet=.,noaccess \
        --rounds 5 --duration 4 --path /api/small [--clear] [--no-access-log]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
VENV = REPO / ".venv" / "bin"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("variants", nargs="+", help="name=tree[,noaccess]")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--path", default="/api/small")
    parser.add_argument("--clear", action="store_true")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="eventgw-ab-"))
    lock = (REPO / "bench" / "out" / ".lock").open("a+")
    print("waiting for the bench lock", file=sys.stderr)
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}: profiling/api/ab.py\n")
    lock.flush()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api = free_port()
        work.chmod(0o755)
        www = work / "www" / "api"
        www.mkdir(parents=True)
        (www / "16k").write_bytes(b"x" * 16384)
        (work / "nginx.conf").write_text(
            f"daemon off; worker_processes 1; pid {work}/nginx.pid;"
            f" error_log {work}/error.log;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;\n"
            f"  client_body_temp_path {work}/tmp;\n"
            f"  server {{ listen 127.0.0.1:{api};\n"
            "    location = /api/small { default_type text/plain;"
            " return 200 \"small body from the backend\\n\"; }\n"
            f"    location = /api/16k {{ root {work}/www;"
            " default_type application/octet-stream; }\n"
            "  } }\n"
        )
        procs.append(subprocess.Popen(
            ["taskset", "-c", "1", "nginx", "-c", str(work / "nginx.conf"), "-p", str(work)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        wait_port(api)
        gateways: dict[str, tuple[int, int, int]] = {}
        for spec in args.variants:
            name, _, tree = spec.partition("=")
            tree, _, flag = tree.partition(",")
            access = not (args.no_access_log or flag == "noaccess")
            tls, clear = free_port(), free_port()
            folder = work / name
            folder.mkdir()
            (folder / "gateway.yaml").write_text(
                f"listen: {{tls: {tls}, cleartext: {clear}, interface: 127.0.0.1}}\n"
                f"tls: {{dev_cert_dir: {work}/cert}}\n"
                f"master_api: {{http: 'http://127.0.0.1:{api}'}}\n"
                f"log: {{access: {'true' if access else 'false'}}}\n"
            )
            env = dict(os.environ, PYTHONPATH=str(Path(tree).resolve()))
            log = (folder / "twistd.log").open("wb")
            proc = subprocess.Popen(
                ["taskset", "-c", "0", str(VENV / "twistd"), "-n", "--pidfile=", "eventgw",
                 "--config", str(folder / "gateway.yaml")],
                stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env,
            )
            procs.append(proc)
            wait_port(tls)
            gateways[name] = (proc.pid, tls, clear)
        results: dict[str, list[float]] = {name: [] for name in gateways}
        rates: dict[str, list[float]] = {name: [] for name in gateways}
        for round_ in range(args.rounds):
            for name, (pid, tls, clear) in gateways.items():
                url = (f"http://127.0.0.1:{clear}" if args.clear
                       else f"https://127.0.0.1:{tls}") + args.path
                before = cpu_seconds(pid)
                out = subprocess.run(
                    ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.connections}",
                     f"-d{args.duration}s", url],
                    capture_output=True, text=True, timeout=args.duration + 30,
                ).stdout
                used = cpu_seconds(pid) - before
                match = re.search(r"(\d+) requests in", out)
                count = int(match.group(1)) if match else 0
                bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
                if not count or bad:
                    print(f"{name}: wrk failed or errors:\n{out}", file=sys.stderr)
                    continue
                results[name].append(used / count * 1e6)
                rates[name].append(count / args.duration)
                print(f"round {round_} {name}: {used / count * 1e6:.0f} ms/1k req, "
                      f"{count / args.duration:.0f} req/s", file=sys.stderr)
        for name in gateways:
            values = results[name]
            if values:
                print(f"{name}: median {statistics.median(values):.0f} ms/1k req "
                      f"(min {min(values):.0f}, max {max(values):.0f}, n={len(values)}), "
                      f"{statistics.median(rates[name]):.0f} req/s")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        fcntl.flock(lock, fcntl.LOCK_UN)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
