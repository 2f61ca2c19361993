"""PcapNetif: both directions, exact bytes and times, readable by dpkt while running."""

from __future__ import annotations

import asyncio
import io
import struct
from decimal import Decimal

import dpkt
import pytest

from netstack.clock import ManualClock
from netstack.devices.link import link_pair
from netstack.devices.pcap import PcapNetif
from netstack.protocols import Netif

A_MAC = bytes.fromhex("020000000001")
B_MAC = bytes.fromhex("020000000002")


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + payload


def read_pcap(data: bytes) -> list[tuple[Decimal, bytes]]:
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    return [(ts, buf) for ts, buf in reader]


def wall_seconds(wall_ns: int) -> Decimal:
    return Decimal(wall_ns) / Decimal(10**9)


@pytest.mark.asyncio
async def test_records_both_directions_with_exact_bytes_and_times(tmp_path) -> None:
    clock = ManualClock()
    a, b = link_pair()
    path = tmp_path / "a.pcap"
    capture = PcapNetif(a, path, clock=clock)
    assert isinstance(capture, Netif)
    from_b: list[bytes] = []
    capture.listen(lambda batch: from_b.extend(bytes(f) for f in batch))
    b.listen(lambda batch: None)

    out = frame(B_MAC, A_MAC, b"request")
    t_out = clock.wall_ns()
    capture.write(out)
    clock.advance(1_234_567)
    back = frame(A_MAC, B_MAC, b"reply, with a longer payload")
    t_back = clock.wall_ns()
    b.write(back)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert from_b == [back], "the receiver behind the capture still gets the frame"
    capture.close()

    records = read_pcap(path.read_bytes())
    assert [buf for _, buf in records] == [out, back]
    assert [ts for ts, _ in records] == [wall_seconds(t_out), wall_seconds(t_back)]
    assert records[0][1][6:12] == A_MAC and records[1][1][6:12] == B_MAC, "directions by source MAC"


@pytest.mark.asyncio
async def test_readable_while_running(tmp_path) -> None:
    clock = ManualClock()
    a, b = link_pair()
    path = tmp_path / "live.pcap"
    capture = PcapNetif(a, path, clock=clock)
    capture.listen(lambda batch: None)
    b.listen(lambda batch: None)
    assert read_pcap(path.read_bytes()) == [], "the header is on disk from the start"

    capture.write(frame(B_MAC, A_MAC, b"one"))
    await asyncio.sleep(0)  # the write's flush runs in the same iteration as delivery
    assert [buf for _, buf in read_pcap(path.read_bytes())] == [frame(B_MAC, A_MAC, b"one")]

    b.write(frame(A_MAC, B_MAC, b"two"))
    b.write(frame(A_MAC, B_MAC, b"three"))
    await asyncio.sleep(0)
    assert len(read_pcap(path.read_bytes())) == 3, "a received batch is flushed at once"
    capture.close()


@pytest.mark.asyncio
async def test_snaplen_truncates_but_keeps_the_original_length() -> None:
    clock = ManualClock()
    a, b = link_pair()
    sink = io.BytesIO()
    capture = PcapNetif(a, sink, clock=clock, snaplen=20)
    b.listen(lambda batch: None)
    long = frame(B_MAC, A_MAC, bytes(range(100)))
    capture.write(long)
    capture.flush()
    data = sink.getvalue()
    [(_, buf)] = read_pcap(data)
    assert buf == long[:20]
    _, _, captured, original = struct.unpack_from("=IIII", data, 24)
    assert (captured, original) == (20, len(long))
    assert read_pcap(data) and dpkt.pcap.Reader(io.BytesIO(data)).snaplen == 20


@pytest.mark.asyncio
async def test_a_file_object_stays_open_a_path_is_closed(tmp_path) -> None:
    a, _ = link_pair()
    sink = io.BytesIO()
    capture = PcapNetif(a, sink, clock=ManualClock())
    capture.close()
    assert not sink.closed
    assert a.closed, "close closes the wrapped device"
    capture.close()  # harmless twice

    c, _ = link_pair()
    capture = PcapNetif(c, tmp_path / "x.pcap", clock=ManualClock())
    file = capture._file
    capture.close()
    assert file.closed


@pytest.mark.asyncio
async def test_delegates_and_does_not_record_refused_writes() -> None:
    a, _ = link_pair(mtu=1000)
    sink = io.BytesIO()
    capture = PcapNetif(a, sink, clock=ManualClock())
    assert (capture.mac, capture.mtu, capture.offload) == (a.mac, a.mtu, a.offload)
    with pytest.raises(ValueError):
        capture.write(bytes(1015))
    capture.flush()
    assert read_pcap(sink.getvalue()) == []
    assert capture.stats == a.stats
    capture.close()
    with pytest.raises(OSError):
        capture.write(bytes(60))


def test_nanosecond_timestamps_survive() -> None:
    """A wall time whose float form would round; records keep every nanosecond."""

    class FixedClock(ManualClock):
        def wall_ns(self) -> int:
            return 1_780_000_000_999_999_999

    class Sink:
        """A Netif that only swallows writes (no loop needed)."""

        mac = A_MAC
        mtu = 1500
        offload = None
        stats: dict[str, int] = {}

        def listen(self, receive) -> None: ...
        def write(self, frame) -> None: ...
        def close(self) -> None: ...

    buffer = io.BytesIO()
    capture = PcapNetif(Sink(), buffer, clock=FixedClock())  # type: ignore[arg-type]
    capture.write(frame(B_MAC, A_MAC, b"x"))
    [(ts, _)] = read_pcap(buffer.getvalue())
    assert ts == Decimal("1780000000.999999999")
