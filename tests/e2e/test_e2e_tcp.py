"""TCP against the Linux kernel on the other side of the tap, in a namespace.

Server role: ``python -m services.echo`` runs in a fresh namespace and kernel
socket clients (Python scripts run with ``ip netns exec``) talk to it.
Client role: a ``Stack`` in this test process, on a tap opened inside the
namespace, talks to a kernel socket server running there.

Faults: nftables ``netdev`` chains on the tap drop, duplicate and corrupt
frames on the kernel's side (this kernel has no netem), and the stack's own
fault injector reorders and corrupts frames it receives.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from netstack.clock import ManualClock
from netstack.tcp.connection import SECOND, TcpConfig
from netstack.tcp.layer import TcpLayerConfig
from netstack.tcp.states import State
from netstack.stack import Stack
from platforms.host.netns import Namespace, TapNamespace

ECHO = ["-m", "services.echo", "--platform", "unix", "--interface", "tap0",
        "--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"]

# A kernel client that streams SIZE pseudo-random bytes to PORT and reads the
# echo back at the same time, then prints both SHA-256 digests.
ECHO_CLIENT = textwrap.dedent(
    """
    import hashlib, random, socket, sys, threading
    host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sock = socket.create_connection((host, port), timeout=30)
    sent = hashlib.sha256()
    rng = random.Random(size)
    def send():
        left = size
        while left:
            chunk = rng.randbytes(min(left, 1 << 16))
            sent.update(chunk)
            sock.sendall(chunk)
            left -= len(chunk)
        sock.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=send)
    thread.start()
    got = hashlib.sha256()
    total = 0
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        got.update(data)
        total += len(data)
    thread.join()
    print(total, sent.hexdigest(), got.hexdigest())
    """
)

# A kernel echo server for the client-role tests: echoes every connection,
# one at a time, until killed.
KERNEL_ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("10.0.0.1", int(sys.argv[1])))
    server.listen(128)
    print("kernel server ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 20):
                conn.sendall(data)
    """
)

NFT_FAULTS = """
table netdev faults {
  chain ingress { type filter hook ingress device "tap0" priority 0; policy accept;
    numgen random mod 100 < 2 counter drop
    ip saddr 10.0.0.2 ip protocol tcp numgen random mod 200 < 1 counter @th,352,8 set 0x55
  }
  chain egress { type filter hook egress device "tap0" priority 0; policy accept;
    numgen random mod 100 < 2 counter drop
    numgen random mod 100 < 1 counter dup to "tap0"
  }
}
"""


def run_echo_client(netns: Namespace, size: int, *, port: int = 7, timeout: float = 240) -> None:
    result = netns.run([sys.executable, "-c", ECHO_CLIENT, "10.0.0.2", str(port), str(size)], check=False,
                       capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    total, sent, got = result.stdout.split()
    assert int(total) == size
    assert sent == got, "SHA-256 of what came back differs from what was sent"


def test_100_mb_each_way_through_the_echo_service(netns: Namespace) -> None:
    netns.start_service(ECHO, ready="echo ready", timeout=15)
    run_echo_client(netns, 100_000_000)


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) is not installed")
def test_20_mb_each_way_under_faults_on_both_sides_of_the_tap(netns: Namespace) -> None:
    service = netns.start_service(
        [*ECHO, "--faults", "reorder=10%,corrupt=0.5%,direction=rx,seed=7"], ready="echo ready", timeout=15
    )
    netns.run(["nft", "-f", "-"], input=NFT_FAULTS, text=True)
    run_echo_client(netns, 20_000_000, timeout=400)
    listing = netns.run(["nft", "list", "table", "netdev", "faults"], capture_output=True, text=True).stdout
    packets = [int(n) for n in re.findall(r"counter packets (\d+)", listing)]
    assert len(packets) == 4 and all(n > 0 for n in packets), listing  # every fault happened
    checksum_errors = netns.run(["nstat", "-az", "TcpInCsumErrors"], capture_output=True, text=True).stdout
    assert re.search(r"TcpInCsumErrors\s+[1-9]", checksum_errors), checksum_errors  # the kernel caught our mangling
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=15) == 0
    service.drain_thread.join(5)
    summary = next(line for line in service.lines if "counters:" in line)
    counters = dict(item.split("=") for item in summary.split("counters: ", 1)[1].split())
    for key in ("netif.faults_reordered", "netif.faults_corrupted", "tcp.retransmitted_segments"):
        assert int(counters.get(key, 0)) > 0, (key, summary)


def test_2000_sequential_connections_to_the_echo_service(netns: Namespace) -> None:
    netns.start_service(ECHO, ready="echo ready", timeout=15)
    script = textwrap.dedent(
        """
        import socket
        for i in range(2000):
            s = socket.create_connection(("10.0.0.2", 7), timeout=10)
            message = b"connection %d" % i
            s.sendall(message)
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(100):
                data += chunk
            assert data == message, (i, data)
            s.close()
        print("ok")
        """
    )
    result = netns.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def start_kernel_server(netns: Namespace, port: int) -> subprocess.Popen:
    process = netns.popen([sys.executable, "-u", "-c", KERNEL_ECHO_SERVER, str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()
    assert "kernel server ready" in line, line
    return process


def test_client_role_100_mb_each_way_to_a_kernel_server(tap_netns: TapNamespace) -> None:
    start_kernel_server(tap_netns.namespace, 5001)

    async def main() -> None:
        from netstack.clock import LoopClock

        stack = Stack(tap_netns.netif, LoopClock(), ipv4="10.0.0.2/24", gateway="10.0.0.1")
        stack.start()
        reader, writer = await stack.open_connection("10.0.0.1", 5001)
        size = 100_000_000
        sent = hashlib.sha256()

        async def send() -> None:
            block = bytes(range(256)) * 256
            for i, offset in enumerate(range(0, size, len(block))):
                chunk = (block[i % 256 :] + block[: i % 256])[: size - offset]
                sent.update(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        task = asyncio.create_task(send())
        got = hashlib.sha256()
        total = 0
        while data := await reader.read(1 << 20):
            got.update(data)
            total += len(data)
        await task
        assert total == size and got.hexdigest() == sent.hexdigest()
        writer.close()
        stack.close()

    asyncio.run(asyncio.wait_for(main(), 240))


def test_client_role_2000_connections_leave_no_state_after_time_wait(tap_netns: TapNamespace) -> None:
    start_kernel_server(tap_netns.namespace, 5002)
    clock = ManualClock()
    time_wait = 30 * SECOND
    config = TcpLayerConfig(connection=TcpConfig(time_wait_ns=time_wait))

    async def main() -> None:
        stack = Stack(tap_netns.netif, clock, ipv4="10.0.0.2/24", gateway="10.0.0.1", tcp_config=config)
        stack.start()
        for i in range(2000):
            reader, writer = await stack.open_connection("10.0.0.1", 5002)
            message = b"connection %d" % i
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
            writer.close()  # we close first, so we hold TIME-WAIT
            await reader.read()  # the kernel's FIN
            await writer.wait_closed()
        # Virtual time has not moved: every connection waits in TIME-WAIT.
        waiting = [c for c in stack.tcp.connections.values() if c.state == State.TIME_WAIT]
        assert len(waiting) >= 1990, len(waiting)
        clock.advance(time_wait)
        await asyncio.sleep(0)
        assert stack.tcp.connections == {}
        assert stack.tcp.poll_at() is None
        stack.close()

    asyncio.run(asyncio.wait_for(main(), 240))
