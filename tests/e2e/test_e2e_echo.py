"""The echo service against the Linux kernel on the other side of its tap.

Every test runs ``python -m services.echo`` as a subprocess inside a fresh
network namespace (the ``netns`` fixture), and every client -- ``ping``, a
kernel UDP socket, ``ip neigh``, ``tshark`` -- inside the same namespace.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from platforms.host.netns import REPOSITORY, Namespace

ECHO = ["-m", "services.echo", "--platform", "unix", "--interface", "tap0",
        "--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"]
READY = "echo ready"


def start_echo(netns: Namespace, *extra: str):
    return netns.start_service([*ECHO, *extra], ready=READY, timeout=15)


def ping(netns: Namespace, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return netns.run(["ping", "-n", *args, "10.0.0.2"], check=False, timeout=timeout,
                     capture_output=True, text=True)


def loss(output: str) -> float:
    match = re.search(r"([\d.]+)% packet loss", output)
    assert match, output
    return float(match.group(1))


needs_ping = pytest.mark.skipif(shutil.which("ping") is None, reason="ping (iputils-ping) is not installed")


@needs_ping
def test_two_hundred_fast_pings_all_answered(netns: Namespace) -> None:
    start_echo(netns)
    result = ping(netns, "-c", "200", "-i", "0.01", "-W", "2")
    assert loss(result.stdout) == 0.0, result.stdout + result.stderr
    assert "200 received" in result.stdout


@needs_ping
def test_fragmented_ping_both_ways(netns: Namespace) -> None:
    service = start_echo(netns)
    result = ping(netns, "-c", "3", "-s", "4000", "-i", "0.2", "-W", "2")
    assert loss(result.stdout) == 0.0, result.stdout + result.stderr
    assert "4008 bytes from 10.0.0.2" in result.stdout
    assert service.poll() is None


@needs_ping
def test_kernel_arp_cache_learns_our_mac(netns: Namespace) -> None:
    service = start_echo(netns)
    ping(netns, "-c", "1", "-W", "2")
    mac = re.search(r"on ([0-9a-f:]{17})", "\n".join(service.lines))
    neighbours = netns.run(["ip", "neigh", "show", "10.0.0.2", "dev", "tap0"], capture_output=True, text=True).stdout
    assert "lladdr" in neighbours, neighbours
    assert mac is not None and mac.group(1) in neighbours, (neighbours, service.lines)


UDP_CLIENT = textwrap.dedent(
    """
    import os, socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    for size in (0, 1, 100, 1472, 1473, 4000, 8000):
        payload = os.urandom(size)
        for attempt in range(3):
            sock.sendto(payload, ("10.0.0.2", 7))
            try:
                data, peer = sock.recvfrom(65535)
                break
            except socket.timeout:
                continue
        else:
            sys.exit(f"no echo for {size} bytes")
        if data != payload or peer != ("10.0.0.2", 7):
            sys.exit(f"bad echo for {size} bytes from {peer}")
    print("udp echo ok")
    """
)


def test_udp_echo_from_a_kernel_socket(netns: Namespace) -> None:
    start_echo(netns)
    result = netns.run([sys.executable, "-c", UDP_CLIENT], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "udp echo ok" in result.stdout, result.stdout + result.stderr


CLOSED_PORT_CLIENT = textwrap.dedent(
    """
    import socket
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect(("10.0.0.2", 9))
    sock.send(b"anyone?")
    try:
        sock.recv(100)
    except ConnectionRefusedError:
        print("refused")
    """
)


def test_closed_udp_port_is_refused_by_icmp(netns: Namespace) -> None:
    start_echo(netns)
    result = netns.run([sys.executable, "-c", CLOSED_PORT_CLIENT], check=False, capture_output=True, text=True, timeout=30)
    assert "refused" in result.stdout, result.stdout + result.stderr


@needs_ping
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_pcap_is_read_by_tshark_without_malformed_packets(netns: Namespace, tmp_path) -> None:
    capture = tmp_path / "echo.pcap"
    service = start_echo(netns, "--pcap", str(capture))
    ping(netns, "-c", "3", "-i", "0.05", "-W", "2")
    ping(netns, "-c", "2", "-s", "4000", "-i", "0.1", "-W", "2")
    netns.run([sys.executable, "-c", UDP_CLIENT], check=False, capture_output=True, timeout=60)
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=10) == 0
    result = subprocess.run(["tshark", "-n", "-r", str(capture)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("Echo (ping) reply" in line for line in lines), result.stdout
    assert any("ARP" in line and "is at" in line for line in lines), result.stdout
    assert any("UDP" in line or "Echo" in line for line in lines)
    assert not [line for line in lines if "Malformed" in line or "malformed" in line], result.stdout
    assert "Malformed" not in result.stderr


def test_sigterm_exits_zero_and_removes_the_tap_it_created(netns: Namespace) -> None:
    service = start_echo(netns)
    assert "tap0" in netns.run(["ip", "link", "show"], capture_output=True, text=True).stdout
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=10) == 0
    assert "tap0" not in netns.run(["ip", "link", "show"], capture_output=True, text=True).stdout


def test_sigint_exits_zero(netns: Namespace) -> None:
    service = start_echo(netns)
    service.send_signal(signal.SIGINT)
    assert service.wait(timeout=10) == 0


def test_existing_tap_is_left_as_it_was(netns: Namespace) -> None:
    netns.run(["ip", "tuntap", "add", "dev", "tap0", "mode", "tap"])
    netns.run(["ip", "address", "add", "10.0.0.1/24", "dev", "tap0"])
    netns.run(["ip", "link", "set", "tap0", "up"])
    service = start_echo(netns)
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=10) == 0
    shown = netns.run(["ip", "address", "show", "tap0"], capture_output=True, text=True).stdout
    assert "10.0.0.1/24" in shown


def test_missing_privileges_give_one_line_and_exit_1(netns: Namespace) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    # Root without CAP_NET_ADMIN: what an unprivileged user gets from TUNSETIFF.
    result = netns.run([setpriv, "--bounding-set=-net_admin", sys.executable, *ECHO], check=False,
                       capture_output=True, text=True, timeout=30, cwd=str(REPOSITORY))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argument",
    ["--ipv4=10.0.0.2", "--ipv4=300.0.0.2/24", "--ipv4-gateway=10.9.9.9", "--faults=drop=200%", "--logs=*:loud",
     "--platform=nowhere", "--bogus"],
)
def test_bad_arguments_exit_64_with_a_usage_line(argument: str) -> None:
    result = subprocess.run([sys.executable, *ECHO, argument], capture_output=True, text=True, timeout=30,
                            cwd=str(REPOSITORY))
    assert result.returncode == 64, result.stderr
    assert result.stderr.startswith("usage: python -m services.echo")
    assert "error:" in result.stderr
