"""The measuring clients, and parsers for the output of the tools we drive.

The clients run *inside* a benchmark's client namespace, as
``python -m benchmarks.clients COMMAND ...`` (``topology.run_client``), and
print one JSON line with their samples. They are deliberately small and
identical for every target: a blocking kernel socket, one request at a
time, ``time.perf_counter_ns`` around each exchange. Whatever they cost is
the same constant for every target, so the ratios stay honest.

Every loop is bounded twice, by a count and by a deadline, and every
receive has a timeout: a target that stops answering ends the run with
what was measured instead of hanging it.

Commands::

    udp-rtt         sequential UDP request/replies (64-byte payload)
    tcp-rtt         sequential 64-byte echoes on one open TCP connection (TCP_NODELAY)
    http-keepalive  sequential GET / on one open TCP connection
    curl-loop       one fresh `curl` per sample: connect, GET /, response, close
    boot-poll       ICMP, UDP and HTTP probes every millisecond until first answers
    tcp-bulk        send to a discard port or receive from a source port

The parsers (``parse_ping``, ``parse_wrk``, ``parse_curl_line``) are pure
functions, tested without a network.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time
from typing import Any

# -- parsers ----------------------------------------------------------------------------

_PING_TIME = re.compile(r"icmp_seq=(\d+).*?\btime[=<]\s*([\d.]+)\s*ms(.*)$")
_PING_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) received")

PING_RESOLUTION = (
    "iputils ping prints 3 decimals below 1 ms (1 µs resolution), 2 below 10 ms, 1 below 100 ms; "
    "it times the reply by the kernel's receive timestamp (SO_TIMESTAMP), so its own wake-up is excluded"
)


def parse_ping(output: str) -> dict[str, Any]:
    """Round-trip times in ms from iputils ``ping`` output, duplicates (``DUP!``) left out.

    Returns ``{"times_ms": [...], "transmitted": n, "received": n,
    "duplicates": n}``; counts are ``None`` without the summary line.
    """
    times: list[float] = []
    seen: set[int] = set()
    duplicates = 0
    for line in output.splitlines():
        match = _PING_TIME.search(line)
        if match is None:
            continue
        sequence = int(match.group(1))
        if "DUP!" in match.group(3) or sequence in seen:
            duplicates += 1
            continue
        seen.add(sequence)
        times.append(float(match.group(2)))
    summary = _PING_LOSS.search(output)
    return {
        "times_ms": times,
        "transmitted": int(summary.group(1)) if summary else None,
        "received": int(summary.group(2)) if summary else None,
        "duplicates": duplicates,
    }


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_WRK_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_WRK_RATE = re.compile(r"^Requests/sec:\s*([\d.]+)", re.MULTILINE)
_WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def parse_wrk(output: str) -> dict[str, Any]:
    """Requests/s, request count, latency percentiles (ms) and errors from ``wrk --latency``.

    Raises ``ValueError`` when the output has no ``Requests/sec`` line.
    """
    rate = _WRK_RATE.search(output)
    if rate is None:
        raise ValueError(f"no Requests/sec in wrk output: {output.strip()[-500:]!r}")
    latency = {f"p{match.group(1)}": float(match.group(2)) * _WRK_UNITS[match.group(3)]
               for match in _WRK_PERCENTILE.finditer(output)}
    requests = _WRK_REQUESTS.search(output)
    errors = _WRK_ERRORS.search(output)
    non_2xx = _WRK_NON_2XX.search(output)
    return {
        "requests_per_second": float(rate.group(1)),
        "requests": int(requests.group(1)) if requests else None,
        "latency_ms": latency,
        "socket_errors": sum(int(value) for value in errors.groups()) if errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def parse_curl_line(line: str) -> tuple[int, float]:
    """``"200 0.000812"`` (``-w '%{http_code} %{time_total}'``) -> (status, seconds)."""
    status, seconds = line.split()
    return int(status), float(seconds)


# -- clients ----------------------------------------------------------------------------


def udp_rtt(host: str, port: int, count: int, warmup: int, size: int, deadline: float) -> dict[str, Any]:
    """Sequential request/replies; a reply that is late or for another request counts as lost."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.settimeout(0.5)
    padding = os.urandom(max(0, size - 8))
    samples: list[int] = []
    lost = 0
    end = time.monotonic() + deadline
    for number in range(warmup + count):
        if time.monotonic() > end:
            break
        payload = number.to_bytes(8, "big") + padding
        started = time.perf_counter_ns()
        sock.send(payload)
        try:
            while True:
                reply = sock.recv(65536)
                if reply == payload:
                    break
        except (TimeoutError, ConnectionRefusedError):
            lost += number >= warmup
            continue
        elapsed = time.perf_counter_ns() - started
        if number >= warmup:
            samples.append(elapsed)
    sock.close()
    return {"samples_ns": samples, "lost": lost}


def read_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes from a stream socket; ``ConnectionError`` if it closes first."""
    first = sock.recv(size)
    if len(first) == size:  # the usual case: the whole echo in one segment
        return first
    if not first:
        raise ConnectionError("server closed the connection mid-run")
    data = bytearray(first)
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("server closed the connection mid-reply")
        data += chunk
    return bytes(data)


def tcp_echo_exchanges(sock: socket.socket, count: int, warmup: int, size: int, deadline: float) -> dict[str, Any]:
    """Sequential echoes of ``size`` bytes on the connected stream ``sock``; samples in ns.

    Each exchange sends one payload (a sequence number and random padding)
    and reads back exactly as many bytes, which must be the same bytes. TCP
    does not lose replies, so a timeout, a close or a wrong reply ends the
    run: the result carries what was measured so far and ``error``.
    """
    padding = os.urandom(max(0, size - 8))
    samples: list[int] = []
    error = None
    end = time.monotonic() + deadline
    for number in range(warmup + count):
        if time.monotonic() > end:
            error = f"deadline of {deadline:g} s reached after {number} exchanges"
            break
        payload = (number.to_bytes(8, "big") + padding)[:size]
        started = time.perf_counter_ns()
        try:
            sock.sendall(payload)
            reply = read_exactly(sock, len(payload))
        except (OSError, ConnectionError) as failure:  # TimeoutError is an OSError
            error = f"exchange {number}: {type(failure).__name__}: {failure}"
            break
        elapsed = time.perf_counter_ns() - started
        if reply != payload:
            error = f"exchange {number}: the reply differs from what was sent"
            break
        if number >= warmup:
            samples.append(elapsed)
    return {"samples_ns": samples, "error": error}


def tcp_rtt(host: str, port: int, count: int, warmup: int, size: int, deadline: float) -> dict[str, Any]:
    """Sequential echoes on one TCP connection opened before the warm-up, ``TCP_NODELAY`` set.

    The connection's handshake and slow start are outside the samples; what
    is timed is one small write and its echo, as an RPC client sees it.
    """
    sock = socket.create_connection((host, port), timeout=5)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(2)
        result = tcp_echo_exchanges(sock, count, warmup, size, deadline)
        result["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
    return result


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with ``Content-Length`` from ``sock``: (status, body).

    ``buffer`` carries bytes read past this response over to the next call.
    """
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-run")
        buffer += chunk
    head = bytes(buffer[:end]).decode("latin-1")
    length_match = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
    if length_match is None:
        raise ValueError(f"response without Content-Length: {head!r}")
    total = end + 4 + int(length_match.group(1))
    while len(buffer) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection mid-response")
        buffer += chunk
    body = bytes(buffer[end + 4:total])
    del buffer[:total]
    return int(head[9:12]), body


def http_get(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One ``GET`` on a fresh connection: (status, body). For checking what a target serves."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        return read_response(sock, bytearray())


def http_keepalive(host: str, port: int, count: int, warmup: int, deadline: float) -> dict[str, Any]:
    """Sequential ``GET /`` on one connection; fails loudly if the server closes it."""
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: netstack-bench\r\n\r\n".encode()
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray()
    samples: list[int] = []
    statuses: dict[int, int] = {}
    end = time.monotonic() + deadline
    for number in range(warmup + count):
        if time.monotonic() > end:
            break
        started = time.perf_counter_ns()
        sock.sendall(request)
        status, _ = read_response(sock, buffer)
        elapsed = time.perf_counter_ns() - started
        statuses[status] = statuses.get(status, 0) + 1
        if number >= warmup:
            samples.append(elapsed)
    sock.close()
    return {"samples_ns": samples, "statuses": statuses}


def curl_loop(url: str, count: int, deadline: float) -> dict[str, Any]:
    """One ``curl`` process per sample; ``time_total`` as the user sees it."""
    samples: list[float] = []
    failures: list[str] = []
    end = time.monotonic() + deadline
    for _ in range(count):
        if time.monotonic() > end:
            break
        done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "5",
                               "-w", "%{http_code} %{time_total}\\n", url],
                              capture_output=True, text=True, timeout=10)
        try:
            status, seconds = parse_curl_line(done.stdout)
        except ValueError:
            failures.append((done.stderr or done.stdout).strip()[:200])
            continue
        if done.returncode != 0 or status != 200:
            failures.append(f"status {status}, exit {done.returncode}")
            continue
        samples.append(seconds)
    return {"samples_s": samples, "failures": failures}


def _icmp_echo(identifier: int, sequence: int) -> bytes:
    header = struct.pack("!BBHHH", 8, 0, 0, identifier, sequence)
    payload = b"netstack-boot-poll"
    total = 0
    data = header + payload
    for index in range(0, len(data), 2):
        total += (data[index] << 8) + (data[index + 1] if index + 1 < len(data) else 0)
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return struct.pack("!BBHHH", 8, 0, ~total & 0xFFFF, identifier, sequence) + payload


BOOT_HTTP_ATTEMPTS = 8
"""Most TCP connection attempts a boot poller keeps open at once."""
BOOT_HTTP_ATTEMPT_SECONDS = 0.2
"""How long one attempt may wait for its connection before it is dropped for a fresh one."""
BOOT_HTTP_RESPONSE_SECONDS = 5.0
"""How long a connected attempt may wait for its response."""


class _HttpAttempt:
    """One non-blocking connection of the boot poller: connect, send ``GET /``, read the response."""

    def __init__(self, host: str, port: int) -> None:
        self.request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        self.started = time.monotonic()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.connected = False
        self.buffer = bytearray()
        code = self.sock.connect_ex((host, port))
        if code == 0:
            self._on_connected()
        elif code != errno.EINPROGRESS:
            raise OSError(code, os.strerror(code))  # no route yet (no tap), refused, ...

    def _on_connected(self) -> None:
        self.connected = True
        self.sock.send(self.request)  # a few dozen bytes into an empty send buffer

    def writable(self) -> None:
        """The connect finished: fail with its error, or send the request."""
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            raise OSError(code, os.strerror(code))
        self._on_connected()

    def readable(self) -> bool:
        """Read what arrived; ``True`` once a whole ``200`` response is in, ``OSError`` on anything else."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a whole response")
        self.buffer += chunk
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1")
        if not head.startswith("HTTP/1.1 200"):
            raise ConnectionError(f"answered {head.splitlines()[0]!r}")
        length = re.search(r"(?im)^content-length:\s*(\d+)\s*$", head)
        return length is None or len(self.buffer) >= end + 4 + int(length.group(1))

    def close(self) -> None:
        self.sock.close()


def boot_poll(host: str, udp_port: int, icmp: bool, timeout: float, http_port: int = 0) -> dict[str, Any]:
    """Probe every millisecond until each probe kind is answered once; monotonic times.

    Kinds: UDP echo on ``udp_port`` (0: none), ICMP echo (``icmp``) and a
    whole ``GET /`` answered ``200`` on ``http_port`` (0: none). HTTP is
    probed with up to ``BOOT_HTTP_ATTEMPTS`` non-blocking connections at a
    time, a new one every millisecond while there is room; one that gets
    no answer within ``BOOT_HTTP_ATTEMPT_SECONDS`` (its SYN went to a
    guest that was not reading yet) is dropped for a fresh one, so the
    kernel's 1 s SYN retransmission never decides the figure; a connected
    one waits up to ``BOOT_HTTP_RESPONSE_SECONDS`` for its response.
    ``http_ns`` is when the first whole response arrived.

    Prints ``polling`` first so that the benchmark starts the server only
    once this process is ready. Send errors (no route before the tap
    exists, port unreachable or connection refused before the server binds)
    are expected and ignored; ``CLOCK_MONOTONIC`` is shared by every
    process, so the benchmark subtracts its own start time.
    """
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if udp_port else None
    if udp is not None:
        udp.setblocking(False)
    icmp_socket = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) if icmp else None
    if icmp_socket is not None:
        icmp_socket.setblocking(False)
    identifier = os.getpid() & 0xFFFF
    answered: dict[str, int | None] = {"udp_ns": None, "icmp_ns": None, "http_ns": None}
    wanted = {key for key, on in (("udp_ns", udp_port), ("icmp_ns", icmp), ("http_ns", http_port)) if on}
    attempts: list[_HttpAttempt] = []
    print("polling", flush=True)
    end = time.monotonic() + timeout
    sequence = 0
    try:
        while time.monotonic() < end and any(answered[key] is None for key in wanted):
            sequence = (sequence + 1) & 0xFFFF
            try:
                if udp is not None and answered["udp_ns"] is None:
                    udp.sendto(b"boot-poll", (host, udp_port))
            except OSError:
                pass
            try:
                if icmp_socket is not None and answered["icmp_ns"] is None:
                    icmp_socket.sendto(_icmp_echo(identifier, sequence), (host, 0))
            except OSError:
                pass
            if http_port and answered["http_ns"] is None:
                now_s = time.monotonic()
                for attempt in [a for a in attempts if now_s - a.started > (
                        BOOT_HTTP_RESPONSE_SECONDS if a.connected else BOOT_HTTP_ATTEMPT_SECONDS)]:
                    attempt.close()
                    attempts.remove(attempt)
                if len(attempts) < BOOT_HTTP_ATTEMPTS:
                    try:
                        attempts.append(_HttpAttempt(host, http_port))
                    except OSError:
                        pass
            readers: list[Any] = [sock for sock in (udp, icmp_socket) if sock is not None]
            readers += [attempt.sock for attempt in attempts if attempt.connected]
            writers = [attempt.sock for attempt in attempts if not attempt.connected]
            readable, writable, _ = select.select(readers, writers, [], 0.001)
            now = time.monotonic_ns()
            for attempt in list(attempts):
                try:
                    if attempt.sock in writable:
                        attempt.writable()
                    elif attempt.sock in readable and attempt.readable() and answered["http_ns"] is None:
                        answered["http_ns"] = now
                        attempt.close()
                        attempts.remove(attempt)
                except OSError:
                    attempt.close()
                    attempts.remove(attempt)
            for sock in readable:
                if sock is not udp and sock is not icmp_socket:
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    continue
                if sock is udp and data == b"boot-poll" and answered["udp_ns"] is None:
                    answered["udp_ns"] = now
                elif sock is icmp_socket and answered["icmp_ns"] is None:
                    offset = (data[0] & 0x0F) * 4
                    if len(data) >= offset + 8 and data[offset] == 0:
                        if struct.unpack_from("!H", data, offset + 4)[0] == identifier:
                            answered["icmp_ns"] = now
    finally:
        for attempt in attempts:
            attempt.close()
    return answered


def tcp_bulk(host: str, port: int, direction: str, limit_bytes: int, deadline: float) -> dict[str, Any]:
    """Send ``limit_bytes`` to a discard port, or receive them from a source port.

    Sending ends with our FIN and waits for the server's (the discard
    server closes after it read everything), so the time covers delivery,
    not just our socket buffer filling.
    """
    sock = socket.create_connection((host, port), timeout=5)
    sock.settimeout(5)
    block = bytes(65536)
    moved = 0
    started = time.perf_counter_ns()
    end = time.monotonic() + deadline
    if direction == "send":
        while moved < limit_bytes and time.monotonic() < end:
            sock.sendall(block)
            moved += len(block)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    else:
        buffer = bytearray(262144)
        while moved < limit_bytes and time.monotonic() < end:
            received = sock.recv_into(buffer)
            if not received:
                break
            moved += received
    elapsed = time.perf_counter_ns() - started
    sock.close()
    return {"bytes": moved, "seconds": elapsed / 1e9}


# -- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients")
    commands = parser.add_subparsers(dest="command", required=True)
    udp = commands.add_parser("udp-rtt")
    tcp = commands.add_parser("tcp-rtt")
    keepalive = commands.add_parser("http-keepalive")
    for sub in (udp, tcp, keepalive):
        sub.add_argument("--host", required=True)
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--count", type=int, default=5000)
        sub.add_argument("--warmup", type=int, default=200)
        sub.add_argument("--deadline", type=float, default=60.0)
    udp.add_argument("--size", type=int, default=64)
    tcp.add_argument("--size", type=int, default=64)
    curl = commands.add_parser("curl-loop")
    curl.add_argument("--url", required=True)
    curl.add_argument("--count", type=int, default=200)
    curl.add_argument("--deadline", type=float, default=120.0)
    poll = commands.add_parser("boot-poll")
    poll.add_argument("--host", required=True)
    poll.add_argument("--udp-port", type=int, default=7, help="UDP echo port to probe (0: none)")
    poll.add_argument("--http-port", type=int, default=0, help="HTTP port to probe with GET / (0: none)")
    poll.add_argument("--icmp", action="store_true")
    poll.add_argument("--timeout", type=float, default=20.0)
    bulk = commands.add_parser("tcp-bulk")
    bulk.add_argument("--host", required=True)
    bulk.add_argument("--port", type=int, required=True)
    bulk.add_argument("--direction", choices=["send", "receive"], required=True)
    bulk.add_argument("--bytes", type=int, default=256 * 2**20)
    bulk.add_argument("--deadline", type=float, default=10.0)
    arguments = parser.parse_args(argv)
    if arguments.command == "udp-rtt":
        result = udp_rtt(arguments.host, arguments.port, arguments.count, arguments.warmup, arguments.size,
                         arguments.deadline)
    elif arguments.command == "tcp-rtt":
        result = tcp_rtt(arguments.host, arguments.port, arguments.count, arguments.warmup, arguments.size,
                         arguments.deadline)
    elif arguments.command == "http-keepalive":
        result = http_keepalive(arguments.host, arguments.port, arguments.count, arguments.warmup,
                                arguments.deadline)
    elif arguments.command == "curl-loop":
        result = curl_loop(arguments.url, arguments.count, arguments.deadline)
    elif arguments.command == "boot-poll":
        result = boot_poll(arguments.host, arguments.udp_port, arguments.icmp, arguments.timeout,
                           arguments.http_port)
    else:
        result = tcp_bulk(arguments.host, arguments.port, arguments.direction, arguments.bytes,
                          arguments.deadline)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
