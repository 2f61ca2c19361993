"""``python -m benchmarks.footprint``: boot time and memory of a service, against a raw peer.

For ``services.echo`` on its tap, and for the raw uvloop echo peer on the
kernel's stack over veth, each round starts a fresh process and measures:

- **boot to first answer**: from just before the process is created to the
  first reply seen by a poller that was already running inside the client
  namespace, probing every millisecond (``benchmarks.clients boot-poll``;
  both sides read ``CLOCK_MONOTONIC``, which every process shares). For
  our service the first ping *and* the first UDP echo count; for the peer
  only UDP, since the kernel answers its pings before it even starts. This
  includes the interpreter's start-up and imports: it is what a user
  waits for, and what a unikernel's boot time is compared with.
- **ready line**: when the service printed that it is ready (for
  reference; the poller's figure is the one that counts).
- **idle RSS**: ``VmRSS`` of the service's own PID 1 s after its first
  answer, and ``RssAnon``, the part that is its private heap rather than
  shared library pages. ``ip netns exec`` execs in place, so the ``Popen``
  PID is the interpreter itself; ``topology.check_is_python`` verifies
  that before any figure is read.
- **peak RSS**: ``VmHWM`` after a bounded load: the ping run (200 pings at
  10 ms) plus the UDP run (5000 sequential exchanges).

Memory is in MiB (2^20 bytes), times in milliseconds.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from typing import Any

from benchmarks.common import (
    Metric,
    Target,
    Results,
    alternate,
    argument_parser,
    main_guard,
    markdown_table,
    progress,
    report,
    resolve_rounds,
    selected,
)
from benchmarks.ping import measure_ping, measure_udp
from benchmarks.targets import echo_peer, echo_tap
from benchmarks.topology import Placement, Running, Session, Topology, check_is_python, memory_kib

BENCHMARK = "footprint"
BOOT_ICMP = Metric("boot_to_ping", "boot to first ping reply", "ms")
BOOT_UDP = Metric("boot_to_udp", "boot to first UDP echo", "ms")
READY_LINE = Metric("ready_line", "boot to ready line", "ms")
IDLE_RSS = Metric("idle_rss", "idle RSS (VmRSS)", "MiB")
IDLE_ANON = Metric("idle_rss_anon", "idle private RSS (RssAnon)", "MiB")
PEAK_RSS = Metric("peak_rss", "peak RSS after load (VmHWM)", "MiB")
COLUMNS = [BOOT_ICMP, BOOT_UDP, READY_LINE, IDLE_RSS, IDLE_ANON, PEAK_RSS]
SHORT_LABELS = {"boot_to_ping": "boot→ping", "boot_to_udp": "boot→UDP echo", "ready_line": "ready line",
                "idle_rss": "idle RSS", "idle_rss_anon": "idle anon RSS", "peak_rss": "peak RSS"}
POLL_TIMEOUT = 20.0
IDLE_SECONDS = 1.0


class BootPoller:
    """The boot poller started in the client namespace before the server exists."""

    def __init__(self, icmp: bool) -> None:
        self.icmp = icmp
        self.process: Any = None

    def start(self, topology: Topology) -> None:
        arguments = ["-m", "benchmarks.clients", "boot-poll", "--host", topology.server_address,
                     "--udp-port", "7", "--timeout", str(POLL_TIMEOUT)]
        if self.icmp:
            arguments.append("--icmp")
        self.process = topology.client.start_service(arguments, ready="polling", timeout=15)

    def result(self) -> dict[str, Any]:
        """Wait (bounded) for the poller's JSON line: monotonic ns of the first answers."""
        self.process.wait(timeout=POLL_TIMEOUT + 5)
        assert self.process.drain_thread is not None
        self.process.drain_thread.join(timeout=5)
        for line in reversed(self.process.lines):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"boot poller printed no result: {self.process.output()[-500:]}")


def measure_round(session: Session, target: Target, ping_count: int, udp_count: int) -> dict[str, Any]:
    """Start the target fresh, measure boot, idle and peak memory, stop it."""
    poller = BootPoller(icmp=target.topology == "tap")  # over veth the kernel, not the peer, answers ping
    running: Running = session.start(target, before_launch=poller.start)
    try:
        ready_ns = time.monotonic_ns()  # start_service returned: the ready line was read
        started_ns = running.launched_ns
        answered = poller.result()
        pid = running.process.pid
        check_is_python(pid)
        figures: dict[str, Any] = {"pid": pid, "ready_line": (ready_ns - started_ns) / 1e6}
        for key, field in (("boot_to_ping", "icmp_ns"), ("boot_to_udp", "udp_ns")):
            figures[key] = None if answered.get(field) is None else (answered[field] - started_ns) / 1e6
        if figures["boot_to_udp"] is None:
            raise RuntimeError(f"{running.name} never answered UDP within {POLL_TIMEOUT} s")
        time.sleep(IDLE_SECONDS)
        idle = memory_kib(pid)
        figures["idle_rss"] = idle["VmRSS"] / 1024
        figures["idle_rss_anon"] = idle.get("RssAnon", 0) / 1024
        figures["idle_memory_kib"] = idle
        measure_ping(running, ping_count)
        measure_udp(running, udp_count)
        loaded = memory_kib(pid)
        figures["peak_rss"] = loaded["VmHWM"] / 1024
        figures["loaded_memory_kib"] = loaded
        return figures
    finally:
        running.stop()


def run(arguments: Any) -> int:
    rounds = resolve_rounds(arguments)
    ping_count = 50 if arguments.quick else 200
    udp_count = 1000 if arguments.quick else 5000
    results = Results(BENCHMARK, arguments)
    targets = [target for target in selected([echo_tap(), echo_peer()], arguments.only)
               if _available(target, results)]
    placement = Placement.choose(arguments.cpus)
    with Session(BENCHMARK, placement) as session:
        by_name = {target.name: target for target in targets}
        failed: set[str] = set()
        for number, name in alternate(rounds, list(by_name)):
            if name in failed:
                continue
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · boot, idle 1 s, "
                                f"load ({ping_count} pings + {udp_count} UDP)")
            try:
                figures = measure_round(session, by_name[name], ping_count, udp_count)
            except (RuntimeError, OSError, queue.Empty) as error:
                failed.add(name)
                results.skip(name, f"failed: {str(error).splitlines()[0]}")
                continue
            for metric in COLUMNS:
                if figures.get(metric.key) is not None:
                    results.add(metric, name, [figures[metric.key]], extra=figures if metric is BOOT_UDP else None)
    report(results, [footprint_table(results, reference=echo_peer().name)], arguments,
           placement=placement.describe())
    return 0


def _available(target: Target, results: Results) -> bool:
    reason = target.skip_reason()
    if reason is not None:
        results.skip(target.name, reason)
    return reason is None


def footprint_table(results: Results, *, reference: str) -> str:
    """One row per target, one column per figure: medians across rounds."""
    summaries = {metric.key: results.summary(metric.key) for metric in COLUMNS}
    names = list(dict.fromkeys(row for summary in summaries.values() for row in summary))
    rows = {name: [summaries[metric.key][name].median if name in summaries[metric.key] else None
                   for metric in COLUMNS] for name in names}
    columns = [f"{SHORT_LABELS[metric.key]} {metric.unit}" for metric in COLUMNS]
    rounds = max((value.rounds for summary in summaries.values() for value in summary.values()), default=0)
    notes = [f"medians of {rounds} rounds, a fresh process each round; boot→: process creation to the first "
             "reply seen by a poller probing every 1 ms; anon RSS: RssAnon, private memory without shared libraries",
             "the peer's boot to first ping is – : the kernel answers its pings, not the process",
             "peak RSS after 200 pings at 10 ms plus 5000 sequential UDP echoes (fewer with --quick)"]
    return markdown_table("Footprint: boot time and memory", columns, rows,
                          reference=reference if reference in rows else None, notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(BENCHMARK, __doc__.split("\n")[0], rounds=5)
    arguments = parser.parse_args(argv)
    return main_guard(BENCHMARK, lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())
