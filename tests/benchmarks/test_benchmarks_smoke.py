"""The pure parts of ``benchmarks/``: statistics, parsers, tables, target skipping.

No network, no namespaces, no long runs: the benchmarks themselves are not
tests (DESIGN.md); these keep the arithmetic and the parsing they report
with honest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks import clients, common, footprint, peers, targets, throughput
from benchmarks.common import AcrossRounds, Metric, Results, Summary, Target, percentile

# -- statistics -------------------------------------------------------------------------


def test_nearest_rank_percentiles_of_one_to_a_hundred() -> None:
    samples = list(range(100, 0, -1))  # order must not matter
    assert percentile(samples, 90) == 90
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 1) == 1


def test_nearest_rank_never_interpolates() -> None:
    samples = [float(value) for value in range(1, 201)]
    assert percentile(samples, 99) == 198.0  # ceil(0.99 * 200) = 198th value
    assert percentile([5.0, 7.0], 50) == 5.0
    assert percentile([3.0], 99) == 3.0


@pytest.mark.parametrize("bad", [0, -1, 100.5])
def test_percentile_outside_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], bad)


def test_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    summary = Summary.of([4.0, 1.0, 3.0, 2.0])
    assert summary.median == 2.5
    assert (summary.count, summary.minimum, summary.maximum) == (4, 1.0, 4.0)
    assert summary.p90 == 4.0 and summary.p99 == 4.0


def test_across_rounds_takes_the_median_of_each_statistic() -> None:
    rounds = [[10.0] * 99 + [100.0], [20.0] * 99 + [200.0], [30.0] * 99 + [300.0]]
    combined = AcrossRounds.of(rounds)
    assert combined.rounds == 3 and combined.count == 300
    assert combined.median == 20.0
    assert combined.p90 == 20.0
    assert combined.p99 == 20.0  # nearest rank 99 of 100 is still the plateau
    assert combined.spread == pytest.approx((30.0 - 10.0) / 20.0)


def test_across_rounds_ignores_empty_rounds_but_not_all() -> None:
    assert AcrossRounds.of([[], [5.0]]).median == 5.0
    with pytest.raises(ValueError):
        AcrossRounds.of([[], []])


def test_rounds_alternate_targets() -> None:
    order = list(common.alternate(2, ["A", "B", "C"]))
    assert [name for _, name in order] == ["A", "B", "C", "A", "B", "C"]
    assert [number for number, _ in order] == [0, 0, 0, 1, 1, 1]


# -- parsers ----------------------------------------------------------------------------

PING_OUTPUT = """\
PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.
64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.359 ms
64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.114 ms
64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.200 ms (DUP!)
64 bytes from 10.0.0.2: icmp_seq=3 ttl=64 time=1.25 ms
64 bytes from 10.0.0.2: icmp_seq=5 ttl=64 time=12.5 ms

--- 10.0.0.2 ping statistics ---
5 packets transmitted, 4 received, +1 duplicates, 20% packet loss, time 61ms
rtt min/avg/max/mdev = 0.114/3.556/12.500/5.141 ms
"""


def test_ping_times_are_parsed_without_duplicates() -> None:
    parsed = clients.parse_ping(PING_OUTPUT)
    assert parsed["times_ms"] == [0.359, 0.114, 1.25, 12.5]
    assert (parsed["transmitted"], parsed["received"], parsed["duplicates"]) == (5, 4, 1)


def test_ping_without_replies_or_summary() -> None:
    parsed = clients.parse_ping("PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n")
    assert parsed == {"times_ms": [], "transmitted": None, "received": None, "duplicates": 0}


WRK_OUTPUT = """\
Running 5s test @ http://10.0.1.2:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   320.51us  102.33us   4.12ms   91.20%
    Req/Sec    48.10k     1.20k   50.00k    80.00%
  Latency Distribution
     50%  301.00us
     75%  340.00us
     90%    1.02ms
     99%    1.50s
  239123 requests in 5.00s, 30.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  47824.60
Transfer/sec:      6.02MB
"""


def test_wrk_output_is_parsed_with_units() -> None:
    parsed = clients.parse_wrk(WRK_OUTPUT)
    assert parsed["requests_per_second"] == 47824.60
    assert parsed["requests"] == 239123
    assert parsed["latency_ms"] == pytest.approx({"p50": 0.301, "p75": 0.34, "p90": 1.02, "p99": 1500.0})
    assert parsed["socket_errors"] == 3
    assert parsed["non_2xx"] == 4


def test_wrk_output_without_a_rate_is_an_error() -> None:
    with pytest.raises(ValueError, match="Requests/sec"):
        clients.parse_wrk("unable to connect to 10.0.1.2:8080 Connection refused\n")


def test_curl_write_out_line() -> None:
    assert clients.parse_curl_line("200 0.000812\n") == (200, 0.000812)
    with pytest.raises(ValueError):
        clients.parse_curl_line("")


def test_icmp_echo_request_checksums_to_zero() -> None:
    packet = clients._icmp_echo(0x1234, 7)
    total = sum((packet[index] << 8) + packet[index + 1] for index in range(0, len(packet), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF
    assert packet[0] == 8 and packet[4:6] == b"\x12\x34"


# -- the TCP echo client ----------------------------------------------------------------


@pytest.fixture
def stream_pair() -> Iterator[Callable[[Callable[[socket.socket], None]], socket.socket]]:
    """A connected stream pair with ``serve(our_end)`` run in a thread; yields the client's end.

    A socketpair, not a network: the client's loop is what is tested here.
    """
    made: list[tuple[socket.socket, socket.socket, threading.Thread]] = []

    def make(serve: Callable[[socket.socket], None]) -> socket.socket:
        client, server = socket.socketpair()
        client.settimeout(2)
        server.settimeout(2)
        thread = threading.Thread(target=_serve_then_close, args=(serve, server), daemon=True)
        thread.start()
        made.append((client, server, thread))
        return client

    yield make
    for client, _, thread in made:
        client.close()
        thread.join(timeout=5)


def _serve_then_close(serve: Callable[[socket.socket], None], sock: socket.socket) -> None:
    try:
        serve(sock)
    except OSError:
        pass
    finally:
        sock.close()


def _echo(sock: socket.socket, *, split: bool = False, limit: int = 10_000, corrupt_at: int = -1) -> None:
    """Echo 64-byte messages back (split in two writes when asked) for ``limit`` messages."""
    for number in range(limit):
        data = clients.read_exactly(sock, 64)
        if number == corrupt_at:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if split:
            sock.sendall(data[:5])
            sock.sendall(data[5:])
        else:
            sock.sendall(data)


@pytest.mark.parametrize("split", [False, True])
def test_tcp_echo_exchanges_time_every_exchange_after_the_warm_up(stream_pair, split: bool) -> None:
    sock = stream_pair(lambda server: _echo(server, split=split, limit=30))
    result = clients.tcp_echo_exchanges(sock, count=20, warmup=10, size=64, deadline=10)
    assert result["error"] is None
    assert len(result["samples_ns"]) == 20
    assert all(isinstance(value, int) and value > 0 for value in result["samples_ns"])


def test_tcp_echo_exchanges_stop_when_the_server_closes(stream_pair) -> None:
    sock = stream_pair(lambda server: _echo(server, limit=15))
    result = clients.tcp_echo_exchanges(sock, count=20, warmup=10, size=64, deadline=10)
    assert len(result["samples_ns"]) == 5
    assert result["error"].startswith("exchange 15: ")  # a clean close or a reset, by timing


def test_tcp_echo_exchanges_refuse_a_wrong_reply(stream_pair) -> None:
    sock = stream_pair(lambda server: _echo(server, corrupt_at=3))
    result = clients.tcp_echo_exchanges(sock, count=20, warmup=0, size=64, deadline=10)
    assert len(result["samples_ns"]) == 3
    assert result["error"] == "exchange 3: the reply differs from what was sent"


def test_tcp_echo_exchanges_stop_on_a_silent_server(stream_pair) -> None:
    stopped = threading.Event()
    sock = stream_pair(lambda server: stopped.wait(5))
    sock.settimeout(0.05)
    try:
        result = clients.tcp_echo_exchanges(sock, count=5, warmup=0, size=64, deadline=10)
    finally:
        stopped.set()
    assert result["samples_ns"] == []
    assert result["error"].startswith("exchange 0: TimeoutError")


def test_tcp_echo_exchanges_respect_the_deadline(stream_pair) -> None:
    sock = stream_pair(lambda server: _echo(server))
    result = clients.tcp_echo_exchanges(sock, count=1000, warmup=0, size=64, deadline=-1)
    assert result["samples_ns"] == []
    assert result["error"] == "deadline of -1 s reached after 0 exchanges"


def test_read_exactly_joins_partial_reads(stream_pair) -> None:
    def serve(server: socket.socket) -> None:
        server.sendall(b"abc")
        server.sendall(b"defgh")

    sock = stream_pair(serve)
    assert clients.read_exactly(sock, 8) == b"abcdefgh"
    with pytest.raises(ConnectionError):
        clients.read_exactly(sock, 1)


def test_tcp_rtt_client_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.clients", "tcp-rtt", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    assert "--size" in done.stdout and "--warmup" in done.stdout and "--deadline" in done.stdout


# -- tables and results -----------------------------------------------------------------


def test_number_format_keeps_three_significant_figures() -> None:
    assert common.format_number(0.1234) == "0.123"
    assert common.format_number(43.21) == "43.2"
    assert common.format_number(214.4) == "214"
    assert common.format_number(48407.2) == "48,407"
    assert common.format_number(0) == "0"


def test_markdown_table_shows_absolutes_and_ratios() -> None:
    table = common.markdown_table("Latency", ["median µs", "p99 µs"],
                                  {"ours": [200.0, None], "kernel": [40.0, 80.0]}, reference="kernel",
                                  notes=["a note"])
    lines = table.splitlines()
    assert lines[0] == "### Latency"
    assert lines[2] == "| target | median µs | p99 µs |"
    assert lines[3] == "|---|---:|---:|"
    assert lines[4] == "| ours | 200 (5.00×) | – |"
    assert lines[5] == "| kernel (reference) | 40.0 (1.00×) | 80.0 (1.00×) |"
    assert lines[6] == ""
    assert lines[7] == "- a note"


def test_markdown_table_without_reference_has_no_ratios() -> None:
    table = common.markdown_table("T", ["x"], {"a": [1.5]}, reference=None)
    assert "| a | 1.50 |" in table


def _results() -> Results:
    return Results("smoke", argparse.Namespace(quick=True, rounds=None, unjsonable=object()))


def test_results_summarize_per_row_and_write_json(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(common, "describe_machine", lambda: {"cpu": "test"})
    metric = Metric("rtt", "round trip", "µs")
    results = _results()
    results.add(metric, "ours", [3.0, 1.0, 2.0], extra={"lost": 0})
    results.add(metric, "ours", [4.0, 5.0, 6.0])
    results.skip("theirs", "not installed")
    assert results.summary("rtt")["ours"].median == 3.5
    table = common.distribution_table(results, metric, reference="nobody")
    assert "| ours | 3.50 |" in table and "6 samples in 2 rounds" in table
    path = results.write(tmp_path, chart=False)
    written = json.loads(path.read_text())
    assert written["samples"]["rtt"]["ours"] == [[3.0, 1.0, 2.0], [4.0, 5.0, 6.0]]
    assert written["skipped"] == {"theirs": "not installed"}
    assert written["machine"] == {"cpu": "test"}
    assert "unjsonable" not in written["arguments"]
    assert path.parent == tmp_path and path.name.startswith("smoke-")


def test_footprint_table_marks_missing_figures() -> None:
    results = _results()
    for name, boot in (("services.echo (tap)", 200.0), ("raw uvloop echo (veth)", 80.0)):
        results.add(footprint.BOOT_UDP, name, [boot])
        results.add(footprint.IDLE_RSS, name, [40.0 if boot > 100 else 20.0])
    results.add(footprint.BOOT_ICMP, "services.echo (tap)", [199.0])
    table = footprint.footprint_table(results, reference="raw uvloop echo (veth)")
    assert "| services.echo (tap) | 199 | 200 (2.50×) | – | 40.0 (2.00×) | – | – |" in table
    assert "| raw uvloop echo (veth) (reference) | – | 80.0 (1.00×) |" in table


def test_bulk_table_gives_median_and_slowest_transfer_each_direction() -> None:
    results = _results()
    for send, receive in ((900.0, 300.0), (1100.0, 500.0), (1000.0, 400.0)):
        results.add(throughput.SEND, "ours", [send], extra={"bytes": int(send * 3e6)})
        results.add(throughput.RECEIVE, "ours", [receive], extra={"bytes": int(receive * 3e6)})
    for rate in (2000.0, 1800.0):
        results.add(throughput.SEND, "kernel", [rate], extra={"bytes": int(rate * 3e6)})
        results.add(throughput.RECEIVE, "kernel", [rate], extra={"bytes": int(rate * 3e6)})
    table = throughput.bulk_table(results, "kernel", rounds=3, seconds=3, limit_bytes=16 * 2**30)
    assert table is not None
    lines = table.splitlines()
    assert lines[2] == ("| target | send to discard :9 median MB/s | send to discard :9 min MB/s "
                        "| receive from source :19 median MB/s | receive from source :19 min MB/s |")
    assert lines[4] == "| ours | 1,000 (0.53×) | 900 (0.50×) | 400 (0.21×) | 300 (0.17×) |"
    assert lines[5] == "| kernel (reference) | 1,900 (1.00×) | 1,800 (1.00×) | 1,900 (1.00×) | 1,800 (1.00×) |"
    assert "each transfer stops after 3 s (or 16 GiB)" in table
    assert "3.00 GB (ours, send)" in table and "1.20 GB (ours, receive)" in table
    assert "ours, send to discard :9: 3 transfers, within ±10 %" in table


def test_suresh_footprint_table_has_tender_and_image_columns() -> None:
    results = _results()
    for name, boot, rss in (("suresh (tap)", 170.0, 39.0), ("suresh (hvt)", 330.0, 20.0),
                            ("raw uvloop HTTP (veth)", 60.0, 25.0)):
        results.add(footprint.BOOT_HTTP, name, [boot])
        results.add(footprint.IDLE_RSS, name, [rss])
    results.add(footprint.TENDER_RSS, "suresh (hvt)", [36.0])
    results.add(footprint.IMAGE_BYTES, "suresh (hvt)", [138743.0])
    results.add(footprint.BOOT_UDP, "services.echo (tap)", [200.0])
    table = footprint.suresh_footprint_table(results, reference="raw uvloop HTTP (veth)",
                                             rows=["suresh (tap)", "suresh (hvt)", "raw uvloop HTTP (veth)"])
    assert table is not None
    assert "| target | boot→ping ms | boot→GET / ms | ready line ms | idle RSS MiB | idle anon RSS MiB " \
           "| peak RSS MiB | tender RSS MiB | image bytes |" in table
    assert "| suresh (hvt) | – | 330 (5.50×) | – | 20.0 (0.80×) | – | – | 36.0 | 138,743 |" in table
    assert "services.echo" not in table
    echo = footprint.footprint_table(results, reference="raw uvloop echo (veth)", rows=["services.echo (tap)"])
    assert "suresh" not in echo and "| services.echo (tap) | – | 200 |" in echo
    assert footprint.suresh_footprint_table(_results(), reference="x") is None


def test_pair_note_compares_two_rows_of_one_run() -> None:
    results = _results()
    metric = Metric("lat", "latency", "µs")
    results.add(metric, "suresh (tap)", [100.0, 200.0, 300.0])
    results.add(metric, "suresh (hvt)", [150.0, 300.0, 450.0])
    assert common.pair_note(results, metric, "suresh (hvt)", "suresh (tap)") == \
        "suresh (hvt) against suresh (tap), same run: median 300 / 200 = 1.50×"
    assert common.pair_note(results, metric, "suresh (hvt)", "nobody") is None
    from benchmarks import latency
    assert latency.hvt_notes(results, metric)[0].endswith("p99 450 / 300 = 1.50×")


def test_boot_poller_takes_an_http_port() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.clients", "boot-poll", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and "--http-port" in done.stdout


def test_bulk_table_of_nothing_is_none() -> None:
    assert throughput.bulk_table(_results(), "kernel", rounds=1, seconds=1, limit_bytes=2**30) is None


def test_bulk_rounds_default_to_five_and_follow_rounds() -> None:
    def namespace(**overrides: object) -> argparse.Namespace:
        values = {"bulk_rounds": None, "rounds": None, "quick": False, "default_rounds": 3, **overrides}
        return argparse.Namespace(**values)

    assert throughput.resolve_bulk_rounds(namespace()) == 5
    assert throughput.resolve_bulk_rounds(namespace(quick=True)) == 2
    assert throughput.resolve_bulk_rounds(namespace(rounds=4)) == 4
    assert throughput.resolve_bulk_rounds(namespace(rounds=4, bulk_rounds=7)) == 7
    with pytest.raises(SystemExit):
        throughput.resolve_bulk_rounds(namespace(bulk_rounds=0))


# -- targets ----------------------------------------------------------------------------


def test_target_skip_reason_comes_from_its_check() -> None:
    target = Target(name="t", topology="veth", launch=lambda topology, workdir: None,
                    unavailable=lambda: "tool is missing")
    assert target.skip_reason() == "tool is missing"
    assert Target(name="u", topology="veth", launch=lambda topology, workdir: None).skip_reason() is None


def test_a_broken_availability_check_skips_instead_of_failing() -> None:
    def broken() -> str | None:
        raise OSError("boom")

    target = Target(name="t", topology="veth", launch=lambda topology, workdir: None, unavailable=broken)
    assert target.skip_reason() == "availability check failed: boom"


def test_suresh_is_skipped_until_it_is_built(monkeypatch) -> None:
    real_find_spec = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec",
                        lambda name: None if name == "services.suresh" else real_find_spec(name))
    assert targets.suresh_tap().skip_reason() == "services.suresh is not built yet"
    assert targets.suresh_socket().skip_reason() == "services.suresh is not built yet"


def test_hvt_is_skipped_without_its_platform_or_libseccomp(monkeypatch) -> None:
    real_find_spec = targets.importlib.util.find_spec
    monkeypatch.setattr(targets.importlib.util, "find_spec",
                        lambda name: None if name.startswith("platforms.hvt") else real_find_spec(name))
    assert targets.suresh_hvt().skip_reason() == "platforms.hvt is not built yet"
    monkeypatch.setattr(targets.importlib.util, "find_spec", real_find_spec)
    monkeypatch.setattr(targets, "SECCOMP_LIBRARIES", ("libnetstack-no-such-library.so.0",))
    assert targets.suresh_hvt().skip_reason().startswith("libseccomp is not installed")
    assert targets.suresh_hvt_tender(Path("x.hvt")).skip_reason().startswith("libseccomp")


class _RecordingNamespace:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, object]]] = []

    def start_service(self, arguments: list[str], **options: object) -> str:
        self.calls.append((arguments, options))
        return "process"


class _FakeTopology:
    def __init__(self) -> None:
        self.server = _RecordingNamespace()


def test_hvt_targets_start_in_their_own_directory(tmp_path) -> None:
    topology = _FakeTopology()
    assert targets.suresh_hvt().launch(topology, tmp_path) == "process"  # type: ignore[arg-type]
    arguments, options = topology.server.calls[0]
    assert arguments == ["-m", "services.suresh", "--platform", "hvt", "--interface", "tap0", "--ipv4=10.0.0.2/24",
                         "--ipv4-gateway=10.0.0.1", "--port=8080"]
    assert options["cwd"] == tmp_path and options["ready"] == "suresh listening on TCP port 8080"
    image = tmp_path / "suresh.hvt"
    tender = targets.suresh_hvt_tender(image)
    assert tender.name == targets.suresh_hvt().name and tender.topology == "tap"
    tender.launch(topology, tmp_path)  # type: ignore[arg-type]
    arguments, _ = topology.server.calls[1]
    assert arguments == ["-m", "platforms.hvt.tender", "--net:service=tap0", "--", str(image), "--ipv4=10.0.0.2/24",
                         "--ipv4-gateway=10.0.0.1", "--port=8080"]
    unix_arguments = targets.suresh_tap().launch  # the unix target still runs in the repository
    unix_arguments(topology, tmp_path)  # type: ignore[arg-type]
    assert topology.server.calls[2][1]["cwd"] is None


def test_the_hvt_guest_is_the_tenders_child_running_the_image(tmp_path) -> None:
    image = tmp_path / "suresh.hvt"
    image.write_bytes(b"")
    # A stand-in tender: a child that sleeps with the image on its command line, and one without.
    script = ("import subprocess, sys, time\n"
              "a = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', sys.argv[1]])\n"
              "b = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', 'other.hvt'])\n"
              "print(a.pid, flush=True)\n"
              "time.sleep(30)\n")
    tender = subprocess.Popen([sys.executable, "-c", script, str(image)], stdout=subprocess.PIPE, text=True)
    try:
        guest = int(tender.stdout.readline())
        assert targets.hvt_guest_pid(tender.pid, image) == guest
        with pytest.raises(RuntimeError, match="expected one hvt guest"):
            targets.hvt_guest_pid(tender.pid, tmp_path / "missing.hvt")
    finally:
        for pid in _children(tender.pid):  # only the two children this test started, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tender.kill()
        tender.wait(timeout=10)
        tender.stdout.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_nginx_is_skipped_without_the_binary(monkeypatch) -> None:
    monkeypatch.setattr(targets.shutil, "which", lambda name: None)
    assert targets.nginx_peer().skip_reason() == "nginx is not installed (apt-get install -y nginx-light)"


def test_peers_are_the_references_and_names_are_unique() -> None:
    http = targets.http_targets()
    assert len({target.name for target in http}) == len(http)
    assert [target.name for target in http if target.reference] == [targets.raw_http().name]
    assert targets.echo_peer().reference and not targets.echo_tap().reference


def test_selection_by_name_fragment() -> None:
    chosen = common.selected(targets.http_targets(), ["nginx", "AIOHTTP"])
    assert [target.name for target in chosen] == ["aiohttp (veth)", "nginx (veth)"]
    everything = targets.http_targets()
    assert common.selected(everything, None) == everything


# -- peers ------------------------------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def test_raw_http_answers_pipelined_requests_in_order() -> None:
    protocol = peers.RawHttp()
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\n")
    protocol.data_received(b"Host: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert transport.written == [peers.RAW_OK, peers.RAW_NOT_FOUND, peers.RAW_OK]
    assert transport.closed
    assert peers.RAW_OK.endswith(b"\r\n\r\nNext train to Chennai Central: 14:20.")
    assert b"Content-Length: 37\r\n" in peers.RAW_OK


class _Socket:
    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = value


class _TcpTransport(_Transport):
    def __init__(self) -> None:
        super().__init__()
        self.socket = _Socket()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.socket if name == "socket" else default


def test_raw_echo_peer_sets_nodelay_and_echoes() -> None:
    protocol = peers.TcpEcho()
    transport = _TcpTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    assert transport.socket.options == {(socket.IPPROTO_TCP, socket.TCP_NODELAY): 1}
    protocol.data_received(b"x" * 64)
    assert transport.written == [b"x" * 64]


def test_nginx_configuration_serves_the_same_bytes(tmp_path) -> None:
    text = peers.nginx_config(tmp_path, "10.0.1.2", 8080).read_text()
    assert 'return 200 "Next train to Chennai Central: 14:20.";' in text
    assert "listen 10.0.1.2:8080;" in text
    assert "keepalive_requests 1000000;" in text
    assert "daemon off;" in text


def test_benchmarks_refuse_bad_rounds_and_print_help() -> None:
    with pytest.raises(SystemExit):
        common.resolve_rounds(argparse.Namespace(rounds=0, quick=False, default_rounds=3))
    assert common.resolve_rounds(argparse.Namespace(rounds=None, quick=True, default_rounds=5)) == 2
    done = subprocess.run([sys.executable, "-m", "benchmarks.latency", "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "--quick" in done.stdout


@pytest.mark.parametrize(("module", "option"), [("ping", "--tcp-count"), ("throughput", "--bulk-rounds")])
def test_benchmark_options_for_tcp(module: str, option: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0 and option in done.stdout
