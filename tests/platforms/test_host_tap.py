"""The unix platform against the real kernel: taps, ARP through them, run().

Everything that opens a tap does so inside a namespace of its own (the
``netns`` / ``tap_netns`` fixtures); the kernel on the far side of the tap is
the namespace's own stack. These are real-I/O tests: waits are bounded by
``asyncio.wait_for`` with a couple of seconds, never by sleeping.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import platforms.unix as unix
from platforms.host.netns import REPOSITORY, Namespace, TapNamespace
from netstack.protocols import LargeFrame, Netif, Offload, PlatformError
from platforms.host.tap import MAX_OFFLOAD_SEGMENT, TapNetif

BROADCAST = b"\xff" * 6
ETHERTYPE_ARP = b"\x08\x06"


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """An Ethernet broadcast ARP request: who has target_ip? tell sender_ip."""
    return (
        BROADCAST + sender_mac + ETHERTYPE_ARP
        + b"\x00\x01\x08\x00\x06\x04\x00\x01"  # Ethernet/IPv4, hlen 6, plen 4, op request
        + sender_mac + socket.inet_aton(sender_ip)
        + b"\x00" * 6 + socket.inet_aton(target_ip)
    )


def arp_reply_from(frame: bytes, ip: str) -> bytes | None:
    """The sender MAC if ``frame`` is an ARP reply for ``ip``, else ``None``."""
    frame = bytes(frame)
    if len(frame) < 42 or frame[12:14] != ETHERTYPE_ARP or frame[20:22] != b"\x00\x02":
        return None
    if frame[28:32] != socket.inet_aton(ip):
        return None
    return frame[22:28]


async def resolve(netif: TapNetif, replies: asyncio.Queue[bytes], stack_ip: str, host_ip: str) -> bytes:
    """Ask the kernel for host_ip's MAC; return the MAC its ARP reply carries."""
    netif.write(arp_request(netif.mac, stack_ip, host_ip))
    while True:
        frame = await asyncio.wait_for(replies.get(), timeout=2.0)
        sender = arp_reply_from(frame, host_ip)
        if sender is not None:
            return sender


def link(namespace: Namespace, name: str) -> dict | None:
    """``ip -j addr show dev name`` inside the namespace, or ``None`` if absent."""
    result = namespace.run(["ip", "-j", "addr", "show", "dev", name], check=False)
    if result.returncode != 0:
        return None
    (info,) = json.loads(result.stdout)
    return info


def wait_gone(namespace: Namespace, name: str, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while link(namespace, name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def ipv4_addresses(info: dict) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", []) if a["family"] == "inet"]


# -- opening and closing ---------------------------------------------------------


def test_without_offload_frames_are_plain_and_mtu_sized(netns: Namespace) -> None:
    with netns.enter():
        netif = TapNetif("nstap0", host_address="10.0.0.1/24", offload=False)
    try:
        assert netif.offload == Offload(max_tx_segment=1500, max_rx_segment=1500)
        with pytest.raises(ValueError):
            netif.write(LargeFrame(3000, 1448))
    finally:
        netif.close()


def test_opening_a_missing_tap_creates_it_up_with_the_host_address(netns: Namespace) -> None:
    with netns.enter():
        netif = TapNetif("nstap0", host_address="10.0.0.1/24")
    try:
        assert isinstance(netif, Netif)
        assert netif.created and netif.name == "nstap0"
        info = link(netns, "nstap0")
        assert info is not None
        assert "UP" in info["flags"]
        assert ipv4_addresses(info) == ["10.0.0.1/24"]
        assert netif.mtu == info["mtu"] == 1500
        assert netif.host_mac == bytes.fromhex(info["address"].replace(":", ""))
        assert netif.mac != netif.host_mac
        assert netif.mac[0] & 0x03 == 0x02  # locally administered, unicast
        # Segmentation and checksum offload through IFF_VNET_HDR by default.
        assert netif.offload == Offload(rx_checksum=True, max_tx_segment=MAX_OFFLOAD_SEGMENT, max_rx_segment=65535)
        assert netif.stats == dict.fromkeys(["rx_frames", "tx_frames", "rx_bytes", "tx_bytes", "tx_dropped"], 0)
    finally:
        netif.close()
    assert wait_gone(netns, "nstap0")
    netif.close()  # idempotent
    with pytest.raises(OSError):
        netif.write(arp_request(netif.mac, "10.0.0.2", "10.0.0.1"))


def test_an_existing_tap_is_used_as_it_is_and_left_behind(netns: Namespace) -> None:
    netns.run(["ip", "tuntap", "add", "dev", "nstap1", "mode", "tap"])
    netns.run(["ip", "link", "set", "dev", "nstap1", "mtu", "1400"])
    before = link(netns, "nstap1")
    with netns.enter():
        netif = TapNetif("nstap1", host_address="10.0.0.1/24", mac="02:00:00:00:00:02")
    try:
        assert not netif.created
        assert netif.mtu == 1400
        assert netif.offload.max_tx_segment == MAX_OFFLOAD_SEGMENT  # segments are cut to the MTU by the kernel
        assert netif.mac == bytes.fromhex("020000000002")
        during = link(netns, "nstap1")
        assert during is not None and "UP" not in during["flags"] and ipv4_addresses(during) == []
        with pytest.raises(ValueError):
            netif.write(b"\x00" * (1400 + 14 + 1))
    finally:
        netif.close()
    assert link(netns, "nstap1") == before


def test_a_tap_open_elsewhere_is_busy(netns: Namespace) -> None:
    with netns.enter():
        first = TapNetif("nstap2")
        try:
            with pytest.raises(PlatformError, match="busy") as raised:
                TapNetif("nstap2")
        finally:
            first.close()
    assert "\n" not in str(raised.value)


def test_kernel_generated_names_are_resolved(netns: Namespace) -> None:
    with netns.enter():
        netif = TapNetif("nstap%d", host_address=None)
    try:
        assert netif.name == "nstap0"
        info = link(netns, netif.name)
        assert info is not None and ipv4_addresses(info) == []
    finally:
        netif.close()


def test_a_missing_tun_device_names_modprobe() -> None:
    with pytest.raises(PlatformError) as raised:
        TapNetif("nstap9", device="/nonexistent/net/tun")
    message = str(raised.value)
    assert "\n" not in message
    assert "/nonexistent/net/tun" in message and "modprobe tun" in message


def test_without_privilege_the_error_says_run_as_root(netns: Namespace) -> None:
    # Drop to nobody inside a child (python itself lives under /root, which
    # nobody cannot read, so the interpreter starts as root and drops).
    code = textwrap.dedent(
        """
        import os
        from platforms.host.tap import TapNetif
        from netstack.protocols import PlatformError
        os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
        try:
            TapNetif("nstap3")
        except PlatformError as error:
            print(error)
        """
    )
    result = netns.run([sys.executable, "-c", code], cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.stdout.count("\n") == 1
    assert "permission denied; run as root (or grant CAP_NET_ADMIN)" in result.stdout
    assert link(netns, "nstap3") is None


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "02:00:00:00:00", b"\x02\x00"])
def test_bad_macs_are_refused_before_anything_is_opened(mac: str | bytes) -> None:
    with pytest.raises(ValueError):
        TapNetif("nstap9", mac=mac, device="/nonexistent/net/tun")


# -- frames through the kernel ---------------------------------------------------


@pytest.mark.asyncio
async def test_the_kernel_answers_our_arp_request(tap_netns: TapNamespace) -> None:
    netif = tap_netns.netif
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    netif.listen(lambda batch: [replies.put_nowait(bytes(frame)) for frame in batch])

    sender = await resolve(netif, replies, tap_netns.stack_address, tap_netns.host_address)

    assert sender == netif.host_mac
    stats = netif.stats
    assert stats["tx_frames"] == 1 and stats["tx_bytes"] == 42 and stats["tx_dropped"] == 0
    assert stats["rx_frames"] >= 1 and stats["rx_bytes"] >= 42
    # The kernel learnt our MAC from the request.
    neighbours = tap_netns.namespace.run(["ip", "-j", "neigh", "show", "dev", tap_netns.tap_name]).stdout
    assert any(
        entry["dst"] == tap_netns.stack_address and entry.get("lladdr") == netif.mac.hex(":")
        for entry in json.loads(neighbours)
    )


@pytest.mark.asyncio
async def test_a_raising_receiver_is_reported_and_delivery_goes_on(tap_netns: TapNamespace) -> None:
    netif = tap_netns.netif
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    replies: asyncio.Queue[bytes] = asyncio.Queue()
    calls = 0

    def receive(batch) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("receiver bug")
        for frame in batch:
            replies.put_nowait(bytes(frame))

    netif.listen(receive)
    with pytest.raises(RuntimeError):
        netif.listen(receive)
    netif.write(arp_request(netif.mac, tap_netns.stack_address, tap_netns.host_address))
    async with asyncio.timeout(2.0):
        while not reported:
            await asyncio.sleep(0.01)
    assert isinstance(reported[0]["exception"], RuntimeError)
    assert await resolve(netif, replies, tap_netns.stack_address, tap_netns.host_address) == netif.host_mac


def test_frame_sizes_are_checked(tap_netns: TapNamespace) -> None:
    netif = tap_netns.netif
    with pytest.raises(ValueError):
        netif.write(bytes(netif.mtu + 14 + 1))
    with pytest.raises(ValueError):
        netif.write(bytes(13))
    largest = netif.mac + netif.mac + b"\x88\xb5" + bytes(netif.mtu)  # local experimental ethertype
    netif.write(memoryview(largest))
    assert netif.stats["tx_frames"] == 1 and netif.stats["tx_bytes"] == netif.mtu + 14


def test_listen_needs_a_running_loop(tap_netns: TapNamespace) -> None:
    with pytest.raises(RuntimeError, match="running event loop"):
        tap_netns.netif.listen(lambda batch: None)


# -- the platform module ---------------------------------------------------------


def test_run_returns_the_result_of_main() -> None:
    async def main() -> int:
        await asyncio.sleep(0)
        return 42

    assert unix.run(main()) == 42
    assert isinstance(unix.clock().monotonic_ns(), int)


def test_run_propagates_exceptions_from_main() -> None:
    async def main() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        unix.run(main())


def test_run_drives_a_tap_on_uvloop_and_removes_it_afterwards(netns: Namespace) -> None:
    with netns.enter():
        netif = unix.netif("nstap4", host_address="10.0.0.1/24")

    async def main() -> bytes:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        replies: asyncio.Queue[bytes] = asyncio.Queue()
        netif.listen(lambda batch: [replies.put_nowait(bytes(frame)) for frame in batch])
        return await resolve(netif, replies, "10.0.0.2", "10.0.0.1")

    host_mac = netif.host_mac
    assert unix.run(main()) == host_mac
    assert netif.closed
    assert wait_gone(netns, "nstap4")


def test_sigterm_cancels_main_and_exits_zero_with_the_tap_removed(netns: Namespace) -> None:
    code = textwrap.dedent(
        """
        import asyncio
        import platforms.unix as unix

        netif = unix.netif("nstap5")

        async def main():
            print("ready", flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                print("cleaned up", flush=True)

        print("returned", unix.run(main()), flush=True)
        """
    )
    service = netns.start_service(["-c", code], ready="ready", timeout=10.0)
    assert link(netns, "nstap5") is not None
    service.send_signal(signal.SIGTERM)
    assert service.wait(timeout=5.0) == 0
    service.drain_thread.join(timeout=2.0)
    assert service.lines[-2:] == ["cleaned up\n", "returned None\n"]
    assert wait_gone(netns, "nstap5")


# -- the fixtures themselves -------------------------------------------------------


def test_the_tap_netns_fixture(tap_netns: TapNamespace) -> None:
    info = link(tap_netns.namespace, tap_netns.tap_name)
    assert info is not None and "UP" in info["flags"]
    host = ipaddress.ip_interface(f"{tap_netns.host_address}/{tap_netns.prefix_length}")
    assert ipv4_addresses(info) == [str(host)]
    assert ipaddress.ip_address(tap_netns.stack_address) in host.network
    assert "UP" in link(tap_netns.namespace, "lo")["flags"]
    assert tap_netns.namespace.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_a_namespace_stops_what_it_started_and_disappears() -> None:
    from platforms.host.netns import unavailable_reason

    if (reason := unavailable_reason()) is not None:
        pytest.skip(reason)
    namespace = Namespace()
    sleeper = namespace.popen(["sleep", "300"])
    with namespace:
        # `ip netns exec` becomes `sleep` once it has entered the namespace.
        deadline = time.monotonic() + 10
        while (comm := namespace.run(["cat", f"/proc/{sleeper.pid}/comm"]).stdout) != "sleep\n":
            assert time.monotonic() < deadline, comm
        assert comm == "sleep\n"
    assert sleeper.poll() == -signal.SIGTERM
    assert namespace.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
