"""IPv4 core at virtual time: demux, routing, reassembly bounds and timeout, fragmentation."""

from __future__ import annotations

import ipaddress
import random

import pytest

from netstack.arp import SECOND, ArpCore
from netstack.ipv4 import HEADROOM, Ipv4, Ipv4Config
from netstack.wire.ipv4 import PROTOCOL_UDP, Ipv4Packet, Ipv4Repr

OUR_MAC = bytes.fromhex("020000000002")
PEER_MAC = bytes.fromhex("020000000001")
OUR_IP = bytes([10, 0, 0, 2])
PEER_IP = bytes([10, 0, 0, 1])
FAR_IP = bytes([192, 0, 2, 7])
T0 = 7 * SECOND


def make_ipv4(**overrides) -> Ipv4:
    config = Ipv4Config(ipaddress.IPv4Interface("10.0.0.2/24"), ipaddress.IPv4Address("10.0.0.1"), **overrides)
    arp = ArpCore(OUR_MAC, OUR_IP)
    return Ipv4(config, arp, OUR_MAC, 1500)


def packet(payload: bytes, *, src=PEER_IP, dst=OUR_IP, ident=42, offset=0, more=False, protocol=PROTOCOL_UDP) -> memoryview:
    buffer = bytearray(20 + len(payload))
    buffer[20:] = payload
    Ipv4Repr(src=src, dst=dst, protocol=protocol, payload_len=len(payload), ident=ident,
             frag_offset=offset, more_fragments=more).emit(Ipv4Packet(buffer))
    return memoryview(buffer)


def fragments(payload: bytes, size: int, **kw) -> list[memoryview]:
    pieces = []
    for offset in range(0, len(payload), size):
        piece = payload[offset:offset + size]
        pieces.append(packet(piece, offset=offset, more=offset + size < len(payload), **kw))
    return pieces


def test_whole_packet_is_delivered_without_copy() -> None:
    ip = make_ipv4()
    datagram = ip.handle(packet(b"hello"), T0)
    assert datagram is not None
    assert (datagram.src, datagram.dst, datagram.protocol) == (PEER_IP, OUR_IP, PROTOCOL_UDP)
    assert bytes(datagram.payload) == b"hello" and not datagram.broadcast


def test_packets_for_other_hosts_and_bad_sources_are_dropped_and_counted() -> None:
    ip = make_ipv4()
    assert ip.handle(packet(b"x", dst=bytes([10, 0, 0, 3])), T0) is None
    assert ip.handle(packet(b"x", src=bytes([224, 0, 0, 1])), T0) is None
    assert ip.stats["ipv4.not_for_us"] == 1 and ip.stats["ipv4.bad_source"] == 1
    assert ip.handle(packet(b"x", dst=b"\xff\xff\xff\xff"), T0).broadcast
    assert ip.handle(packet(b"x", dst=bytes([10, 0, 0, 255])), T0).broadcast


def test_routing_on_link_versus_gateway() -> None:
    ip = make_ipv4()
    assert ip.route(PEER_IP) == PEER_IP
    assert ip.route(bytes([10, 0, 0, 77])) == bytes([10, 0, 0, 77])
    assert ip.route(FAR_IP) == PEER_IP  # via the gateway 10.0.0.1
    no_gateway = Ipv4(Ipv4Config(ipaddress.IPv4Interface("10.0.0.2/24")), ArpCore(OUR_MAC, OUR_IP), OUR_MAC, 1500)
    assert no_gateway.route(FAR_IP) is None
    assert no_gateway.send(no_gateway.allocate(4), FAR_IP, PROTOCOL_UDP, T0) == []
    assert no_gateway.stats["ipv4.no_route"] == 1


def test_gateway_must_be_on_link() -> None:
    with pytest.raises(ValueError, match="not on the network"):
        Ipv4Config(ipaddress.IPv4Interface("10.0.0.2/24"), ipaddress.IPv4Address("10.1.0.1"))


def test_reassembly_in_any_order() -> None:
    payload = bytes(random.Random(1).randbytes(4000))
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        ip = make_ipv4()
        pieces = fragments(payload, 1480)
        results = [ip.handle(pieces[i], T0) for i in order]
        assert results[:2] == [None, None]
        assert bytes(results[2].payload) == payload
        assert bytes(results[2].packet[:12]) == bytes(pieces[0][:12])  # first fragment's header
        assert ip.reassembly_count() == 0


def test_exact_duplicate_fragment_is_ignored() -> None:
    ip = make_ipv4()
    pieces = fragments(bytes(3000), 1480)
    assert ip.handle(pieces[0], T0) is None
    assert ip.handle(pieces[0], T0) is None
    assert ip.stats["ipv4.fragment_duplicate"] == 1
    results = [ip.handle(p, T0) for p in pieces[1:]]
    assert results[-1] is not None and len(results[-1].payload) == 3000


def test_overlapping_fragments_poison_the_datagram() -> None:
    ip = make_ipv4()
    assert ip.handle(packet(bytes(16), offset=0, more=True), T0) is None
    assert ip.handle(packet(b"\x01" * 16, offset=8, more=False), T0) is None
    assert ip.stats["ipv4.fragment_overlap"] == 1
    # The rest of it cannot complete it; it is a tombstone until its lifetime ends.
    assert ip.handle(packet(bytes(8), offset=16, more=False), T0) is None
    assert ip.stats["ipv4.fragment_of_failed_datagram"] == 1
    ip.poll(T0 + 30 * SECOND)
    assert ip.reassembly_count() == 0


def test_at_most_sixteen_fragments() -> None:
    ip = make_ipv4()
    payload = bytes(17 * 8)
    results = [ip.handle(p, T0) for p in fragments(payload, 8)]
    assert results == [None] * 17
    assert ip.stats["ipv4.too_many_fragments"] == 1
    ip16 = make_ipv4()
    results = [ip16.handle(p, T0) for p in fragments(bytes(16 * 8), 8)]
    assert results[-1] is not None


def test_datagram_larger_than_64k_is_refused() -> None:
    ip = make_ipv4()
    assert ip.handle(packet(bytes(1480), offset=0, more=True), T0) is None
    # Ends at 65520 bytes of payload: with its 20-byte header, over 65535.
    assert ip.handle(packet(bytes(1520), offset=64000, more=False), T0) is None
    assert ip.stats["ipv4.fragment_too_big"] == 1
    from netstack.wire.ipv4 import Ipv4Error
    with pytest.raises(Ipv4Error):  # past 65535 even on the wire
        ip.handle(packet(bytes(600), offset=65000, more=False), T0)


def test_misaligned_middle_fragment_is_refused() -> None:
    ip = make_ipv4()
    assert ip.handle(packet(bytes(13), offset=0, more=True), T0) is None
    assert ip.stats["ipv4.fragment_misaligned"] == 1


def test_bounded_datagrams_in_flight() -> None:
    ip = make_ipv4(max_datagrams=4)
    for ident in range(10):
        ip.handle(packet(bytes(8), ident=ident, offset=0, more=True), T0)
    assert ip.reassembly_count() == 4
    assert ip.stats["ipv4.reassembly_full"] == 6


def test_reassembly_times_out_after_30_seconds_and_quotes_first_fragment() -> None:
    ip = make_ipv4()
    pieces = fragments(bytes(range(256)) * 12, 1480)
    ip.handle(pieces[0], T0)
    ip.handle(pieces[1], T0 + 10 * SECOND)
    assert ip.poll_at() == T0 + 30 * SECOND  # lifetime runs from the first fragment
    assert ip.poll(T0 + 30 * SECOND - 1) == []
    expired = ip.poll(T0 + 30 * SECOND)
    assert len(expired) == 1 and expired[0] == bytes(pieces[0][:28])
    assert ip.stats["ipv4.reassembly_timeout"] == 1
    assert ip.handle(pieces[2], T0 + 31 * SECOND) is None  # starts afresh, incomplete
    assert ip.reassembly_count() == 1


def test_timeout_without_first_fragment_quotes_nothing() -> None:
    ip = make_ipv4()
    ip.handle(fragments(bytes(3000), 1480)[1], T0)
    assert ip.poll(T0 + 30 * SECOND) == []
    assert ip.stats["ipv4.reassembly_timeout"] == 1


def test_send_fills_headers_in_place() -> None:
    ip = make_ipv4()
    ip.arp.handle(memoryview(_arp_reply()), T0)
    frame = ip.allocate(5)
    frame[HEADROOM:] = b"hello"
    (out,) = ip.send(frame, PEER_IP, PROTOCOL_UDP, T0)
    assert out is frame
    assert out[0:6] == PEER_MAC and out[6:12] == OUR_MAC and out[12:14] == b"\x08\x00"
    header = Ipv4Repr.parse(Ipv4Packet.new_checked(memoryview(out)[14:]))
    assert (header.src, header.dst, header.ttl, header.payload_len) == (OUR_IP, PEER_IP, 64, 5)


def test_fragmentation_on_output_round_trips_through_reassembly() -> None:
    sender = make_ipv4()
    sender.arp.handle(memoryview(_arp_reply()), T0)
    payload = random.Random(2).randbytes(4000)
    frame = sender.allocate(len(payload))
    frame[HEADROOM:] = payload
    out = sender.send(frame, PEER_IP, PROTOCOL_UDP, T0)
    assert len(out) == 3 and all(len(f) - 14 <= 1500 for f in out)
    offsets = [Ipv4Packet.new_checked(memoryview(f)[14:]).frag_offset for f in out]
    assert offsets == [0, 1480, 2960]
    receiver = Ipv4(Ipv4Config(ipaddress.IPv4Interface("10.0.0.1/24")), ArpCore(PEER_MAC, PEER_IP), PEER_MAC, 1500)
    results = [receiver.handle(memoryview(f)[14:], T0) for f in reversed(out)]
    assert bytes(results[-1].payload) == payload


def test_dont_fragment_too_big_is_refused() -> None:
    ip = make_ipv4()
    assert ip.send(ip.allocate(2000), PEER_IP, PROTOCOL_UDP, T0, dont_fragment=True) == []
    assert ip.stats["ipv4.too_big_dont_fragment"] == 1


def _arp_reply() -> bytes:
    from netstack.arp import build_frame
    from netstack.wire.arp import OPERATION_REPLY, ArpRepr
    return bytes(build_frame(PEER_MAC, OUR_MAC, ArpRepr(OPERATION_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP)))[14:]
