"""CPU per relayed gRPC call of a real gateway process, against real grpcio peers.

A grpcio server (raw bytes, no protobuf) stands in for the Master API in a child
process; ``twistd -n eventgw`` relays to it from another; this process is the grpcio
client.  Everything is on 127.0.0.1 with free ports.  The figure is the gateway
process's user + system CPU time (``/proc/<pid>/stat``) over the measured calls,
divided by the calls (unary) or by the gigabytes relayed (server streaming), so it
holds up on a busy machine better than a throughput figure; the rounds show the
noise.  ``--tls`` goes through the TLS port (a certificate made with ``openssl``)
instead of h2c.  With ``--py-spy FILE`` the gateway is sampled while the calls run.

Usage::

    .venv/bin/python profiling/grpc/live_cpu.py                      # unary, h2c
    .venv/bin/python profiling/grpc/live_cpu.py --stream --tls        # streaming, TLS
    .venv/bin/python profiling/grpc/live_cpu.py --py-spy /tmp/u.txt   # raw py-spy samples
    .venv/bin/python profiling/grpc/live_cpu.py --tree ../other       # another checkout
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent.parent
UNARY = "/bench.echo.Echo/Unary"
STREAM = "/bench.echo.Echo/Stream"
MESSAGE = b"x" * 100
CHUNK = b"y" * (16 * 1024 - 5)
CHUNKS = 256


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(port: int) -> None:
    """The Master API: a unary echo and a server-streaming source of CHUNKS x 16 KiB."""

    def unary(request: bytes, context: object) -> bytes:
        return request

    def stream(request: bytes, context: object) -> object:
        for _ in range(CHUNKS):
            yield CHUNK

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }
    server = grpc.server(futures.ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.echo.Echo",
                                                                          handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination(timeout=float(os.environ.get("LIVE_CPU_SERVE_FOR", "600")))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--calls", type=int, default=4000, help="unary calls per round")
    parser.add_argument("--streams", type=int, default=40, help="streaming calls per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--py-spy", metavar="FILE", help="py-spy record --format raw to FILE")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the checkout whose gateway runs (to compare two branches)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="live-cpu-"))
    grpc_port, tls_port, clear_port = free_port(), free_port(), free_port()
    children: list[subprocess.Popen[bytes]] = []
    try:
        children.append(subprocess.Popen([sys.executable, __file__, "--serve", str(grpc_port)]))
        tls_lines = ""
        cert = work / "cert.pem"
        if args.tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                            "-keyout", str(work / "key.pem"), "-out", str(cert), "-days", "1",
                            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                           check=True, capture_output=True)
            tls_lines = f"tls:\n  cert: {cert}\n  key: {work / 'key.pem'}\n"
        config = work / "gateway.yaml"
        config.write_text(
            f"listen:\n  tls: {tls_port}\n  cleartext: {clear_port}\n  interface: 127.0.0.1\n"
            f"{tls_lines}master_api:\n  grpc: 127.0.0.1:{grpc_port}\n"
            "grpc:\n  allow: [\"/bench.echo.\"]\nlog:\n  access: true\n"
        )
        env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()))
        gateway = subprocess.Popen(
            [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "-l",
             str(work / "twistd.log"), "eventgw", "--port", str(tls_port), "--config",
             str(config)], cwd=work, env=env)
        children.append(gateway)
        if args.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
            channel = grpc.secure_channel(f"127.0.0.1:{tls_port}", credentials,
                                          options=[("grpc.ssl_target_name_override",
                                                    "localhost")])
        else:
            channel = grpc.insecure_channel(f"127.0.0.1:{clear_port}")
        unary = channel.unary_unary(UNARY)
        stream = channel.unary_stream(STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                unary(MESSAGE, timeout=5)
                break
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        pool = futures.ThreadPoolExecutor(args.concurrency)

        def one_unary(_: int) -> int:
            assert unary(MESSAGE, timeout=30) == MESSAGE
            return 1

        def one_stream(_: int) -> int:
            return sum(len(m) + 5 for m in stream(b"", timeout=60))

        work_fn, count = (one_stream, args.streams) if args.stream else (one_unary, args.calls)
        list(pool.map(work_fn, range(max(count // 10, args.concurrency))))  # warm up
        spy = None
        if args.py_spy:
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            spy = subprocess.Popen([py_spy, "record", "--format", "raw", "-r", "200",
                                    "-o", args.py_spy, "-p", str(gateway.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        figures = []
        for _ in range(args.rounds):
            before = cpu_seconds(gateway.pid)
            total = sum(pool.map(work_fn, range(count)))
            used = cpu_seconds(gateway.pid) - before
            figures.append(used / (total / 1e9) if args.stream else used / total * 1e6)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=60)
        pool.shutdown()
        channel.close()
        unit = "CPU s per GB" if args.stream else "us CPU per call"
        kind = "streaming" if args.stream else "unary"
        rounds = " ".join(f"{f:.2f}" if args.stream else f"{f:.0f}" for f in figures)
        print(f"{kind} {'tls' if args.tls else 'h2c'}: min {min(figures):.2f} {unit} "
              f"(gateway process; rounds: {rounds})")
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=30)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main()
