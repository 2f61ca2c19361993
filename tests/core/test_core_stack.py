"""Two direct stacks over the in-memory link: ARP, ping, UDP endpoints, timers, bad input."""

from __future__ import annotations

import asyncio
import random

import pytest

from netstack.arp import SECOND
from netstack.clock import ManualClock
from netstack.devices.faults import FaultConfig, FaultInjector
from netstack.devices.link import link_pair
from netstack.stack import Stack


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.events.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.events.put_nowait(exc)

    def connection_lost(self, exc) -> None:
        self.lost.set_result(exc)


class Echo(Recorder):
    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data, addr)


def pair(clock, **kw):
    a, b = link_pair(**kw)
    left = Stack(a, clock, ipv4="10.0.0.1/24")
    right = Stack(b, clock, ipv4="10.0.0.2/24", gateway="10.0.0.1")
    left.start()
    right.start()
    return left, right


@pytest.mark.asyncio
async def test_udp_echo_between_two_stacks_with_fragmentation(manual_clock: ManualClock) -> None:
    left, right = pair(manual_clock)
    await right.create_datagram_endpoint(Echo, local_addr=("10.0.0.2", 7))
    transport, client = await left.create_datagram_endpoint(Recorder, remote_addr=("10.0.0.2", 7))
    assert 49152 <= transport.get_extra_info("sockname")[1] <= 65535
    # 16 fragments of 1480 bytes is the most a datagram may arrive in.
    for size in (0, 1, 1472, 1473, 4000, 16 * 1480 - 8):
        payload = random.Random(size).randbytes(size)
        transport.sendto(payload)
        data, addr = await asyncio.wait_for(client.events.get(), 5)
        assert data == payload and addr == ("10.0.0.2", 7)
    assert right.stats["ipv4.reassembled"] == 3
    # One more fragment is refused and counted, not half-delivered.
    transport.sendto(bytes(16 * 1480 - 7))
    await manual_clock.settle()
    assert right.stats["ipv4.too_many_fragments"] == 1
    assert client.events.empty()


@pytest.mark.asyncio
async def test_closed_port_reports_connection_refused_to_a_connected_endpoint(manual_clock: ManualClock) -> None:
    left, right = pair(manual_clock)
    transport, client = await left.create_datagram_endpoint(Recorder, remote_addr=("10.0.0.2", 9999))
    transport.sendto(b"anyone?")
    error = await asyncio.wait_for(client.events.get(), 5)
    assert isinstance(error, ConnectionRefusedError)
    assert right.stats["udp.closed_port"] == 1 and right.stats["icmp.port_unreachable_sent"] == 1


@pytest.mark.asyncio
async def test_endpoint_api_errors(manual_clock: ManualClock) -> None:
    left, _ = pair(manual_clock)
    transport, proto = await left.create_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 5000))
    with pytest.raises(OSError):
        await left.create_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 5000))
    with pytest.raises(OSError):
        await left.create_datagram_endpoint(Recorder, local_addr=("10.9.9.9", 5001))
    with pytest.raises(TypeError):
        transport.sendto("text", ("10.0.0.2", 7))
    with pytest.raises(ValueError):
        transport.sendto(b"x", ("not-an-address", 7))
    with pytest.raises(ValueError):
        transport.sendto(b"x")  # unconnected, no address
    transport.sendto(b"x" * 70000, ("10.0.0.2", 7))
    assert isinstance(await proto.events.get(), OSError)
    transport.sendto(b"x", ("10.0.0.255", 7))
    assert isinstance(await proto.events.get(), PermissionError)
    transport.close()
    assert transport.is_closing()
    assert await proto.lost is None
    # The port is free again.
    await left.create_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 5000))


@pytest.mark.asyncio
async def test_ping_round_trip_and_timeout_at_virtual_time(manual_clock: ManualClock) -> None:
    left, right = pair(manual_clock)
    rtt = await left.ping("10.0.0.2", data=b"x" * 56)
    assert rtt == 0.0  # virtual time does not move by itself
    right.netif.close()  # the peer goes silent
    pending = asyncio.ensure_future(left.ping("10.0.0.2", timeout=2.0))
    await manual_clock.settle()
    assert not pending.done()
    manual_clock.advance(2 * SECOND - 1)
    await manual_clock.settle()
    assert not pending.done()
    manual_clock.advance(1)
    with pytest.raises(TimeoutError):
        await pending


@pytest.mark.asyncio
async def test_driver_arms_only_the_earliest_deadline_and_nothing_when_idle(manual_clock: ManualClock) -> None:
    left, right = pair(manual_clock)
    await manual_clock.settle()
    # Gratuitous ARP #2 is due in 2 s; then the stacks know nothing to wait for.
    assert left.poll_at() == manual_clock.monotonic_ns() + 2 * SECOND
    await manual_clock.run_for(3 * SECOND)
    assert left.poll_at() is None and right.poll_at() is None
    assert manual_clock.next_deadline() is None
    # Traffic creates an ARP entry, whose expiry is the only deadline.
    await left.ping("10.0.0.2")
    assert left.poll_at() == left.arp._cache[bytes([10, 0, 0, 2])].expires_at


@pytest.mark.asyncio
async def test_unresolvable_neighbour_drops_after_retries(manual_clock: ManualClock) -> None:
    left, _ = pair(manual_clock)
    transport, _ = await left.create_datagram_endpoint(Recorder, local_addr=("0.0.0.0", 0))
    transport.sendto(b"into the void", ("10.0.0.77", 7))
    await manual_clock.run_for(60 * SECOND)
    assert left.stats["arp.unresolved"] == 1
    assert left.stats["arp.requests_sent"] == 4


@pytest.mark.asyncio
async def test_malformed_frames_are_counted_never_raised(manual_clock: ManualClock) -> None:
    left, right = pair(manual_clock)
    mac = right.netif.mac
    junk = [
        b"",
        b"\x01" * 5,
        mac + b"\x02" * 6 + b"\x08\x00",  # IPv4 with no header
        mac + b"\x02" * 6 + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01",  # short ARP
        mac + b"\x02" * 6 + b"\x00\x20" + b"llc",  # 802.3 length field
        mac + b"\x02" * 6 + b"\x86\xdd" + b"\x60" + b"\x00" * 39,
        mac + b"\x02" * 6 + b"\x08\x00" + b"\x45\x00\x00\x14" + b"\x00" * 16,  # bad checksum
        b"\x33\x33\x00\x00\x00\x01" + b"\x02" * 6 + b"\x86\xdd",  # not for us
    ]
    right._receive(junk)
    counters = right.stats
    for key in ("ethernet.truncated", "ipv4.truncated", "arp.truncated", "ethernet.unsupported_length_field",
                "ethernet.ipv6_unsupported", "ipv4.bad_checksum", "ethernet.not_for_us"):
        assert counters[key] >= 1, key
    assert await left.ping("10.0.0.2") >= 0  # still alive


@pytest.mark.asyncio
async def test_fault_injected_link_still_resolves_and_answers(manual_clock: ManualClock) -> None:
    a, b = link_pair()
    faulty = FaultInjector(b, FaultConfig(drop=0.2, duplicate=0.1, reorder=0.2, corrupt=0.1, seed=3), clock=manual_clock)
    left = Stack(a, manual_clock, ipv4="10.0.0.1/24")
    right = Stack(faulty, manual_clock, ipv4="10.0.0.2/24")
    left.start()
    right.start()
    answered = 0
    async with manual_clock.autojump():
        for _ in range(50):
            try:
                await left.ping("10.0.0.2", timeout=1.0)
                answered += 1
            except TimeoutError:
                pass
    assert 20 <= answered < 50
    assert right.stats["ipv4.bad_checksum"] + right.stats["icmp.bad_checksum"] + left.stats["ipv4.bad_checksum"] + left.stats["icmp.bad_checksum"] >= 1
