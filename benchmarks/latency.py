"""``python -m benchmarks.latency``: request latency of ``GET /``, Suresh against the servers people pick.

Two figures per target, alternating targets round by round:

- **new connection**: connect, request, full response, close, as a user
  sees it: one fresh ``curl`` process per sample, its ``%{time_total}``
  (``benchmarks.clients curl-loop``; >= 200 samples per round, curl reports
  microseconds). Process start-up is outside curl's clock.
- **keep-alive**: sequential ``GET /`` on one open connection from one
  small Python client (``benchmarks.clients http-keepalive``; >= 5000
  samples per round after 100 warm-up requests), timed with
  ``time.perf_counter_ns``. The same client for every target, so its own
  cost is a constant that the ratios see through.

Targets: Suresh on our direct stack over a tap (the unix platform), as an
hvt guest under the tender over a tap (``--platform hvt``: the image is
built in the target's temporary directory when it starts, before any
round), and on ``--net socket``, and the peers over veth: a raw asyncio
``Protocol`` on uvloop (the reference of every ratio), aiohttp, uvicorn with
httptools, and nginx. Every target must answer ``GET /`` with the same body
(checked once before the rounds) or it is skipped. Figures in µs.
"""

from __future__ import annotations

import shutil
import sys
from typing import Any

from benchmarks.common import (
    Metric,
    Results,
    alternate,
    argument_parser,
    distribution_table,
    main_guard,
    pair_note,
    progress,
    report,
    resolve_rounds,
    selected,
)
from benchmarks.peers import HTTP_PORT
from benchmarks.targets import http_targets, raw_http, start_http_targets
from benchmarks.topology import Placement, Running, Session, run_client

BENCHMARK = "latency"
NEW_CONNECTION = Metric("new_connection", "GET / on a new connection (curl time_total)", "µs")
KEEP_ALIVE = Metric("keep_alive", "GET / on a kept-alive connection (one client, sequential)", "µs")
KEEP_ALIVE_WARMUP = 100


def measure_new_connection(running: Running, count: int) -> dict[str, Any]:
    """``count`` fresh curls in the client namespace, bounded by a deadline; samples in µs."""
    url = f"http://{running.address}:{HTTP_PORT}/"
    deadline = max(60.0, count * 0.25)
    result = run_client(running.client, "curl-loop", ["--url", url, "--count", count, "--deadline", deadline],
                        timeout=deadline + 30)
    result["samples_us"] = [value * 1e6 for value in result.pop("samples_s")]
    return result


def measure_keep_alive(running: Running, count: int) -> dict[str, Any]:
    """``count`` sequential requests on one connection; samples in µs."""
    result = run_client(running.client, "http-keepalive",
                        ["--host", running.address, "--port", HTTP_PORT, "--count", count,
                         "--warmup", KEEP_ALIVE_WARMUP, "--deadline", 120], timeout=150)
    result["samples_us"] = [value / 1000 for value in result.pop("samples_ns")]
    return result


def run(arguments: Any) -> int:
    rounds = resolve_rounds(arguments)
    curl_count = arguments.connections or (30 if arguments.quick else 200)
    keep_alive_count = arguments.requests or (500 if arguments.quick else 5000)
    results = Results(BENCHMARK, arguments)
    curl_missing = shutil.which("curl") is None
    if curl_missing:
        results.skip(NEW_CONNECTION.title, "curl is not installed (apt-get install -y curl)")
    placement = Placement.choose(arguments.cpus)
    with Session(BENCHMARK, placement) as session:
        started = {running.name: running
                   for running in start_http_targets(session, selected(http_targets(), arguments.only), results)}
        failed: set[str] = set()
        for number, name in alternate(rounds, list(started)):
            if name in failed:
                continue
            running = started[name]
            step = f"round {number + 1}/{rounds} · {name}"
            try:
                if not curl_missing:
                    progress(BENCHMARK, f"{step} · {curl_count} new connections (curl)")
                    fresh = measure_new_connection(running, curl_count)
                    results.add(NEW_CONNECTION, name, fresh["samples_us"], extra={"failures": fresh["failures"]})
                progress(BENCHMARK, f"{step} · {keep_alive_count} keep-alive requests")
                kept = measure_keep_alive(running, keep_alive_count)
                results.add(KEEP_ALIVE, name, kept["samples_us"], extra={"statuses": kept["statuses"]})
            except RuntimeError as error:
                failed.add(name)
                results.skip(name, f"failed in round {number + 1}: {str(error).splitlines()[0][:200]}")
    reference = raw_http().name
    tables = [
        distribution_table(results, KEEP_ALIVE, reference=reference, notes=hvt_notes(results, KEEP_ALIVE)),
    ]
    if not curl_missing:
        tables.insert(0, distribution_table(
            results, NEW_CONNECTION, reference=reference,
            notes=["curl's time_total: TCP handshake, request, whole response; one curl process per sample",
                   *hvt_notes(results, NEW_CONNECTION)]))
    report(results, tables, arguments, placement=placement.describe())
    return 0


HVT = "suresh (hvt)"
UNIX = "suresh (tap)"


def hvt_notes(results: Results, metric: Metric) -> list[str]:
    """The hvt guest against the unix target of the same run (issue 6 asks for the median within 1.5×)."""
    note = pair_note(results, metric, HVT, UNIX, statistics_=("median", "p90", "p99"))
    return [note] if note else []


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(BENCHMARK, __doc__.split("\n")[0], rounds=3)
    parser.add_argument("--connections", type=int, default=None,
                        help="new-connection samples per round (default 200, --quick 30)")
    parser.add_argument("--requests", type=int, default=None,
                        help="keep-alive samples per round (default 5000, --quick 500)")
    arguments = parser.parse_args(argv)
    return main_guard(BENCHMARK, lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())
