"""``python -m benchmarks.throughput``: requests/s under load and TCP bulk transfer rates.

Two parts, each alternating its targets round by round:

- **HTTP load**: ``wrk -t1 -c16 -d5s --latency`` against ``GET /`` on every
  HTTP target of ``benchmarks.latency`` (Suresh on unix over a tap, as an
  hvt guest, and on ``--net socket``; the raw uvloop peer as the reference, aiohttp, uvicorn+httptools, nginx). One
  wrk thread, 16 connections: enough to keep a single-threaded server
  busy without measuring wrk itself. Requests/s and wrk's own latency
  percentiles (p50/p90/p99 in ms), plus socket errors and non-2xx counts.
- **TCP bulk**: MB/s (10^6 bytes/s) sending to the echo service's discard
  port (9) and receiving from its source port (19), one kernel client
  (``benchmarks.clients tcp-bulk``), each transfer bounded by bytes and by
  time (3 s, 16 GiB), 5 rounds; the table gives each direction's median
  transfer and its slowest. ``services.echo`` (tap) against the raw uvloop
  echo peer over veth is our stack against the kernel's, kernel client on
  both. ``services.echo`` is probed with a TCP connect first and skipped
  with the reason while it does not answer TCP; the raw uvloop echo peer
  over veth is the reference.

Ratios: for requests/s and MB/s, below 1 is slower than the reference; for
latencies, above 1 is slower.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from typing import Any

from benchmarks import clients
from benchmarks.common import (
    Metric,
    Results,
    alternate,
    argument_parser,
    main_guard,
    markdown_table,
    pair_note,
    progress,
    report,
    resolve_rounds,
    selected,
)
from benchmarks.peers import ECHO_PORTS, HTTP_PORT
from benchmarks.targets import echo_peer, echo_tap, http_targets, raw_http, start_http_targets
from benchmarks.topology import Placement, Running, Session, probe_tcp, run_client

BENCHMARK = "throughput"
REQUESTS = Metric("requests_per_second", "wrk throughput", "req/s", higher_is_better=True)
WRK_LATENCY = {name: Metric(f"wrk_{name}", f"wrk latency {name}", "ms") for name in ("p50", "p90", "p99")}
SEND = Metric("bulk_send", "send to discard :9", "MB/s", higher_is_better=True)
RECEIVE = Metric("bulk_receive", "receive from source :19", "MB/s", higher_is_better=True)
BULK_ROUNDS = 5


def measure_wrk(running: Running, seconds: int) -> dict[str, Any]:
    """One wrk run in the client namespace, bounded by ``-d`` and a process timeout."""
    url = f"http://{running.address}:{HTTP_PORT}/"
    done = running.client.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "--timeout", "2s", url],
                              check=False, timeout=seconds + 30)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return clients.parse_wrk(done.stdout)


def measure_bulk(running: Running, direction: str, limit_bytes: int, seconds: float) -> dict[str, Any]:
    port = ECHO_PORTS["tcp_discard"] if direction == "send" else ECHO_PORTS["tcp_source"]
    result = run_client(running.client, "tcp-bulk",
                        ["--host", running.address, "--port", port, "--direction", direction,
                         "--bytes", limit_bytes, "--deadline", seconds], timeout=seconds + 30)
    result["megabytes_per_second"] = result["bytes"] / result["seconds"] / 1e6 if result["seconds"] else 0.0
    return result


def run_http(session: Session, results: Results, arguments: Any, rounds: int) -> str | None:
    """The wrk part; its table, or ``None`` when nothing ran."""
    if shutil.which("wrk") is None:
        results.skip("wrk load", "wrk is not installed (apt-get install -y wrk)")
        return None
    seconds = 1 if arguments.quick else arguments.duration
    started = {running.name: running
               for running in start_http_targets(session, selected(http_targets(), arguments.only), results)}
    failed: set[str] = set()
    for number, name in alternate(rounds, list(started)):
        if name in failed:
            continue
        progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · wrk -t1 -c16 -d{seconds}s")
        try:
            parsed = measure_wrk(started[name], seconds)
        except (RuntimeError, ValueError) as error:
            failed.add(name)
            results.skip(name, f"wrk failed in round {number + 1}: {str(error).splitlines()[0][:200]}")
            continue
        results.add(REQUESTS, name, [parsed["requests_per_second"]], extra=parsed)
        for key, metric in WRK_LATENCY.items():
            if key in parsed["latency_ms"]:
                results.add(metric, name, [parsed["latency_ms"][key]])
    for running in started.values():
        running.stop()  # free the CPU before the bulk part
    metrics = [REQUESTS, *WRK_LATENCY.values()]
    hvt = pair_note(results, REQUESTS, "suresh (hvt)", "suresh (tap)")
    return _single_value_table(results, metrics, f"HTTP load: wrk -t1 -c16 -d{seconds}s, GET /", raw_http().name,
                               ["median across rounds of each round's figure; wrk's latency percentiles are "
                                "its own (HdrHistogram), per run", *([f"requests/s: {hvt}"] if hvt else [])])


def run_bulk(session: Session, results: Results, arguments: Any, rounds: int) -> str | None:
    """The TCP bulk part; its table, or ``None`` when nothing ran."""
    # Time-bound in practice (the byte cap is a backstop): a transfer shorter
    # than a second is mostly TCP's ramp-up and scheduling luck; at 3 s and
    # hundreds of MB/s the handshake and slow start are well under 1 % of it.
    limit_bytes = (2 if arguments.quick else 16) * 2**30
    seconds = 1.0 if arguments.quick else arguments.bulk_seconds
    started: dict[str, Running] = {}
    for running in session.start_all(selected([echo_tap(), echo_peer()], arguments.only), results):
        reason = probe_tcp(running.client, running.address, ECHO_PORTS["tcp_discard"])
        if reason is not None:
            running.stop()
            results.skip(running.name, f"does not answer TCP yet: {reason}")
        else:
            started[running.name] = running
    for number, name in alternate(rounds, list(started)):
        for metric, direction in ((SEND, "send"), (RECEIVE, "receive")):
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · TCP {direction}, "
                                f"≤ {limit_bytes >> 30} GiB, ≤ {seconds:g} s")
            try:
                result = measure_bulk(started[name], direction, limit_bytes, seconds)
            except RuntimeError as error:
                results.skip(f"{name} {direction}, round {number + 1}", str(error).splitlines()[0][:200])
                continue
            results.add(metric, name, [result["megabytes_per_second"]], extra=result)
    if not started:
        return None
    return bulk_table(results, echo_peer().name, rounds=rounds, seconds=seconds, limit_bytes=limit_bytes)


def bulk_table(results: Results, reference: str, *, rounds: int, seconds: float, limit_bytes: int) -> str | None:
    """MB/s each direction per target: the median transfer and the slowest one, over rounds.

    One transfer is one sample, so the distribution is over rounds: with a
    handful of rounds a p99 would just be the fastest or slowest round, so
    the table gives the median and the minimum (the worst round: for a rate
    the tail that matters is the low one).
    """
    columns: list[str] = []
    rows: dict[str, list[float | None]] = {}
    spreads: list[str] = []
    moved: list[str] = []
    names = list(dict.fromkeys(row for metric in (SEND, RECEIVE) for row in results.samples.get(metric.key, {})))
    for metric in (SEND, RECEIVE):
        columns += [f"{metric.title} median MB/s", f"{metric.title} min MB/s"]
    for name in names:
        cells: list[float | None] = []
        for metric in (SEND, RECEIVE):
            values = [value for samples in results.samples.get(metric.key, {}).get(name, []) for value in samples]
            cells += [statistics.median(values), min(values)] if values else [None, None]
            if values:
                middle = statistics.median(values)
                spread = (max(values) - min(values)) / middle * 50 if middle else 0.0
                spreads.append(f"{name}, {metric.title}: {len(values)} transfers, within ±{spread:.0f} %")
            sizes = [extra["bytes"] for extra in results.extra.get(metric.key, {}).get(name, [])]
            if sizes:
                moved.append(f"{statistics.median(sizes) / 1e9:.2f} GB ({name}, {metric.title.split()[0]})")
        rows[name] = cells
    if not rows:
        return None
    notes = [f"one kernel client (benchmarks.clients tcp-bulk), one connection per transfer, {rounds} rounds "
             f"alternating targets; each transfer stops after {seconds:g} s (or {limit_bytes >> 30} GiB); "
             "send is timed until the discard server's FIN, so every byte was delivered",
             "median: the median transfer; min: the slowest of the rounds",
             "median bytes per transfer: " + "; ".join(moved),
             *spreads]
    return markdown_table("TCP bulk transfer, one connection, MB/s (10⁶ bytes/s) each direction", columns, rows,
                          reference=reference if reference in rows else None, notes=notes)


def _single_value_table(results: Results, metrics: list[Metric], title: str, reference: str,
                        notes: list[str]) -> str | None:
    summaries = {metric.key: results.summary(metric.key) for metric in metrics}
    names = list(dict.fromkeys(row for summary in summaries.values() for row in summary))
    if not names:
        return None
    rows = {name: [summaries[metric.key][name].median if name in summaries[metric.key] else None
                   for metric in metrics] for name in names}
    columns = [f"{metric.title.removeprefix('wrk ')} {metric.unit}" for metric in metrics]
    spreads = [f"{name}: {summaries[metrics[0].key][name].rounds} rounds, "
               f"{metrics[0].title} within ±{summaries[metrics[0].key][name].spread * 50:.0f} %"
               for name in names if name in summaries[metrics[0].key]]
    return markdown_table(title, columns, rows, reference=reference if reference in rows else None,
                          notes=[*notes, *spreads])


def resolve_bulk_rounds(arguments: Any) -> int:
    """``--bulk-rounds``, else ``--rounds``, else 5 (2 with ``--quick``): one transfer is one sample."""
    if arguments.bulk_rounds is not None:
        if arguments.bulk_rounds < 1:
            raise SystemExit("--bulk-rounds must be at least 1")
        return arguments.bulk_rounds
    if arguments.rounds is not None:
        return resolve_rounds(arguments)
    return 2 if arguments.quick else BULK_ROUNDS


def run(arguments: Any) -> int:
    rounds = resolve_rounds(arguments)
    bulk_rounds = resolve_bulk_rounds(arguments)
    results = Results(BENCHMARK, arguments)
    placement = Placement.choose(arguments.cpus)
    tables = []
    with Session(BENCHMARK, placement) as session:
        if not arguments.bulk_only:
            tables.append(run_http(session, results, arguments, rounds))
        if not arguments.http_only:
            tables.append(run_bulk(session, results, arguments, bulk_rounds))
    report(results, [table for table in tables if table], arguments, placement=placement.describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(BENCHMARK, __doc__.split("\n")[0], rounds=3)
    parser.add_argument("--duration", type=int, default=5, help="wrk seconds per run (default 5, --quick 1)")
    parser.add_argument("--bulk-rounds", type=int, default=None,
                        help="rounds of the TCP bulk part (default --rounds if given, else 5; --quick 2)")
    parser.add_argument("--bulk-seconds", type=float, default=3.0,
                        help="seconds per bulk transfer (default 3, --quick 1)")
    parts = parser.add_mutually_exclusive_group()
    parts.add_argument("--http-only", action="store_true", help="only the wrk part")
    parts.add_argument("--bulk-only", action="store_true", help="only the TCP bulk part")
    arguments = parser.parse_args(argv)
    if not 0 < arguments.bulk_seconds <= 60:
        parser.error("--bulk-seconds must be in (0, 60]")
    return main_guard(BENCHMARK, lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())
