"""Two connections back to back on an in-test wire, at virtual time: recovery
from chosen losses, and bulk transfer over a seeded lossy, duplicating,
reordering wire, byte-exact."""

from __future__ import annotations

import random

import pytest

from netstack.tcp.connection import MS, SECOND, TcpConfig
from netstack.tcp.states import State
from netstack.tcp.testing import Segment, Wire, lossy, pair
from netstack.wire.tcp import ACK, FIN, SYN


def establish(wire: Wire) -> None:
    wire.a.connect(wire.now)
    wire.run(lambda: wire.a.state == wire.b.state == State.ESTABLISHED)
    wire.a.events.clear()
    wire.b.events.clear()


class Pump:
    """Both applications: write ``size`` bytes each way, read everything."""

    def __init__(self, wire: Wire, size: int, seed: int, chunk: int = 64 * 1024, high_water: int = 256 * 1024) -> None:
        rng = random.Random(seed)
        self.wire = wire
        self.data = {"a": rng.randbytes(size), "b": rng.randbytes(size)}
        self.offset = {"a": 0, "b": 0}
        self.received = {"a": bytearray(), "b": bytearray()}
        self.chunk = chunk
        self.high_water = high_water
        self.close_when_done = False

    def __call__(self, now: int) -> None:
        for name, conn in (("a", self.wire.a), ("b", self.wire.b)):
            self.received[name] += conn.read()
            data = self.data[name]
            while self.offset[name] < len(data) and conn.buffered < self.high_water:
                end = min(len(data), self.offset[name] + self.chunk)
                conn.send(data[self.offset[name] : end])
                self.offset[name] = end
            if self.close_when_done and self.offset[name] == len(data):
                conn.close(now)

    def done(self) -> bool:
        return self.received["a"] == self.data["b"] and self.received["b"] == self.data["a"]


def transfer(wire: Wire, size: int, seed: int, *, limit: int = 600 * SECOND) -> Pump:
    pump = Pump(wire, size, seed)
    establish(wire)
    wire.run(pump.done, app=pump, limit=limit)
    return pump


# ----------------------------------------------------------------------
# Chosen losses


def drop_once(predicate):
    """A fault that drops the first segment matching ``predicate``."""
    dropped = []

    def fault(direction: str, segment: Segment) -> list[int]:
        if not dropped and predicate(direction, segment):
            dropped.append(segment)
            return []
        return [0]

    fault.dropped = dropped  # type: ignore[attr-defined]
    return fault


def test_lost_syn_is_retransmitted() -> None:
    fault = drop_once(lambda d, s: s.repr.flags == SYN)
    wire = pair(fault=fault)
    establish(wire)
    assert wire.now >= SECOND  # one initial RTO
    assert len(fault.dropped) == 1


def test_lost_syn_ack_is_retransmitted() -> None:
    fault = drop_once(lambda d, s: s.repr.flags == SYN | ACK)
    wire = pair(fault=fault)
    establish(wire)
    assert len(fault.dropped) == 1


def test_lost_final_ack_of_handshake_is_recovered_by_data() -> None:
    fault = drop_once(lambda d, s: d == "a>b" and not s.payload and not s.repr.flags & (SYN | FIN))
    wire = pair(fault=fault)
    wire.a.connect(0)
    wire.run(lambda: wire.a.state == State.ESTABLISHED)
    wire.a.send(b"first words")
    wire.run(lambda: wire.b.readable > 0)
    assert wire.b.state == State.ESTABLISHED and wire.b.read() == b"first words"


@pytest.mark.parametrize("sack", [True, False], ids=["sack", "newreno"])
def test_losses_in_one_window_recover_without_timeout(sack: bool) -> None:
    config = TcpConfig(sack=sack)
    lost = {50, 60, 70}  # data segments a>b, by position: after slow start has opened the window

    seen = [0]

    def fault(direction: str, segment: Segment) -> list[int]:
        if direction == "a>b" and segment.payload:
            seen[0] += 1
            if seen[0] - 1 in lost:
                return []
        return [0]

    wire = pair(config, config, fault=fault, latency=10 * MS, rate=10_000_000)
    establish(wire)
    data = random.Random(1).randbytes(400_000)
    wire.a.send(data)
    got = bytearray()
    wire.run(lambda: len(got) == len(data), app=lambda now: got.extend(wire.b.read()))
    assert bytes(got) == data
    assert wire.a.stats.get("tcp.rto_expired", 0) == 0
    assert wire.a.stats["tcp.fast_retransmits"] == 1  # one recovery episode
    assert wire.a.retransmitted_segments == 3


def test_lost_fin_is_retransmitted() -> None:
    fault = drop_once(lambda d, s: bool(s.repr.flags & FIN))
    wire = pair(fault=fault)
    establish(wire)
    wire.a.close(wire.now)
    wire.b.close(wire.now)
    wire.run(lambda: wire.a.state == wire.b.state == State.CLOSED)
    assert len(fault.dropped) == 1


def test_zero_window_and_reopening_over_the_wire() -> None:
    # The receiver does not read for a while: the sender's persist timer
    # probes; when the application reads, the window update resumes it.
    wire = pair(TcpConfig(), TcpConfig(recv_buffer=16 * 1024))
    establish(wire)
    data = random.Random(2).randbytes(200_000)
    wire.a.send(data)
    wire.run(lambda: wire.a.snd_wnd == 0 and wire.a._persist_at is not None)
    start = wire.now
    wire.run(lambda: wire.now > start + 5 * SECOND)
    assert wire.a.stats["tcp.window_probes"] >= 2
    got = bytearray()
    wire.run(lambda: len(got) == len(data), app=lambda now: got.extend(wire.b.read()))
    assert bytes(got) == data


def test_reordering_alone_does_not_cost_a_timeout() -> None:
    swapped = []

    def fault(direction: str, segment: Segment) -> list[int]:
        if direction == "a>b" and segment.payload and len(swapped) < 5 and random.Random(len(swapped)).random() < 0.5:
            swapped.append(segment)
            return [2 * MS]  # overtaken by the next few
        return [0]

    wire = pair(fault=fault)
    establish(wire)
    pump = Pump(wire, 300_000, seed=3)
    wire.run(pump.done, app=pump)
    assert wire.a.stats.get("tcp.rto_expired", 0) == 0


# ----------------------------------------------------------------------
# Bulk over a lossy wire


@pytest.mark.parametrize(
    ("seed", "rate"),
    [(1, None), (2, None), (3, None), (4, 50_000_000), (5, 50_000_000)],
    ids=["seed1-burst", "seed2-burst", "seed3-burst", "seed4-50MBps", "seed5-50MBps"],
)
def test_one_megabyte_each_way_over_a_lossy_wire(seed: int, rate: int | None) -> None:
    wire = pair(fault=lossy(seed, drop=0.03, duplicate=0.03, reorder=0.03), latency=2 * MS, rate=rate)
    pump = transfer(wire, 1 << 20, seed)
    assert pump.done()
    a, b = wire.a, wire.b
    assert a.retransmitted_segments > 0 and b.retransmitted_segments > 0
    # Then a clean close over the same wire, and TIME-WAIT expiry.
    a.close(wire.now)
    b.close(wire.now)
    wire.run(lambda: a.state == b.state == State.CLOSED)
    assert a.error is None and b.error is None
    assert a.events[-1] == b.events[-1] == "closed"
    assert a.poll_at() is None and b.poll_at() is None


def test_lossy_transfer_without_sack_or_timestamps() -> None:
    config = TcpConfig(sack=False, timestamps=False, window_scaling=False)
    wire = pair(config, config, fault=lossy(7), latency=2 * MS)
    pump = transfer(wire, 256 * 1024, 7)
    assert pump.done()


def test_lossy_transfer_with_segmentation_offload() -> None:
    config = TcpConfig(max_segment=65536 - 1460)
    wire = pair(config, config, fault=lossy(11), latency=2 * MS)
    pump = transfer(wire, 1 << 20, 11)
    assert pump.done()
    # The wire cut the super-segments at the MSS, as a device would.
    assert any(len(entry.segment.payload) == wire.a._payload_mss() for entry in wire.log)


def test_lossy_wire_close_while_data_is_in_flight() -> None:
    wire = pair(fault=lossy(5), latency=2 * MS)
    establish(wire)
    pump = Pump(wire, 300_000, seed=5)
    pump.close_when_done = True
    wire.run(lambda: pump.done() and wire.a.state == wire.b.state == State.CLOSED, app=pump)
    assert wire.a.error is None and wire.b.error is None


@pytest.mark.parametrize(("seed", "rate"), [(136, 20_000_000), (194, None)])
def test_both_sides_timing_out_still_hear_each_others_acks(seed: int, rate: int | None) -> None:
    # Small windows, 8% of each fault: both sides hit retransmission timeouts
    # and go back to SND.UNA at once. Their pure ACKs must carry SND.MAX, or
    # each drops the other's ACKs as old segments and both give up. (Found
    # by a seed sweep; these two seeds deadlocked before the fix.)
    config = TcpConfig(recv_buffer=16 * 1024)
    wire = pair(config, config, fault=lossy(seed, drop=0.08, duplicate=0.08, reorder=0.08), latency=1 * MS, rate=rate)
    pump = Pump(wire, 200_000, seed)
    pump.close_when_done = True
    establish(wire)
    wire.run(lambda: pump.done() and wire.a.state == wire.b.state == State.CLOSED, app=pump)
    assert wire.a.error is None and wire.b.error is None
