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

The same figures for Suresh, in a second table: on the unix platform over
a tap, as an hvt guest under the tender over a tap, and the raw uvloop
HTTP peer over veth as the reference. Boot there is to the first whole
``200`` answer to ``GET /`` (the poller keeps up to 8 TCP connection
attempts open, a fresh one every millisecond while there is room), and the
load before peak RSS is 5000 keep-alive requests plus 200 fresh curls.
For hvt:

- the image is built **once per run**, before the rounds, with
  ``python -m platforms.hvt.build services.suresh -o IMAGE``; each round
  then times the tender alone, ``python -m platforms.hvt.tender
  --net:service=tap0 -- IMAGE --ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1
  --port=8080``: tender start to first answered request. (``python -m
  services.suresh --platform hvt`` would rebuild the image every start.)
- idle, anon and peak RSS are the **guest's** (the tender's child whose
  command line holds the image path), the tender's own RSS is a column of
  its own, and the image's size in bytes another.

Memory is in MiB (2^20 bytes), times in milliseconds.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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
from benchmarks.latency import measure_keep_alive, measure_new_connection
from benchmarks.peers import HTTP_PORT
from benchmarks.ping import measure_ping, measure_udp
from benchmarks.targets import (
    HVT_IMAGE_NAME,
    build_hvt_image,
    echo_peer,
    echo_tap,
    hvt_guest_pid,
    raw_http,
    serving_mismatch,
    suresh_hvt_tender,
    suresh_tap,
)
from benchmarks.topology import Placement, Running, Session, Topology, check_is_python, memory_kib

BENCHMARK = "footprint"
BOOT_ICMP = Metric("boot_to_ping", "boot to first ping reply", "ms")
BOOT_UDP = Metric("boot_to_udp", "boot to first UDP echo", "ms")
READY_LINE = Metric("ready_line", "boot to ready line", "ms")
IDLE_RSS = Metric("idle_rss", "idle RSS (VmRSS)", "MiB")
IDLE_ANON = Metric("idle_rss_anon", "idle private RSS (RssAnon)", "MiB")
PEAK_RSS = Metric("peak_rss", "peak RSS after load (VmHWM)", "MiB")
BOOT_HTTP = Metric("boot_to_http", "boot to first answered GET /", "ms")
TENDER_RSS = Metric("tender_rss", "hvt tender's idle RSS (VmRSS)", "MiB")
IMAGE_BYTES = Metric("image_bytes", "hvt image size", "bytes")
COLUMNS = [BOOT_ICMP, BOOT_UDP, READY_LINE, IDLE_RSS, IDLE_ANON, PEAK_RSS]
HTTP_COLUMNS = [BOOT_ICMP, BOOT_HTTP, READY_LINE, IDLE_RSS, IDLE_ANON, PEAK_RSS, TENDER_RSS, IMAGE_BYTES]
SHORT_LABELS = {"boot_to_ping": "boot→ping", "boot_to_udp": "boot→UDP echo", "ready_line": "ready line",
                "idle_rss": "idle RSS", "idle_rss_anon": "idle anon RSS", "peak_rss": "peak RSS",
                "boot_to_http": "boot→GET /", "tender_rss": "tender RSS", "image_bytes": "image"}
POLL_TIMEOUT = 20.0
IDLE_SECONDS = 1.0


class BootPoller:
    """The boot poller started in the client namespace before the server exists."""

    def __init__(self, icmp: bool, *, http: bool = False) -> None:
        self.icmp = icmp
        self.http = http
        self.process: Any = None

    def start(self, topology: Topology) -> None:
        ports = ["--udp-port", "0", "--http-port", str(HTTP_PORT)] if self.http else ["--udp-port", "7"]
        arguments = ["-m", "benchmarks.clients", "boot-poll", "--host", topology.server_address,
                     *ports, "--timeout", str(POLL_TIMEOUT)]
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


def measure_http_round(session: Session, target: Target, image: Path | None, keep_alive_count: int,
                       curl_count: int) -> dict[str, Any]:
    """Start an HTTP target fresh, measure boot to the first answered ``GET /``, idle and peak memory, stop it.

    ``image``: the target is the hvt tender running that image; memory is
    then the guest's, and the tender's RSS and the image's size are added.
    """
    poller = BootPoller(icmp=target.topology == "tap", http=True)
    running: Running = session.start(target, before_launch=poller.start)
    try:
        ready_ns = time.monotonic_ns()
        started_ns = running.launched_ns
        answered = poller.result()
        pid = running.process.pid
        check_is_python(pid)
        figures: dict[str, Any] = {"pid": pid, "ready_line": (ready_ns - started_ns) / 1e6}
        for key, field in (("boot_to_ping", "icmp_ns"), ("boot_to_http", "http_ns")):
            figures[key] = None if answered.get(field) is None else (answered[field] - started_ns) / 1e6
        if figures["boot_to_http"] is None:
            raise RuntimeError(f"{running.name} never answered GET / within {POLL_TIMEOUT} s")
        memory_pid = pid
        if image is not None:
            memory_pid = hvt_guest_pid(pid, image)
            check_is_python(memory_pid)
            figures["guest_pid"] = memory_pid
            figures["image_bytes"] = image.stat().st_size
        time.sleep(IDLE_SECONDS)
        idle = memory_kib(memory_pid)
        figures["idle_rss"] = idle["VmRSS"] / 1024
        figures["idle_rss_anon"] = idle.get("RssAnon", 0) / 1024
        figures["idle_memory_kib"] = idle
        if image is not None:
            tender = memory_kib(pid)
            figures["tender_rss"] = tender["VmRSS"] / 1024
            figures["tender_idle_memory_kib"] = tender
        mismatch = serving_mismatch(running)
        if mismatch is not None:
            raise RuntimeError(mismatch)
        figures["load"] = {"keep_alive": measure_keep_alive(running, keep_alive_count)["statuses"]}
        if curl_count:
            figures["load"]["curl_failures"] = len(measure_new_connection(running, curl_count)["failures"])
        loaded = memory_kib(memory_pid)
        figures["peak_rss"] = loaded["VmHWM"] / 1024
        figures["loaded_memory_kib"] = loaded
        if image is not None:
            figures["tender_loaded_memory_kib"] = memory_kib(pid)
        return figures
    finally:
        running.stop()


def _alternate_rounds(rounds: int, by_name: dict[str, Target], results: Results, describe: str,
                      measure: Any, columns: list[Metric], keyed: Metric) -> None:
    """Rounds alternating ``by_name``'s targets; a target that fails once is dropped with the reason."""
    failed: set[str] = set()
    for number, name in alternate(rounds, list(by_name)):
        if name in failed:
            continue
        progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · {describe}")
        try:
            figures = measure(by_name[name])
        except (RuntimeError, OSError, ValueError, queue.Empty) as error:
            failed.add(name)
            results.skip(name, f"failed: {str(error).splitlines()[0]}")
            continue
        for metric in columns:
            if figures.get(metric.key) is not None:
                results.add(metric, name, [figures[metric.key]], extra=figures if metric is keyed else None)


def run(arguments: Any) -> int:
    rounds = resolve_rounds(arguments)
    ping_count = 50 if arguments.quick else 200
    udp_count = 1000 if arguments.quick else 5000
    keep_alive_count = 1000 if arguments.quick else 5000
    curl_count = 0 if shutil.which("curl") is None else (30 if arguments.quick else 200)
    results = Results(BENCHMARK, arguments)
    echo_targets = [target for target in selected([echo_tap(), echo_peer()], arguments.only)
                    if _available(target, results)]
    placement = Placement.choose(arguments.cpus)
    image_directory = Path(tempfile.mkdtemp(prefix="bench-footprint-image-"))
    try:
        http_targets, image = _http_targets(arguments, results, image_directory / HVT_IMAGE_NAME)
        with Session(BENCHMARK, placement) as session:
            _alternate_rounds(
                rounds, {target.name: target for target in echo_targets}, results,
                f"boot, idle 1 s, load ({ping_count} pings + {udp_count} UDP)",
                lambda target: measure_round(session, target, ping_count, udp_count), COLUMNS, BOOT_UDP)
            _alternate_rounds(
                rounds, {target.name: target for target in http_targets}, results,
                f"boot, idle 1 s, load ({keep_alive_count} keep-alive GET / + {curl_count} curls)",
                lambda target: measure_http_round(session, target, image if target.name == HVT_NAME else None,
                                                  keep_alive_count, curl_count),
                HTTP_COLUMNS, BOOT_HTTP)
    finally:
        shutil.rmtree(image_directory, ignore_errors=True)
    tables = [footprint_table(results, reference=echo_peer().name, rows=[target.name for target in echo_targets]),
              suresh_footprint_table(results, reference=raw_http().name,
                                     rows=[target.name for target in http_targets],
                                     keep_alive_count=keep_alive_count, curl_count=curl_count)]
    report(results, [table for table in tables if table], arguments, placement=placement.describe())
    return 0


HVT_NAME = "suresh (hvt)"


def _http_targets(arguments: Any, results: Results, image: Path) -> tuple[list[Target], Path]:
    """Suresh on unix, Suresh on hvt (its image built here, once), the raw HTTP peer: those that can run."""
    candidates = selected([suresh_tap(), suresh_hvt_tender(image), raw_http()], arguments.only)
    chosen = []
    for target in candidates:
        if not _available(target, results):
            continue
        if target.name == HVT_NAME:
            progress(BENCHMARK, f"build the hvt image {image} (once, before the rounds; not timed)")
            try:
                build_hvt_image(image)
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                results.skip(target.name, str(error).splitlines()[0])
                continue
        chosen.append(target)
    return chosen, image


def _available(target: Target, results: Results) -> bool:
    reason = target.skip_reason()
    if reason is not None:
        results.skip(target.name, reason)
    return reason is None


def _rows(results: Results, columns: list[Metric], rows: list[str] | None) -> dict[str, list[float | None]]:
    """Medians across rounds, one list per row (``rows``, or every row that has a figure)."""
    summaries = {metric.key: results.summary(metric.key) for metric in columns}
    names = list(dict.fromkeys(row for summary in summaries.values() for row in summary))
    if rows is not None:
        names = [name for name in rows if name in names]
    return {name: [summaries[metric.key][name].median if name in summaries[metric.key] else None
                   for metric in columns] for name in names}


def _rounds(results: Results, columns: list[Metric], rows: dict[str, Any]) -> int:
    return max((value.rounds for metric in columns for row, value in results.summary(metric.key).items()
                if row in rows), default=0)


def footprint_table(results: Results, *, reference: str, rows: list[str] | None = None) -> str:
    """One row per target, one column per figure: medians across rounds."""
    table_rows = _rows(results, COLUMNS, rows)
    columns = [f"{SHORT_LABELS[metric.key]} {metric.unit}" for metric in COLUMNS]
    rounds = _rounds(results, COLUMNS, table_rows)
    notes = [f"medians of {rounds} rounds, a fresh process each round; boot→: process creation to the first "
             "reply seen by a poller probing every 1 ms; anon RSS: RssAnon, private memory without shared libraries",
             "the peer's boot to first ping is – : the kernel answers its pings, not the process",
             "peak RSS after 200 pings at 10 ms plus 5000 sequential UDP echoes (fewer with --quick)"]
    return markdown_table("Footprint: boot time and memory", columns, table_rows,
                          reference=reference if reference in table_rows else None, notes=notes)


def suresh_footprint_table(results: Results, *, reference: str, rows: list[str] | None = None,
                           keep_alive_count: int = 5000, curl_count: int = 200) -> str | None:
    """Suresh on unix and on hvt against the raw HTTP peer: boot to GET /, memory, tender, image."""
    table_rows = _rows(results, HTTP_COLUMNS, rows)
    if not table_rows:
        return None
    columns = [f"{SHORT_LABELS[metric.key]} {metric.unit}" for metric in HTTP_COLUMNS]
    rounds = _rounds(results, HTTP_COLUMNS, table_rows)
    notes = [f"medians of {rounds} rounds, a fresh process each round; boot→GET /: process creation (for hvt: the "
             "tender's, on an image built before the rounds) to the first whole 200 response seen by a poller "
             "inside the namespace (up to 8 non-blocking TCP connection attempts, a fresh one every 1 ms)",
             "hvt: idle, anon and peak RSS are the guest's (python -I -S -OO IMAGE, the tender's child); "
             "tender RSS is the tender's own, at the same moment as idle RSS; image: the .hvt file in bytes",
             "the peer's boot to first ping is – : the kernel answers its pings, not the process",
             f"peak RSS after {keep_alive_count} sequential keep-alive GET / plus {curl_count} fresh curls"]
    return markdown_table("Footprint of Suresh: unix and hvt", columns, table_rows,
                          reference=reference if reference in table_rows else None, notes=notes)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(BENCHMARK, __doc__.split("\n")[0], rounds=5)
    arguments = parser.parse_args(argv)
    return main_guard(BENCHMARK, lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())
