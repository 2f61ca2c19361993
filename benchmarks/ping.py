"""``python -m benchmarks.ping``: ICMP, UDP and TCP round trips, our stack against the kernel's.

What is compared, in one run, alternating round by round:

- **ICMP echo**: iputils ``ping -c 200 -i 0.01`` from the client namespace
  to ``services.echo`` through its tap, versus ``ping`` to the Linux kernel
  of the veth server namespace. Each ``time=`` line is one sample.
  The same again at ``-i 0.001``: at 10 ms intervals an idle CPU has to
  wake up for every ping our process answers (the kernel answers in the
  sender's softirq and never waits for one), so the two tables separate
  wake-up cost from per-packet cost.
- **UDP echo**: one small Python client (a kernel UDP socket, 64-byte
  payload, 5000 sequential request/replies timed with
  ``time.perf_counter_ns``; ``benchmarks.clients udp-rtt``) against
  ``services.echo`` port 7 through the tap, versus the raw uvloop echo peer
  on the kernel's stack over veth.
- **TCP echo**: the same, on one TCP connection opened before the warm-up
  (``benchmarks.clients tcp-rtt``: ``TCP_NODELAY``, 64 bytes out, the
  same 64 bytes read back, 5000 sequential exchanges after 200 warm-up)
  against ``services.echo`` TCP port 7 through the tap, versus the raw
  uvloop peer's TCP echo (``TCP_NODELAY`` on its accepted connections) over
  veth: the kernel-to-kernel path. A target that does not accept TCP on
  port 7 is left out of this table with the reason.

Both paths cross a virtual link and the client side is the same kernel
code, so the difference is our stack (plus the tap's user/kernel copies)
against the kernel's own ICMP handling, or against the kernel's UDP plus
one uvloop callback. Figures are microseconds.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import clients
from benchmarks.common import (
    Metric,
    Results,
    alternate,
    argument_parser,
    distribution_table,
    main_guard,
    progress,
    report,
    resolve_rounds,
    selected,
)
from benchmarks.targets import echo_peer, echo_tap
from benchmarks.topology import Placement, Running, Session, probe_tcp, run_client

BENCHMARK = "ping"
ICMP = Metric("icmp_rtt", "ICMP echo round trip (ping -i 0.01)", "µs")
ICMP_BUSY = Metric("icmp_rtt_busy", "ICMP echo round trip, busy (ping -i 0.001)", "µs")
UDP = Metric("udp_rtt", "UDP echo round trip (64 bytes, one client, sequential)", "µs")
TCP = Metric("tcp_rtt", "TCP echo round trip (64 bytes, one open connection, TCP_NODELAY, sequential)", "µs")
KERNEL_ROW = "Linux kernel (veth)"
PING_INTERVAL = "0.01"
BUSY_INTERVAL = "0.001"


def icmp_row(running: Running) -> str:
    """The kernel, not the uvloop peer, answers ping in the veth topology: name it so."""
    return KERNEL_ROW if running.target.topology == "veth" else running.name


def measure_ping(running: Running, count: int, interval: str = PING_INTERVAL) -> dict[str, Any]:
    """``ping -c COUNT -i INTERVAL`` from the client namespace; parsed, times in µs.

    Bounded by ``count`` and by a timeout of the expected duration plus 30 s.
    """
    done = running.client.run(["ping", "-n", "-c", str(count), "-i", interval, "-W", "2",
                               running.address], check=False, timeout=count * (float(interval) + 0.05) + 30)
    parsed = clients.parse_ping(done.stdout)
    if not parsed["times_ms"]:
        raise RuntimeError(f"no ping replies from {running.name}: {(done.stdout + done.stderr).strip()[-500:]}")
    parsed["times_us"] = [value * 1000 for value in parsed.pop("times_ms")]
    return parsed


def measure_udp(running: Running, count: int, warmup: int = 200) -> dict[str, Any]:
    """The sequential UDP client in the client namespace; samples in µs."""
    result = run_client(running.client, "udp-rtt",
                        ["--host", running.address, "--port", running.target.port, "--count", count,
                         "--warmup", warmup, "--deadline", 60], timeout=90)
    result["samples_us"] = [value / 1000 for value in result.pop("samples_ns")]
    return result


def measure_tcp(running: Running, count: int, warmup: int = 200) -> dict[str, Any]:
    """The sequential TCP echo client in the client namespace; samples in µs.

    Bounded by ``count``, a 60 s deadline inside the client, a 2 s timeout
    per receive and a 90 s timeout on the process.
    """
    result = run_client(running.client, "tcp-rtt",
                        ["--host", running.address, "--port", running.target.port, "--count", count,
                         "--warmup", warmup, "--deadline", 60], timeout=90)
    result["samples_us"] = [value / 1000 for value in result.pop("samples_ns")]
    return result


def warm_up(running: Running) -> None:
    """A few pings first, so that ARP and caches are settled before round one."""
    running.client.run(["ping", "-n", "-c", "3", "-i", "0.05", "-W", "2", running.address],
                       check=False, timeout=30)


def run(arguments: Any) -> int:
    rounds = resolve_rounds(arguments)
    ping_count = arguments.count or (50 if arguments.quick else 200)
    udp_count = arguments.udp_count or (1000 if arguments.quick else 5000)
    tcp_count = arguments.tcp_count or (1000 if arguments.quick else 5000)
    results = Results(BENCHMARK, arguments)
    targets = selected([echo_tap(), echo_peer()], arguments.only)
    if clients_missing := _ping_missing():
        print(f"benchmarks.ping: cannot run: {clients_missing}", file=sys.stderr)
        return 1
    placement = Placement.choose(arguments.cpus)
    with Session(BENCHMARK, placement) as session:
        started = {running.name: running for running in session.start_all(targets, results)}
        tcp_capable = set()
        for running in started.values():
            warm_up(running)
            reason = probe_tcp(running.client, running.address, running.target.port)
            if reason is None:
                tcp_capable.add(running.name)
            else:
                results.skip(f"{running.name} TCP echo", reason)
        for number, name in alternate(rounds, list(started)):
            running = started[name]
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · ping -c {ping_count} -i {PING_INTERVAL}")
            parsed = measure_ping(running, ping_count)
            results.add(ICMP, icmp_row(running), parsed["times_us"],
                        extra={key: parsed[key] for key in ("transmitted", "received", "duplicates")})
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · ping -c {ping_count} -i {BUSY_INTERVAL}")
            busy = measure_ping(running, ping_count, BUSY_INTERVAL)
            results.add(ICMP_BUSY, icmp_row(running), busy["times_us"],
                        extra={key: busy[key] for key in ("transmitted", "received", "duplicates")})
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · UDP echo × {udp_count}")
            udp = measure_udp(running, udp_count)
            results.add(UDP, name, udp["samples_us"], extra={"lost": udp["lost"]})
            if name not in tcp_capable:
                continue
            progress(BENCHMARK, f"round {number + 1}/{rounds} · {name} · TCP echo × {tcp_count}")
            try:
                tcp = measure_tcp(running, tcp_count)
            except RuntimeError as error:
                results.skip(f"{name} TCP echo, round {number + 1}", str(error).splitlines()[0][:200])
                continue
            results.add(TCP, name, tcp["samples_us"], extra={"error": tcp["error"], "nodelay": tcp["nodelay"]})
            if tcp["error"] is not None:
                results.skip(f"{name} TCP echo, round {number + 1}",
                             f"stopped after {len(tcp['samples_us'])} samples: {tcp['error']}")
    tables = [
        distribution_table(results, ICMP, reference=KERNEL_ROW, notes=[clients.PING_RESOLUTION]),
        distribution_table(results, ICMP_BUSY, reference=KERNEL_ROW,
                           notes=["the same pings 10× as often: the service's CPU has no time to go idle, "
                                  "so the gap to the 10 ms table is the cost of waking an idle CPU and process"]),
        distribution_table(results, UDP, reference=echo_peer().name,
                           notes=["client: benchmarks.clients udp-rtt, timed with time.perf_counter_ns "
                                  "(includes the client's own Python send/recv, the same for both)"]),
    ]
    if results.summary(TCP.key):
        tables.append(distribution_table(
            results, TCP, reference=echo_peer().name,
            notes=["client: benchmarks.clients tcp-rtt, one connection opened before the warm-up, TCP_NODELAY, "
                   "64 bytes sent and the same 64 bytes read back per sample, time.perf_counter_ns"]))
    report(results, tables, arguments, placement=placement.describe())
    return 0


def _ping_missing() -> str | None:
    import shutil

    return None if shutil.which("ping") else "ping is not installed (apt-get install -y iputils-ping)"


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(BENCHMARK, __doc__.split("\n")[0], rounds=5)
    parser.add_argument("--count", type=int, default=None, help="pings per round (default 200, --quick 50)")
    parser.add_argument("--udp-count", type=int, default=None, help="UDP exchanges per round (default 5000, --quick 1000)")
    parser.add_argument("--tcp-count", type=int, default=None, help="TCP echoes per round (default 5000, --quick 1000)")
    arguments = parser.parse_args(argv)
    return main_guard(BENCHMARK, lambda: run(arguments))


if __name__ == "__main__":
    sys.exit(main())
