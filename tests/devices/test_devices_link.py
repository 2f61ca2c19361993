"""The in-memory link pair: batching per loop iteration, sizes, close, counters."""

from __future__ import annotations

import asyncio

import pytest

from netstack.devices.link import MemoryNetif, link_pair
from netstack.protocols import Netif, Offload


def frame(n: int, size: int = 60) -> bytes:
    """A recognisable frame: b -> a, EtherType 0x88b5 (local experimental), n in the payload."""
    header = bytes.fromhex("020000000002" "020000000001" "88b5")
    payload = n.to_bytes(4, "big")
    return header + payload + bytes(size - len(header) - len(payload))


class Collector:
    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []

    def __call__(self, batch) -> None:
        self.batches.append([bytes(f) for f in batch])

    @property
    def frames(self) -> list[bytes]:
        return [f for batch in self.batches for f in batch]


async def next_iteration() -> None:
    # One yield lets every call_soon callback scheduled so far run.
    await asyncio.sleep(0)


def test_ends_are_netifs_with_distinct_local_macs() -> None:
    a, b = link_pair()
    assert isinstance(a, Netif) and isinstance(b, Netif)
    assert a.mac == bytes.fromhex("020000000001")
    assert b.mac == bytes.fromhex("020000000002")
    for mac in (a.mac, b.mac):
        assert mac[0] & 0x02, "locally administered"
        assert not mac[0] & 0x01, "unicast"
    assert a.mtu == b.mtu == 1500
    assert a.offload == Offload(max_tx_segment=1500, max_rx_segment=1500)


def test_custom_macs_and_bad_macs() -> None:
    a, b = link_pair(macs=(b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"))
    assert (a.mac, b.mac) == (b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b")
    with pytest.raises(ValueError, match="distinct"):
        link_pair(macs=(b"\x02" * 6, b"\x02" * 6))
    with pytest.raises(ValueError, match="6 bytes"):
        link_pair(macs=(b"\x02" * 5, b"\x04" * 6))


@pytest.mark.asyncio
async def test_delivers_in_order_one_batch_per_loop_iteration() -> None:
    a, b = link_pair()
    received = Collector()
    b.listen(received)
    for n in range(3):
        a.write(frame(n))
    assert received.batches == [], "never delivered inside write"
    await next_iteration()
    assert received.batches == [[frame(0), frame(1), frame(2)]]
    a.write(frame(3))
    a.write(frame(4))
    await next_iteration()
    assert received.batches == [[frame(0), frame(1), frame(2)], [frame(3), frame(4)]]


@pytest.mark.asyncio
async def test_both_directions_and_replies_from_the_receiver() -> None:
    a, b = link_pair()
    at_a, at_b = Collector(), Collector()
    a.listen(at_a)

    def echo(batch) -> None:
        at_b(batch)
        for f in batch:
            b.write(f)

    b.listen(echo)
    a.write(frame(1))
    await next_iteration()
    assert at_b.frames == [frame(1)]
    assert at_a.frames == []
    await next_iteration()
    assert at_a.frames == [frame(1)]


@pytest.mark.asyncio
async def test_write_copies_the_frame() -> None:
    a, b = link_pair()
    received = Collector()
    b.listen(received)
    buffer = bytearray(frame(7))
    a.write(buffer)
    a.write(memoryview(buffer)[:40])
    buffer[20:24] = b"XXXX"
    await next_iteration()
    assert received.frames == [frame(7), frame(7)[:40]]


@pytest.mark.asyncio
async def test_size_limits() -> None:
    a, b = link_pair(mtu=1500)
    a.write(bytes(1514))
    with pytest.raises(ValueError, match="1515"):
        a.write(bytes(1515))
    small, _ = link_pair(mtu=576)
    small.write(bytes(590))
    with pytest.raises(ValueError):
        small.write(bytes(591))
    tso, _ = link_pair(offload=Offload(tx_checksum=True, max_tx_segment=65535, max_rx_segment=65535))
    tso.write(bytes(65535 + 14))
    with pytest.raises(ValueError):
        tso.write(bytes(65535 + 15))
    assert a.stats["tx_frames"] == 1, "a refused frame is not counted as sent"


@pytest.mark.asyncio
async def test_frames_before_listen_are_dropped_and_counted() -> None:
    a, b = link_pair()
    a.write(frame(1))
    await next_iteration()
    received = Collector()
    b.listen(received)
    a.write(frame(2))
    await next_iteration()
    assert received.frames == [frame(2)]
    assert b.stats["rx_dropped"] == 1
    assert b.stats["rx_frames"] == 1


@pytest.mark.asyncio
async def test_listen_twice_is_an_error() -> None:
    a, _ = link_pair()
    a.listen(Collector())
    with pytest.raises(RuntimeError):
        a.listen(Collector())


@pytest.mark.asyncio
async def test_close_semantics() -> None:
    a, b = link_pair()
    at_a, at_b = Collector(), Collector()
    a.listen(at_a)
    b.listen(at_b)
    a.write(frame(1))
    a.close()
    a.close()  # harmless twice
    assert a.closed
    with pytest.raises(OSError):
        a.write(frame(2))
    with pytest.raises(OSError):
        a.listen(Collector())
    await next_iteration()
    assert at_b.frames == [frame(1)], "frames already on the wire still arrive"
    b.write(frame(3))
    await next_iteration()
    assert at_a.frames == [], "a closed end delivers nothing"
    assert a.stats["rx_dropped"] == 1


@pytest.mark.asyncio
async def test_counters() -> None:
    a, b = link_pair()
    b.listen(Collector())
    a.write(frame(1, size=60))
    a.write(frame(2, size=100))
    await next_iteration()
    assert a.stats == {"rx_frames": 0, "tx_frames": 2, "rx_bytes": 0, "tx_bytes": 160,
                       "tx_dropped": 0, "rx_dropped": 0}
    assert b.stats == {"rx_frames": 2, "tx_frames": 0, "rx_bytes": 160, "tx_bytes": 0,
                       "tx_dropped": 0, "rx_dropped": 0}
    snapshot = a.stats
    snapshot["tx_frames"] = 99
    assert a.stats["tx_frames"] == 2, "stats is a snapshot"


@pytest.mark.asyncio
async def test_capacity_drops_and_counts() -> None:
    a, b = link_pair(capacity=2)
    received = Collector()
    b.listen(received)
    for n in range(5):
        a.write(frame(n))
    await next_iteration()
    assert received.frames == [frame(0), frame(1)]
    assert a.stats["tx_dropped"] == 3
    assert a.stats["tx_frames"] == 2
    a.write(frame(5))  # the ring drained: room again
    await next_iteration()
    assert received.frames[-1] == frame(5)
    with pytest.raises(ValueError):
        link_pair(capacity=0)


@pytest.mark.asyncio
async def test_receiver_that_raises_is_reported_and_delivery_continues() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        a, b = link_pair()
        received = Collector()

        def flaky(batch) -> None:
            received(batch)
            if len(received.batches) == 1:
                raise RuntimeError("receiver bug")

        b.listen(flaky)
        a.write(frame(1))
        await next_iteration()
        a.write(frame(2))
        await next_iteration()
    finally:
        loop.set_exception_handler(previous)
    assert received.frames == [frame(1), frame(2)]
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], RuntimeError)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        MemoryNetif(b"\x02" * 6, mtu=40)
