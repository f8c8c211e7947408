"""Start the whole demo: the demo Master API (HTTP and gRPC), the demo Event Broker, and
eventgw in front of them with a generated development certificate.

``python -m demo.launch`` (what ``./demo/run`` calls).  Everything binds 127.0.0.1;
Ctrl-C stops everything.

The ports are fixed (the defaults are the ones the README's ``curl`` lines use; each has
a flag).  Before anything starts, every one of them must be free: a taken port stops the
demo with a line naming it and its flag, and exit status 1.  Picking free ports instead
would leave every documented command pointing at whatever owns the taken one (``/api``
proxied to some other server on 8080); and a readiness check that only connects would
mistake that other server for the demo's.  Once started, if the gateway or a demo
service exits, the demo stops the rest and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from eventgw.errors import ConfigError
from eventgw.workers import check_port_free

ROOT = Path(__file__).resolve().parent.parent
# Where the demo and the gateway it starts listen.
INTERFACE = "127.0.0.1"

CONFIG = """\
# Written by demo/launch.py: the gateway in front of the bundled demo services.
listen:
  tls: {tls}
  cleartext: {cleartext}
  interface: {interface}
tls:
  dev_cert_dir: {root}/run/dev-cert   # no cert/key: a development certificate is generated
master_api:
  http: http://127.0.0.1:{http}
  grpc: 127.0.0.1:{grpc}
event_broker:
  grpc: 127.0.0.1:{broker}
grpc:
  allow: ["/"]
  deny: ["/eventbroker."]
admin:
  listen: {interface}:{admin}   # /healthz, /readyz, /metrics, grpc.health.v1
"""

EXAMPLES = """
eventgw demo is up: TLS on https://localhost:{tls}, cleartext on http://localhost:{cleartext}
admin listener on http://{interface}:{admin} (/healthz, /readyz, /metrics)

Try (in another terminal, from {root}):

  curl -k --http1.1 https://localhost:{tls}/api/hello
  curl -k --http2   https://localhost:{tls}/api/items
  curl -k --http2   https://localhost:{tls}/api/items -H 'content-type: application/json' -d '{{"name": "new"}}'
  curl -k -i        https://localhost:{tls}/nowhere

  # events (binary mode, structured mode, batch)
  curl -k -i https://localhost:{tls}/events -H 'ce-specversion: 1.0' -H 'ce-id: e-1' \\
       -H 'ce-source: /demo' -H 'ce-type: demo.created' -H 'content-type: application/json' -d '{{"x": 1}}'
  curl -k -i https://localhost:{tls}/events -H 'content-type: application/cloudevents+json' \\
       -d '{{"specversion": "1.0", "id": "e-2", "source": "/demo", "type": "demo.created", "data": {{"x": 2}}}}'
  curl -k -i https://localhost:{tls}/events -H 'content-type: application/cloudevents-batch+json' \\
       -d '[{{"specversion": "1.0", "id": "e-3", "source": "/demo", "type": "t"}}, {{"specversion": "1.0", "id": "e-4", "source": "/demo", "type": "t"}}]'

  # gRPC through the gateway, over TLS and over h2c
  .venv/bin/python -m demo.masterapi.grpc_client --target localhost:{tls} --ca-file run/dev-cert/gateway-dev.pem
  .venv/bin/python -m demo.masterapi.grpc_client --target 127.0.0.1:{cleartext}

  # the admin listener: readiness and the metrics
  curl -i http://{interface}:{admin}/readyz
  curl -s http://{interface}:{admin}/metrics | grep eventgw_requests_total

  # a browser: gRPC-Web calls and a WebSocket echo from a page, on the same port
  # (accept the development certificate first)
  open https://localhost:{tls}/api/browser/

Ctrl-C stops the gateway and the demo services.
"""


def check_ports(ports: list[tuple[str, str, int]]) -> None:
    """Every ``(name, flag, port)`` is free on :data:`INTERFACE` and given once; else
    SystemExit with one line naming the port and its flag."""
    seen: dict[int, str] = {}
    for name, flag, port in ports:
        if port in seen:
            raise SystemExit(
                f"demo: port {port} is given to both {seen[port]} and {flag}; "
                "give each its own"
            )
        seen[port] = flag
        try:
            check_port_free(INTERFACE, port, flag)
        except ConfigError as e:
            raise SystemExit(
                f"demo: port {port} for the {name} is taken ({e.message}); "
                f"stop what listens there, or choose another port with {flag} N"
            ) from None


def wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: {name} exited with status {process.returncode}")
        try:
            with socket.create_connection((INTERFACE, port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        # Listening: ours, unless it died after all (the port was taken meanwhile).
        time.sleep(0.2)
        if process.poll() is not None:
            raise SystemExit(f"demo: {name} exited with status {process.returncode}")
        return
    raise SystemExit(f"demo: {name} did not start listening on port {port}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's ports: the README's (and gateway.yaml's upstreams) by default."""
    parser = argparse.ArgumentParser(description="Run eventgw with the bundled demo services.")
    parser.add_argument("--port", type=int, default=9001, help="the gateway's TLS port")
    parser.add_argument("--cleartext-port", type=int, default=9080)
    parser.add_argument("--http-port", type=int, default=8080, help="demo Master API HTTP")
    parser.add_argument("--grpc-port", type=int, default=50051, help="demo Master API gRPC")
    parser.add_argument("--broker-port", type=int, default=50052, help="demo Event Broker")
    parser.add_argument("--admin-port", type=int, default=9901,
                        help="the gateway's admin listener (health, metrics)")
    return parser.parse_args(argv)


def demo_config(args: argparse.Namespace) -> str:
    """The gateway's configuration for the demo's ports."""
    return CONFIG.format(
        tls=args.port, cleartext=args.cleartext_port, interface=INTERFACE, root=ROOT,
        http=args.http_port, grpc=args.grpc_port, broker=args.broker_port,
        admin=args.admin_port,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_ports([
        ("gateway (TLS)", "--port", args.port),
        ("gateway (cleartext)", "--cleartext-port", args.cleartext_port),
        ("demo Master API (HTTP)", "--http-port", args.http_port),
        ("demo Master API (gRPC)", "--grpc-port", args.grpc_port),
        ("demo Event Broker", "--broker-port", args.broker_port),
        ("gateway (admin)", "--admin-port", args.admin_port),
    ])

    run_dir = ROOT / "run"
    run_dir.mkdir(exist_ok=True)
    config_path = run_dir / "demo-gateway.yaml"
    config_path.write_text(demo_config(args))
    python = sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children: list[subprocess.Popen[bytes]] = []
    names: dict[int, str] = {}

    def start(name: str, command: list[str], port: int) -> None:
        print(f"demo: starting {name} on {INTERFACE}:{port}", flush=True)
        process = subprocess.Popen(command, cwd=ROOT, env=env)
        children.append(process)
        names[process.pid] = name
        wait_for_port(port, process, name)

    def stop(*_: object) -> None:
        for process in reversed(children):
            if process.poll() is None:
                process.terminate()
        for process in children:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        start("demo Master API (HTTP)",
              [python, "-m", "demo.masterapi.http_server", "--port", str(args.http_port)],
              args.http_port)
        start("demo Master API (gRPC)",
              [python, "-m", "demo.masterapi.grpc_server", "--port", str(args.grpc_port)],
              args.grpc_port)
        start("demo Event Broker (gRPC)",
              [python, "-m", "demo.eventbroker", "--port", str(args.broker_port)],
              args.broker_port)
        twistd = str(Path(python).with_name("twistd"))
        start("eventgw",
              [twistd, "-n", "--pidfile=", "eventgw", "--port", str(args.port),
               "--config", str(config_path)],
              args.port)
        print(EXAMPLES.format(tls=args.port, cleartext=args.cleartext_port, root=ROOT,
                              interface=INTERFACE, admin=args.admin_port), flush=True)
        ended = wait_for_any(children)
        raise SystemExit(
            f"demo: {names[ended.pid]} exited with status {ended.returncode}; stopping the demo"
        )
    except KeyboardInterrupt:
        pass
    finally:
        stop()


def wait_for_any(processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """The first of ``processes`` to exit."""
    while True:
        for process in processes:
            if process.poll() is not None:
                return process
        time.sleep(0.2)


if __name__ == "__main__":
    main()
