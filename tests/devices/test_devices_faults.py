"""FaultConfig.parse and the FaultInjector: rates, bits, order, determinism, deadlines.

Most tests drive the injector over ``Wire``, a synchronous fake Netif, with a
``ManualClock``: no event loop, no sleeping, every outcome fixed by the seed.
One test runs it over a real ``link_pair`` to check it fits the contract
end to end.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.clock import ManualClock
from netstack.devices.faults import FaultConfig, FaultInjector
from netstack.devices.link import link_pair
from netstack.protocols import Netif, Offload

HEADER = bytes.fromhex("020000000002" "020000000001" "88b5")


def frame(n: int, size: int = 64) -> bytes:
    payload = n.to_bytes(4, "big")
    return HEADER + payload + bytes(size - len(HEADER) - len(payload))


def number(f) -> int:
    return int.from_bytes(bytes(f)[14:18], "big")


class Wire:
    """A fake Netif: records writes, delivers batches on demand, synchronously."""

    def __init__(self, mtu: int = 1500) -> None:
        self.mac = HEADER[6:12]
        self.mtu = mtu
        self.offload = Offload(max_tx_segment=mtu, max_rx_segment=mtu)
        self.written: list[bytes] = []
        self.receive = None
        self.closed = False

    @property
    def stats(self) -> dict[str, int]:
        return {"tx_frames": len(self.written), "rx_frames": 0, "tx_bytes": 0, "rx_bytes": 0, "tx_dropped": 0}

    def listen(self, receive) -> None:
        self.receive = receive

    def write(self, f) -> None:
        if self.closed:
            raise OSError("closed")
        self.written.append(bytes(f))

    def close(self) -> None:
        self.closed = True

    def deliver(self, batch) -> None:
        assert self.receive is not None
        self.receive(batch)


def injector(spec: str, **kwargs) -> tuple[FaultInjector, Wire, ManualClock, list[list[bytes]]]:
    wire, clock = Wire(), ManualClock()
    faulty = FaultInjector(wire, FaultConfig.parse(spec), clock=clock, **kwargs)
    batches: list[list[bytes]] = []
    faulty.listen(lambda batch: batches.append([bytes(f) for f in batch]))
    return faulty, wire, clock, batches


# -- FaultConfig.parse --------------------------------------------------------


def test_parse_the_documented_example() -> None:
    config = FaultConfig.parse("drop=2%,dup=1%,reorder=10%,corrupt=0.5%,seed=7")
    assert config == FaultConfig(drop=0.02, duplicate=0.01, reorder=0.1, corrupt=0.005, seed=7, direction="both")


@pytest.mark.parametrize(("spec", "expected"), [
    ("", FaultConfig()),
    ("   ", FaultConfig()),
    ("drop=0.02", FaultConfig(drop=0.02)),
    ("drop=2.3%", FaultConfig(drop=0.023)),
    ("duplicate=1", FaultConfig(duplicate=1.0)),
    ("dup=100%", FaultConfig(duplicate=1.0)),
    ("reorder=0", FaultConfig()),
    (" Drop = 5 % , SEED=-3 ", FaultConfig(drop=0.05, seed=-3)),
    ("corrupt=1e-3,direction=RX", FaultConfig(corrupt=0.001, direction="rx")),
    ("direction=tx", FaultConfig(direction="tx")),
])
def test_parse_good(spec: str, expected: FaultConfig) -> None:
    assert FaultConfig.parse(spec) == expected


@pytest.mark.parametrize(("spec", "named"), [
    ("loss=2%", "loss=2%"),  # unknown key
    ("drop=2%,jitter=1ms", "jitter=1ms"),
    ("drop", "'drop'"),  # no value
    ("drop=", "drop="),
    ("=2%", "=2%"),
    ("drop=2%,,dup=1%", "''"),  # empty item
    ("drop=abc", "drop=abc"),
    ("drop=2%%", "drop=2%%"),
    ("drop=150%", "drop=150%"),  # out of range
    ("drop=1.5", "drop=1.5"),
    ("drop=-1%", "drop=-1%"),
    ("drop=nan", "drop=nan"),
    ("drop=inf", "drop=inf"),
    ("seed=7.5", "seed=7.5"),
    ("seed=x", "seed=x"),
    ("direction=sideways", "direction=sideways"),
    ("drop=1%,drop=2%", "drop=2%"),  # twice
    ("dup=1%,duplicate=2%", "duplicate=2%"),
])
def test_parse_bad_names_the_item(spec: str, named: str) -> None:
    with pytest.raises(ValueError) as error:
        FaultConfig.parse(spec)
    assert named in str(error.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="drop"):
        FaultConfig(drop=1.01)
    with pytest.raises(ValueError, match="direction"):
        FaultConfig(direction="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        FaultConfig(seed=1.5)  # type: ignore[arg-type]


probability = st.floats(min_value=0.0, max_value=1.0)


@given(drop=probability, duplicate=probability, reorder=probability, corrupt=probability,
       seed=st.integers(), direction=st.sampled_from(["both", "rx", "tx"]))
def test_str_parses_back_to_the_same_config(drop, duplicate, reorder, corrupt, seed, direction) -> None:
    config = FaultConfig(drop, duplicate, reorder, corrupt, seed, direction)
    assert FaultConfig.parse(str(config)) == config


# -- the injector -------------------------------------------------------------


def test_is_a_netif_and_merges_stats() -> None:
    faulty, wire, _, _ = injector("drop=100%,direction=tx")
    assert isinstance(faulty, Netif)
    assert (faulty.mac, faulty.mtu, faulty.offload) == (wire.mac, wire.mtu, wire.offload)
    faulty.write(frame(1))
    stats = faulty.stats
    assert stats["faults_dropped"] == 1
    assert stats["tx_frames"] == 0, "the wrapped device's counters are in the same view"
    assert {"faults_duplicated", "faults_reordered", "faults_delayed", "faults_corrupted"} <= stats.keys()


def test_no_faults_passes_everything_through() -> None:
    faulty, wire, _, received = injector("")
    frames = [frame(n) for n in range(100)]
    for f in frames:
        faulty.write(f)
    wire.deliver(frames)
    assert wire.written == frames
    assert received == [frames]


def test_drop_rate_is_close_to_the_configured_rate() -> None:
    faulty, wire, _, _ = injector("drop=10%,seed=1,direction=tx")
    for n in range(10_000):
        faulty.write(frame(n))
    dropped = 10_000 - len(wire.written)
    # Binomial(10000, 0.1): standard deviation 30; five of them either side.
    assert 850 <= dropped <= 1150
    assert faulty.stats["faults_dropped"] == dropped
    assert [number(f) for f in wire.written] == sorted(number(f) for f in wire.written)


def test_drop_on_receive() -> None:
    faulty, wire, _, received = injector("drop=50%,seed=3,direction=rx")
    wire.deliver([frame(n) for n in range(10_000)])
    delivered = [f for batch in received for f in batch]
    assert 4800 <= len(delivered) <= 5200
    assert faulty.stats["faults_dropped"] == 10_000 - len(delivered)


def test_a_batch_that_loses_every_frame_is_not_delivered() -> None:
    faulty, wire, _, received = injector("drop=100%,direction=rx")
    wire.deliver([frame(1), frame(2)])
    assert received == []


def test_directions_are_independent() -> None:
    faulty, wire, _, received = injector("drop=100%,direction=rx")
    faulty.write(frame(1))
    assert wire.written == [frame(1)], "tx is untouched when only rx is faulted"
    faulty, wire, _, received = injector("drop=100%,direction=tx")
    wire.deliver([frame(1)])
    assert received == [[frame(1)]], "rx is untouched when only tx is faulted"


def test_duplicates() -> None:
    faulty, wire, _, _ = injector("dup=100%,direction=tx")
    faulty.write(frame(1))
    faulty.write(frame(2))
    assert wire.written == [frame(1), frame(1), frame(2), frame(2)]
    assert faulty.stats["faults_duplicated"] == 2

    faulty, wire, _, received = injector("dup=20%,seed=5,direction=rx")
    wire.deliver([frame(n) for n in range(10_000)])
    extra = len(received[0]) - 10_000
    assert 1800 <= extra <= 2200
    assert faulty.stats["faults_duplicated"] == extra


def bit_differences(a: bytes, b: bytes) -> list[int]:
    assert len(a) == len(b)
    return [byte * 8 + bit for byte in range(len(a)) for bit in range(8)
            if (a[byte] ^ b[byte]) & (0x80 >> bit)]


def test_corruption_flips_exactly_one_bit_past_the_header_and_spares_the_caller() -> None:
    faulty, wire, _, received = injector("corrupt=100%,seed=11")
    originals = [bytearray(frame(n, size=18 + n)) for n in range(200)]
    keep = [bytes(f) for f in originals]
    for f in originals:
        faulty.write(f)
    assert [bytes(f) for f in originals] == keep, "the caller's buffers are untouched"
    positions = set()
    for sent, out in zip(keep, wire.written, strict=True):
        [bit] = bit_differences(sent, out)
        assert bit >= 14 * 8
        positions.add(bit)
    assert len(positions) > 50, "the position is random, not fixed"
    assert faulty.stats["faults_corrupted"] == 200

    incoming = [bytearray(frame(n)) for n in range(20)]
    wire.deliver(incoming)
    for sent, out in zip(incoming, received[0], strict=True):
        [bit] = bit_differences(bytes(sent), out)
        assert bit >= 14 * 8
    assert [bytes(f) for f in incoming] == [frame(n) for n in range(20)]


def test_corruption_can_reach_the_last_bit_and_spares_header_only_frames() -> None:
    faulty, wire, _, _ = injector("corrupt=100%,seed=2,direction=tx")
    for _ in range(200):
        faulty.write(HEADER + b"\x00")  # one byte past the header: 8 possible bits
    hit = {bit_differences(HEADER + b"\x00", out)[0] for out in wire.written}
    assert hit == set(range(14 * 8, 15 * 8))
    wire.written.clear()
    faulty.write(HEADER)
    assert wire.written == [HEADER]
    assert faulty.stats["faults_corrupted"] == 200


def test_reordering_loses_nothing_and_actually_reorders() -> None:
    faulty, wire, clock, _ = injector("reorder=30%,seed=4,direction=tx")
    for n in range(1000):
        faulty.write(frame(n))
    clock.advance(1_000_000)  # the last frame may be held: its deadline releases it
    order = [number(f) for f in wire.written]
    assert sorted(order) == list(range(1000)), "nothing lost, nothing added"
    assert order != list(range(1000))
    swaps = faulty.stats["faults_reordered"]
    assert 150 <= swaps <= 300
    # Each swap moves a frame exactly one place later: the displacement is bounded.
    assert all(abs(position - n) <= 1 for position, n in enumerate(order))
    assert sum(1 for position, n in enumerate(order) if n == position + 1) == swaps


def test_reorder_swaps_neighbours_within_and_across_receive_batches() -> None:
    faulty, wire, clock, received = injector("reorder=100%,direction=rx")
    wire.deliver([frame(0), frame(1), frame(2)])
    # 0 is held, 1 passes and releases 0; 2 is held again.
    assert [[number(f) for f in batch] for batch in received] == [[1, 0]]
    wire.deliver([frame(3)])
    assert [number(f) for f in received[1]] == [3, 2]
    assert faulty.stats["faults_reordered"] == 2


def test_held_frames_wait_for_the_deadline_when_nothing_follows() -> None:
    faulty, wire, clock, _ = injector("reorder=100%,direction=tx", hold_ns=1_000_000)
    faulty.write(frame(1))
    assert wire.written == []
    clock.advance(999_999)
    assert wire.written == []
    clock.advance(1)
    assert wire.written == [frame(1)]
    assert faulty.stats["faults_delayed"] == 1
    assert faulty.stats["faults_reordered"] == 0
    clock.advance(10_000_000)
    assert wire.written == [frame(1)], "released once"


def test_held_receive_frames_are_copies_and_released_at_the_deadline() -> None:
    faulty, wire, clock, received = injector("reorder=100%,dup=100%,direction=rx")
    buffer = bytearray(frame(9))
    wire.deliver([buffer])
    buffer[14:18] = b"\xff\xff\xff\xff"  # the device reuses its buffer
    assert received == []
    clock.advance(1_000_000)
    assert received == [[frame(9), frame(9)]], "a held duplicate comes out twice"


def test_a_later_frame_cancels_the_deadline() -> None:
    faulty, wire, clock, _ = injector("reorder=100%,direction=tx")
    faulty.write(frame(1))
    clock.advance(500_000)
    faulty.write(frame(2))  # releases 1 after it; 2 is not held (one frame at a time)
    assert [number(f) for f in wire.written] == [2, 1]
    faulty.write(frame(3))  # held
    clock.advance(500_000)  # 1's old deadline passes: it must not fire
    assert [number(f) for f in wire.written] == [2, 1]
    clock.advance(500_000)
    assert [number(f) for f in wire.written] == [2, 1, 3]


def run(spec: str, frames: list[bytes]) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    faulty, wire, clock, received = injector(spec)
    for f in frames:
        faulty.write(f)
        wire.deliver([f, f])
    clock.advance(10_000_000)
    return wire.written, [f for batch in received for f in batch], faulty.stats


def test_the_same_seed_gives_the_same_faults() -> None:
    frames = [frame(n, size=60 + n % 40) for n in range(2000)]
    spec = "drop=5%,dup=5%,reorder=10%,corrupt=5%,seed=42"
    assert run(spec, frames) == run(spec, frames)
    assert run(spec, frames) != run(spec.replace("seed=42", "seed=43"), frames)


def test_tx_faults_do_not_depend_on_receive_traffic() -> None:
    spec = "drop=20%,corrupt=20%,seed=8"
    quiet, _, _, _ = injector(spec)
    busy, busy_wire, _, _ = injector(spec)
    quiet_wire = quiet._netif  # type: ignore[attr-defined]
    for n in range(500):
        quiet.write(frame(n))
        busy_wire.deliver([frame(n)] * 3)
        busy.write(frame(n))
    assert quiet_wire.written == busy_wire.written


def test_size_and_close_are_checked_before_any_fault() -> None:
    faulty, wire, clock, _ = injector("drop=100%")
    with pytest.raises(ValueError):
        faulty.write(bytes(1515))
    faulty.write(bytes(1514))
    faulty.close()
    assert wire.closed
    with pytest.raises(OSError):
        faulty.write(frame(1))


def test_close_discards_held_frames() -> None:
    faulty, wire, clock, received = injector("reorder=100%")
    faulty.write(frame(1))
    wire.deliver([frame(2)])
    faulty.close()
    clock.advance(10_000_000)
    assert wire.written == [] and received == []
    assert faulty.stats["faults_dropped"] == 2
    faulty.close()  # harmless twice


@pytest.mark.asyncio
async def test_over_a_link_pair_end_to_end() -> None:
    clock = ManualClock()
    a, b = link_pair()
    faulty = FaultInjector(a, FaultConfig.parse("reorder=50%,dup=10%,seed=9"), clock=clock)
    received: list[bytes] = []
    b.listen(lambda batch: received.extend(bytes(f) for f in batch))
    faulty.listen(lambda batch: None)
    for n in range(200):
        faulty.write(frame(n))
    await asyncio.sleep(0)
    clock.advance(1_000_000)
    await asyncio.sleep(0)
    numbers = [number(f) for f in received]
    assert sorted(set(numbers)) == list(range(200))
    assert len(numbers) == 200 + faulty.stats["faults_duplicated"]
    assert numbers != sorted(numbers)
    assert faulty.stats["tx_frames"] == len(numbers)
