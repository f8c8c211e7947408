# -*- test-case-name: test_rig -*-
"""Tests of the benchmark rig's own logic: parsers, request bodies, commands, report.

Run with ``.venv/bin/python -m pytest bench/test_rig.py`` (or trial on this file).
The rig itself (servers, load) is exercised by running ``bench/run``.
"""

# trial's assertions carry no type hints.
# mypy: disable-error-code="no-untyped-call"
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rig.processes import cpu_seconds, process_tree
from rig.report import (
    Run,
    Summary,
    access_cost_table,
    metrics_cost_table,
    summarize,
    table_rows,
    targets_table,
)
from rig.rows import Endpoints, Row
from rig.setup import BENCH_DIR, fill_template, make_jwt
from rig.workloads import (
    WORKLOADS,
    Bodies,
    LoadError,
    LoadResult,
    build_command,
    grpc_frame,
    parse_h2load,
    parse_wrk,
    publish_request,
    stream_request,
    unary_message,
)

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:50111/api/small
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.87ms    1.65ms   9.33ms   85.69%
    Req/Sec    46.24k    10.31k   59.98k    54.55%
  Latency Distribution
     50%   45.00us
     75%    0.93ms
     90%    3.37ms
     99%    7.07ms
  50581 requests in 1.10s, 8.49MB read
Requests/sec:  45984.52
Transfer/sec:      7.72MB
"""

H2LOAD_OUTPUT = """\
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 1.00s, 17624.00 req/s, 835.08KB/s
requests: 17624 total, 17626 started, 17624 done, 17620 succeeded, 4 failed, 0 errored, 0 timeout
status codes: 17620 2xx, 0 3xx, 0 4xx, 4 5xx
traffic: 835.08KB (855123) total, 51.71KB (52947) headers (space savings 96.29%), \
172.11KB (176240) data
                     min         max         mean         sd        +/- sd
time for request:       22us      5.27ms       106us        95us    98.19%
"""


def _workload(name: str):  # type: ignore[no-untyped-def]
    return next(workload for workload in WORKLOADS if workload.name == name)


class ParserTests(SynchronousTestCase):
    def test_wrk_counts_and_percentiles(self) -> None:
        """wrk's request count, duration and 50th/99th percentiles are read in ms."""
        result = parse_wrk(WRK_OUTPUT)
        self.assertEqual((result.requests, result.errors), (50581, 0))
        self.assertAlmostEqual(result.seconds, 1.10)
        self.assertAlmostEqual(result.p50_ms or 0, 0.045)
        self.assertAlmostEqual(result.p99_ms or 0, 7.07)

    def test_wrk_errors_are_not_successes(self) -> None:
        """Non-2xx responses leave the request count and, with socket errors, count as errors."""
        output = WRK_OUTPUT.replace(
            "Requests/sec:",
            "  Socket errors: connect 0, read 2, write 0, timeout 1\n"
            "  Non-2xx or 3xx responses: 81\nRequests/sec:",
        )
        result = parse_wrk(output)
        self.assertEqual((result.requests, result.errors), (50500, 84))

    def test_h2load_counts_2xx_and_reads_log_percentiles(self) -> None:
        """Only 2xx count as done; failures and 5xx are errors; percentiles come from the log."""
        log = "".join(f"1795869002226170\t200\t{us}\n" for us in range(1, 1001))
        log += "1795869002226170\t503\t999999\n"
        result = parse_h2load(H2LOAD_OUTPUT, log)
        self.assertEqual(result.requests, 17620)
        self.assertEqual(result.errors, 8)
        self.assertEqual(result.data_bytes, 176240)
        self.assertEqual(result.protocol, "h2c")
        self.assertAlmostEqual(result.p50_ms or 0, 0.5005)
        self.assertAlmostEqual(result.p99_ms or 0, 0.99001)

    def test_unexpected_output_is_an_error(self) -> None:
        """Output the parsers do not recognise raises LoadError instead of guessing."""
        self.assertRaises(LoadError, parse_wrk, "unable to connect to 127.0.0.1:1\n")
        self.assertRaises(LoadError, parse_h2load, "", "")


class BodyTests(SynchronousTestCase):
    def test_unary_message_is_100_bytes_framed(self) -> None:
        """The unary request is a 100-byte message behind gRPC's 5-byte prefix."""
        self.assertEqual(len(unary_message()), 100)
        self.assertEqual(grpc_frame(b"abc"), b"\x00\x00\x00\x00\x03abc")

    def test_stream_request(self) -> None:
        """StreamRequest asks for 256 messages of 16 KiB (fields 1 and 2, varints)."""
        self.assertEqual(stream_request(), b"\x08\x80\x02\x10\x80\x80\x01")

    def test_publish_request_matches_the_gateway_contract(self) -> None:
        """The hand-written PublishRequest parses with the gateway's generated code."""
        try:
            from eventgw._proto.eventbroker.v1 import eventbroker_pb2
        except ImportError as error:  # pragma: no cover - the tree always has it
            self.fail(f"the gateway's generated broker code is missing: {error}")
        request = eventbroker_pb2.PublishRequest.FromString(publish_request())
        self.assertEqual(request.event.id, "bench-0001")
        self.assertEqual(request.event.spec_version, "1.0")
        self.assertEqual(request.event.type, "com.example.bench.measured")
        self.assertTrue(request.event.text_data.startswith("{"))


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(directory)], check=True))
        self.bodies = Bodies.write(directory)
        self.log = directory / "h2load.log"

    def test_wrk_command(self) -> None:
        """HTTP/1.1 throughput runs are wrk with latency percentiles for whole seconds."""
        row = Row("nginx", Endpoints(http_tls=8443))
        command = build_command(_workload("h1-small-tls"), row, 2, self.bodies, self.log)
        self.assertEqual(command.tool, "wrk")
        self.assertEqual(command.argv, ["wrk", "-t1", "-c16", "-d2s", "--latency",
                                        "https://127.0.0.1:8443/api/small"])

    def test_jwt_workload_sends_the_token(self) -> None:
        """The JWT workload sends the run's token as a bearer token, on the row's access
        port; the open workload sends none."""
        bodies = Bodies.write(self.log.parent / "with-token", bearer="aaa.bbb.ccc")
        row = Row("eventgw", Endpoints(http_tls=8443, access_tls=9443))
        argv = build_command(_workload("h1-jwt-tls"), row, 2, bodies, self.log).argv
        self.assertEqual(argv[argv.index("-H") + 1], "authorization: Bearer aaa.bbb.ccc")
        self.assertEqual(argv[-1], "https://127.0.0.1:9443/api/jwt/small")
        argv = build_command(_workload("h1-small-tls"), row, 2, bodies, self.log).argv
        self.assertNotIn("-H", argv)
        argv = build_command(_workload("h1-ratelimit-tls"), row, 2, bodies, self.log).argv
        self.assertNotIn("-H", argv)
        self.assertEqual(argv[-1], "https://127.0.0.1:9443/api/rl/small")

    def test_fixed_rate_uses_a_request_count(self) -> None:
        """Fixed-rate runs send 100 req/s on each of 5 connections, for at least 3 s."""
        row = Row("nginx", Endpoints(grpc_tls=8443))
        argv = build_command(_workload("lat-grpc-tls"), row, 2, self.bodies, self.log).argv
        self.assertNotIn("-D", argv)
        self.assertEqual(argv[argv.index("--rps") + 1], "100")
        self.assertEqual(argv[argv.index("-n") + 1], "1500")
        self.assertIn("content-type: application/grpc", argv)
        self.assertIn("te: trailers", argv)

    def test_direct_events_publish_to_the_broker(self) -> None:
        """Without an /events endpoint the direct row calls the broker's Publish over h2c."""
        row = Row("direct", Endpoints(broker_h2c=5000))
        argv = build_command(_workload("events-tls"), row, 2, self.bodies, self.log).argv
        self.assertEqual(argv[-1], "http://127.0.0.1:5000/eventbroker.v1.EventBroker/Publish")
        self.assertNotIn("--h1", argv)
        self.assertEqual(argv[argv.index("-d") + 1], str(self.bodies.publish))


class ReportTests(SynchronousTestCase):
    def _measured(self, requests: int, cpu: float | None, p99: float = 1.0) -> Run:
        return Run(LoadResult(requests, 0, 2.0, requests * 100, 0.5, p99), cpu)

    def test_medians_and_cpu_per_thousand(self) -> None:
        """Each column is the median over runs; CPU is ms per 1,000 requests."""
        summary = summarize(_workload("h1-small-tls"), [
            self._measured(1000, 0.5, p99=3.0), self._measured(2000, 0.4, p99=1.0),
            self._measured(4000, 0.4, p99=2.0),
        ])
        self.assertEqual(summary.throughput, 1000.0)
        self.assertEqual(summary.cpu, 200.0)
        self.assertEqual(summary.p99_ms, 2.0)

    def test_streaming_cpu_is_seconds_per_gb(self) -> None:
        """For streaming, throughput is MB/s of DATA and CPU is seconds per GB."""
        summary = summarize(_workload("grpc-stream-tls"), [self._measured(10_000, 2.0)])
        self.assertEqual(summary.throughput, 0.5)
        self.assertEqual(summary.cpu, 2000.0)

    def test_ratios_to_nginx_and_notes(self) -> None:
        """Rows are compared with the nginx row; notes stand in for unmeasured rows;
        without the peer's row the peer column is empty."""
        workload = _workload("h1-small-tls")
        summaries = {"nginx": summarize(workload, [self._measured(2000, 0.05)]),
                     "eventgw": summarize(workload, [self._measured(1000, 0.1)])}
        lines = table_rows(workload, summaries, {"twisted-rp": "check failed"},
                           ["nginx", "twisted-rp", "eventgw"], repeats=1)
        self.assertEqual(len(lines), 3)
        self.assertIn("| — | 4.00x | 0.50x |", lines[2])
        self.assertIn("| twisted-rp | check failed |", lines[1])

    def test_ratios_to_the_peer(self) -> None:
        """HTTP rows are compared with twisted-rp, gRPC rows with py-grpc-proxy."""
        for name, peer in (("h1-small-tls", "twisted-rp"), ("grpc-unary-tls", "py-grpc-proxy")):
            workload = _workload(name)
            summaries = {peer: summarize(workload, [self._measured(500, 0.2)]),
                         "eventgw": summarize(workload, [self._measured(1000, 0.1)])}
            lines = table_rows(workload, summaries, {}, [peer, "eventgw"], repeats=1)
            self.assertIn("| 1.00x | — | — |", lines[0])
            self.assertIn("| 0.25x | — | — |", lines[1])

    def test_disturbed_runs_are_flagged(self) -> None:
        """A run during which other processes kept over 0.25 CPUs busy counts as disturbed."""
        quiet = Run(LoadResult(1000, 0, 2.0, 0, None, None), 0.1, foreign_cpu_s=0.4)
        busy = Run(LoadResult(1000, 0, 2.0, 0, None, None), 0.1, foreign_cpu_s=0.6)
        self.assertFalse(quiet.disturbed)
        self.assertTrue(busy.disturbed)
        workload = _workload("h1-small-tls")
        [line] = table_rows(workload, {"nginx": summarize(workload, [quiet, busy])}, {},
                            ["nginx"], repeats=2)
        self.assertIn("(1 disturbed)", line)

    def test_partial_cells_say_so(self) -> None:
        """A cell with fewer runs than asked shows its medians, the count and why."""
        workload = _workload("h1-small-tls")
        summaries = {"eventgw": summarize(workload, [self._measured(1000, 0.1)])}
        [line] = table_rows(workload, summaries, {"eventgw": "skipped: time budget"},
                            ["eventgw"], repeats=3)
        self.assertIn("500 req/s (1 of 3 runs; skipped: time budget)", line)


class TargetTests(SynchronousTestCase):
    def test_targets_compare_the_eventgw_row(self) -> None:
        """Targets are same-run ratios: CPU against the peer, p99 against the peer and
        nginx, an event's CPU against a relayed unary call's; workers scale."""
        def cell(workload: str, requests: int, cpu: float, p99: float = 1.0) -> Summary:
            return summarize(_workload(workload),
                             [Run(LoadResult(requests, 0, 1.0, 0, 0.5, p99), cpu)])

        table = targets_table({
            ("h1-small-tls", "eventgw"): cell("h1-small-tls", 1000, 0.2),
            ("h1-small-tls", "twisted-rp"): cell("h1-small-tls", 1000, 0.5),
            ("h1-small-tls", "eventgw-w2"): cell("h1-small-tls", 1800, 0.4),
            ("lat-h1-tls", "eventgw"): cell("lat-h1-tls", 500, 0.2, p99=1.5),
            ("lat-h1-tls", "twisted-rp"): cell("lat-h1-tls", 500, 0.2, p99=3.0),
            ("lat-h1-tls", "nginx"): cell("lat-h1-tls", 500, 0.2, p99=0.5),
            ("events-tls", "eventgw"): cell("events-tls", 1000, 0.3),
            ("grpc-unary-tls", "eventgw"): cell("grpc-unary-tls", 1000, 0.3),
        })
        self.assertIn("CPU ≤ 0.30x twisted-rp | 200 | 500 | 0.40x | no |", table)
        self.assertIn("HTTP/1.1: ≤ 0.25x twisted-rp | 1.50 | 3.00 | 0.50x | no |", table)
        self.assertIn("| p99 at 500 req/s, HTTP/1.1: ≤ 2.5x nginx | 1.50 | 0.50 | 3.00x | no |",
                      table)
        self.assertIn("a relayed gRPC unary call (TLS) | 300 | 300 | 1.00x | yes |", table)
        self.assertIn("| 1.80x | yes |", table)
        self.assertNotIn("h2c", table)  # not measured: left out
        self.assertEqual(targets_table({}), "")

    def test_metrics_cost_is_on_over_off(self) -> None:
        """The metrics' cost: eventgw's CPU per request over eventgw-metrics-off's, met
        at 1.10x or less; workloads without both rows are left out."""
        def cell(workload: str, cpu: float) -> Summary:
            return summarize(_workload(workload),
                             [Run(LoadResult(1000, 0, 1.0, 0, 0.5, 1.0), cpu)])

        table = metrics_cost_table({
            ("h1-small-tls", "eventgw"): cell("h1-small-tls", 0.105),
            ("h1-small-tls", "eventgw-metrics-off"): cell("h1-small-tls", 0.100),
            ("grpc-unary-h2c", "eventgw"): cell("grpc-unary-h2c", 0.240),
            ("grpc-unary-h2c", "eventgw-metrics-off"): cell("grpc-unary-h2c", 0.200),
            ("h1-16k-tls", "eventgw"): cell("h1-16k-tls", 0.3),
        })
        self.assertIn("| h1-small-tls | 105 ms/1k req | 100 ms/1k req | 1.05x | yes |", table)
        self.assertIn("| grpc-unary-h2c | 240 ms/1k req | 200 ms/1k req | 1.20x | no |", table)
        self.assertNotIn("h1-16k-tls", table)
        self.assertEqual(metrics_cost_table({}), "")

    def test_access_cost_is_over_the_open_route(self) -> None:
        """The access checks' cost: eventgw's CPU per request on the JWT and rate-limited
        routes over the open route's; the cached JWT check is met at 1.15x or less."""
        def cell(workload: str, cpu: float) -> Summary:
            return summarize(_workload(workload),
                             [Run(LoadResult(1000, 0, 1.0, 0, 0.5, 1.0), cpu)])

        table = access_cost_table({
            ("h1-small-tls", "eventgw"): cell("h1-small-tls", 0.100),
            ("h1-jwt-tls", "eventgw"): cell("h1-jwt-tls", 0.120),
            ("h1-ratelimit-tls", "eventgw"): cell("h1-ratelimit-tls", 0.103),
        })
        self.assertIn("| h1-jwt-tls | JWT (cached) | 120 ms/1k req | 100 ms/1k req | 1.20x "
                      "| ≤ 1.15x: no |", table)
        self.assertIn("| h1-ratelimit-tls | rate limit | 103 ms/1k req | 100 ms/1k req "
                      "| 1.03x | — |", table)
        self.assertEqual(access_cost_table({("h1-jwt-tls", "eventgw"): cell("h1-jwt-tls", 1)}),
                         "")


class TemplateTests(SynchronousTestCase):
    def test_every_placeholder_must_be_filled(self) -> None:
        """A placeholder without a value is an error; @{...} in a comment is left alone."""
        directory = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(directory)], check=True))
        template = directory / "t.conf"
        template.write_text("# fills @{...}\nlisten @{port};\nroot @{www};\n")
        filled = fill_template(template, directory / "out.conf", port=1, www="/w")
        self.assertEqual(filled.read_text(), "# fills @{...}\nlisten 1;\nroot /w;\n")
        self.assertRaises(ValueError, fill_template, template, directory / "x", port=1)

    def test_gateway_template_is_valid_configuration(self) -> None:
        """The eventgw rows' template, filled in, is a configuration the gateway accepts."""
        from eventgw.config import load_config

        directory = Path(tempfile.mkdtemp())
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(directory)], check=True))
        filled = fill_template(
            BENCH_DIR / "conf" / "gateway.yaml", directory / "gateway.yaml",
            tls_port=9001, clear_port=9080, cert="c.pem", key="k.pem",
            api_port=8080, grpc_port=50051, broker_port=50052,
            jwks=make_jwt(directory / "jwt").jwks,
        )
        config = load_config(filled.read_text())
        self.assertEqual(config.listen.cleartext, 9080)
        self.assertTrue(config.access_log)
        self.assertEqual([p.name for p in config.auth.jwt], ["bench"])
        self.assertEqual([r.prefix for r in config.rate_limits], ["/api/rl/"])


class CpuTests(SynchronousTestCase):
    def test_tree_includes_children(self) -> None:
        """A child process belongs to its parent's tree, and CPU time is read from /proc."""
        child = subprocess.Popen(["sleep", "30"])
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        self.assertIn(child.pid, process_tree(os.getpid()))
        self.assertGreater(cpu_seconds([os.getpid()]), 0.0)
