"""The backends and the rows (proxies under test), and how each is started.

Backends (pinned with the load generator to the side CPUs): nginx answering
``/api/small`` and ``/api/16k``; the gRPC C++ backend (echo, stream, broker).
Rows (pinned to the proxy CPU): ``direct`` (no proxy), ``nginx``, ``twisted-rp``,
``py-grpc-proxy``, ``eventgw``, ``eventgw-metrics-off`` (the same without the request
metrics: the cost of metrics, on the HTTP/1.1 and gRPC workloads) and ``eventgw-w2``.
A row names the ports it offers for
each kind of traffic; a workload runs on a row only if the row offers its kind.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from rig.processes import Server, free_port, pinned
from rig.setup import (
    BENCH_DIR,
    REPO_DIR,
    BenchJwt,
    Certificate,
    fill_template,
    make_static_files,
)

ROW_NAMES: Final = (
    "direct", "nginx", "twisted-rp", "py-grpc-proxy", "eventgw", "eventgw-metrics-off",
    "eventgw-w2",
)
# The configuration the "eventgw-metrics-off" row adds to the template: the same
# gateway without the request metrics, for the cost of metrics beside "eventgw".
METRICS_OFF: Final = "\nmetrics:\n  enabled: false\n"
CONF_DIR: Final = BENCH_DIR / "conf"
PEERS_DIR: Final = BENCH_DIR / "peers"


@dataclass(frozen=True)
class Rig:
    """Where things go and which CPUs they run on."""

    out: Path
    cert: Certificate
    python: Path
    grpc_backend: Path
    proxy_cpus: str
    side_cpus: str
    workers_cpus: str
    eventgw_config: Path
    jwt: BenchJwt


@dataclass(frozen=True)
class Endpoints:
    """The 127.0.0.1 ports a row offers, by kind of traffic (``None``: not offered)."""

    http_tls: int | None = None  # TLS with ALPN h2 + http/1.1, serving /api
    http_clear: int | None = None  # cleartext HTTP/1.1, serving /api
    grpc_tls: int | None = None  # TLS h2, gRPC
    grpc_h2c: int | None = None  # h2c prior knowledge, gRPC
    events_tls: int | None = None  # TLS, POST /events
    broker_h2c: int | None = None  # the broker itself (the direct row's events ceiling)
    access_tls: int | None = None  # TLS, /api/jwt/ and /api/rl/ (eventgw's access checks)


@dataclass
class Row:
    name: str
    endpoints: Endpoints
    servers: list[Server] = field(default_factory=list)
    unavailable: str | None = None

    @property
    def measured(self) -> bool:
        """Whether there is a proxy whose CPU time the rig reads."""
        return bool(self.servers)

    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]


@dataclass
class Backends:
    http_port: int
    http_tls_port: int
    grpc_port: int
    grpc_tls_port: int
    servers: list[Server]


def make_backends(rig: Rig) -> Backends:
    http_port, http_tls_port, grpc_port, grpc_tls_port = (free_port() for _ in range(4))
    prefix = rig.out / "nginx-backend"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    make_static_files(prefix / "www")
    conf = fill_template(
        CONF_DIR / "nginx-backend.conf", prefix / "nginx.conf",
        prefix=prefix, http_port=http_port, tls_port=http_tls_port,
        cert=rig.cert.cert, key=rig.cert.key, www=prefix / "www",
    )
    nginx = Server(
        "nginx-backend",
        pinned(rig.side_cpus, ["nginx", "-p", str(prefix), "-c", str(conf)]),
        (http_port, http_tls_port),
        prefix / "stdout.log",
    )
    grpc = Server(
        "grpc-backend",
        pinned(rig.side_cpus, [
            str(rig.grpc_backend), "--port", str(grpc_port), "--tls-port", str(grpc_tls_port),
            "--cert", str(rig.cert.cert), "--key", str(rig.cert.key),
        ]),
        (grpc_port, grpc_tls_port),
        rig.out / "grpc-backend.log",
    )
    return Backends(http_port, http_tls_port, grpc_port, grpc_tls_port, [nginx, grpc])


def make_rows(rig: Rig, backends: Backends, names: Sequence[str]) -> list[Row]:
    makers: dict[str, Callable[[Rig, Backends], Row]] = {
        "direct": _direct,
        "nginx": _nginx,
        "twisted-rp": _twisted_rp,
        "py-grpc-proxy": _py_grpc_proxy,
        "eventgw": lambda rig, backends: _eventgw(rig, backends, workers=1),
        "eventgw-metrics-off": lambda rig, backends: _eventgw(
            rig, backends, workers=1, metrics=False),
        "eventgw-w2": lambda rig, backends: _eventgw(rig, backends, workers=2),
    }
    return [makers[name](rig, backends) for name in names]


def _direct(rig: Rig, b: Backends) -> Row:
    return Row("direct", Endpoints(
        http_tls=b.http_tls_port, http_clear=b.http_port,
        grpc_tls=b.grpc_tls_port, grpc_h2c=b.grpc_port, broker_h2c=b.grpc_port,
    ))


def _nginx(rig: Rig, b: Backends) -> Row:
    tls, clear, h2c = free_port(), free_port(), free_port()
    prefix = rig.out / "nginx-proxy"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = fill_template(
        CONF_DIR / "nginx-proxy.conf", prefix / "nginx.conf",
        prefix=prefix, tls_port=tls, clear_port=clear, h2c_port=h2c,
        api_port=b.http_port, grpc_port=b.grpc_port, cert=rig.cert.cert, key=rig.cert.key,
    )
    server = Server(
        "nginx", pinned(rig.proxy_cpus, ["nginx", "-p", str(prefix), "-c", str(conf)]),
        (tls, clear, h2c), prefix / "stdout.log",
    )
    return Row("nginx", Endpoints(http_tls=tls, http_clear=clear, grpc_tls=tls, grpc_h2c=h2c),
               [server])


def _twisted_rp(rig: Rig, b: Backends) -> Row:
    tls, clear = free_port(), free_port()
    server = Server(
        "twisted-rp",
        pinned(rig.proxy_cpus, [
            str(rig.python), str(PEERS_DIR / "twisted_rp.py"),
            "--tls-port", str(tls), "--clear-port", str(clear),
            "--upstream-port", str(b.http_port),
            "--cert", str(rig.cert.cert), "--key", str(rig.cert.key),
        ]),
        (tls, clear), rig.out / "twisted-rp.log",
    )
    return Row("twisted-rp", Endpoints(http_tls=tls, http_clear=clear), [server])


def _py_grpc_proxy(rig: Rig, b: Backends) -> Row:
    tls, h2c = free_port(), free_port()
    server = Server(
        "py-grpc-proxy",
        pinned(rig.proxy_cpus, [
            str(rig.python), str(PEERS_DIR / "py_grpc_proxy.py"),
            "--tls-port", str(tls), "--h2c-port", str(h2c),
            "--upstream", f"127.0.0.1:{b.grpc_port}",
            "--cert", str(rig.cert.cert), "--key", str(rig.cert.key),
        ]),
        (tls, h2c), rig.out / "py-grpc-proxy.log",
    )
    return Row("py-grpc-proxy", Endpoints(grpc_tls=tls, grpc_h2c=h2c), [server])


def eventgw_unavailable(python: Path) -> str | None:
    """Why ``twistd eventgw`` cannot run from this tree, or ``None`` if it can."""
    if not (REPO_DIR / "eventgw" / "service.py").exists():
        return "eventgw/service.py does not exist yet"
    try:
        probe = subprocess.run(
            [str(python.parent / "twistd"), "eventgw", "--help"], cwd=REPO_DIR,
            capture_output=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"twistd eventgw --help failed: {error}"
    if probe.returncode != 0:
        last = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()
        return "twistd eventgw --help failed: " + (last[-1] if last else f"exit {probe.returncode}")
    return None


def _eventgw(rig: Rig, b: Backends, workers: int, metrics: bool = True) -> Row:
    name = "eventgw" if workers == 1 else f"eventgw-w{workers}"
    if not metrics:
        name += "-metrics-off"
    tls, clear = free_port(), free_port()
    run_dir = rig.out / name
    config = fill_template(
        rig.eventgw_config, run_dir / "gateway.yaml",
        tls_port=tls, clear_port=clear, cert=rig.cert.cert, key=rig.cert.key,
        api_port=b.http_port, grpc_port=b.grpc_port, broker_port=b.grpc_port,
        jwks=rig.jwt.jwks,
    )
    if not metrics:
        with config.open("a") as f:
            f.write(METRICS_OFF)
    argv = [
        str(rig.python.parent / "twistd"), "-n", "--pidfile=",
        "eventgw", "--port", str(tls), "--config", str(config),
    ]
    if workers > 1:
        argv += ["--workers", str(workers)]
    # Several workers get a second CPU when there is one that is not the side CPUs'.
    cpus = rig.proxy_cpus if workers == 1 else rig.workers_cpus
    server = Server(name, pinned(cpus, argv), (tls, clear), run_dir / "twistd.log", cwd=run_dir)
    if not metrics:  # HTTP/1.1 and gRPC: where the metrics' cost is compared
        return Row(name, Endpoints(
            http_tls=tls, http_clear=clear, grpc_tls=tls, grpc_h2c=clear,
        ), [server])
    return Row(name, Endpoints(
        http_tls=tls, http_clear=clear, grpc_tls=tls, grpc_h2c=clear, events_tls=tls,
        # The access checks are measured on one process, beside its open route.
        access_tls=tls if workers == 1 else None,
    ), [server])
