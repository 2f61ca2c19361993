"""Fuzz the whole receive chain: bytes from the network raise only declared WireErrors.

100,000 frames, seeded: mutations of valid frames (bit flips, byte
overwrites, truncation, extension, length-field edits, splices, with the
IPv4 and transport checksums sometimes repaired so that mutations reach the
inner layers) and wholly random bytes, fed through Ethernet -> ARP or IPv4
-> ICMP, UDP or TCP, with checksum verification on or off. Every accessor of
every view that ``new_checked`` accepted is read, since none may fail.

The TCP section at the end also fuzzes bare segments, aiming at the header
length and the options, and checks that whatever parses can be emitted
again.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time

from netstack.wire import WireError, checksum
from netstack.wire.arp import ArpError, ArpPacket, ArpRepr
from netstack.wire.ethernet import (
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    EthernetError,
    EthernetFrame,
    EthernetRepr,
)
from netstack.wire.icmpv4 import Icmpv4Error, Icmpv4Packet, Icmpv4Repr
from netstack.wire.ipv4 import (
    PROTOCOL_ICMP,
    PROTOCOL_TCP,
    PROTOCOL_UDP,
    Ipv4Error,
    Ipv4Packet,
    Ipv4Repr,
)
from netstack.wire.tcp import TcpError, TcpPacket, TcpRepr, parse_options
from netstack.wire.udp import UdpError, UdpPacket, UdpRepr

DECLARED = {
    EthernetError: {"truncated", "unsupported_length_field"},
    ArpError: {
        "truncated",
        "unsupported_hardware",
        "unsupported_protocol",
        "bad_length",
        "unsupported_operation",
    },
    Ipv4Error: {
        "truncated",
        "bad_version",
        "bad_header_length",
        "bad_length",
        "bad_checksum",
        "bad_fragment",
    },
    Icmpv4Error: {"truncated", "bad_checksum"},
    UdpError: {"truncated", "bad_length", "bad_checksum", "bad_port"},
    TcpError: {"truncated", "bad_header_length", "bad_checksum", "bad_port", "bad_option"},
}

_ETH_IP = "020000000002" "020000000001" "0800"
_BYTE_VALUES = (0, 1, 4, 5, 6, 7, 8, 0x0F, 0x40, 0x45, 0x4F, 0x80, 0xFF)
_LENGTHS = (0, 7, 8, 19, 20, 21, 28, 0xFFFF)
_FRAGMENT_FIELDS = (0x1FFF, 0x3FFF, 0x2000, 0x4000)
SEEDS = [
    # ARP request, padded to 60 bytes.
    bytes.fromhex(
        "ffffffffffff00070daff4540806000108000604000100070daff45418a6ac01"
        "00000000000018a6ad9f000000000000000000000000000000000000"
    ),
    # ping echo request.
    bytes.fromhex(
        _ETH_IP + "450000544a3b40004001dc6b0a0000010a000002"
        "0800e3f11c2f0001a3b1d26500000000b5f30d0000000000101112131415"
        "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435"
        "3637"
    ),
    # DNS query over UDP.
    bytes.fromhex(
        "00112233445566778899aabb080045000039beef00004011ea0ac0a801020808"
        "0808cf080035002575131a2b01000001000000000000076578616d706c650363"
        "6f6d0000010001"
    ),
    # IGMP report with the Router Alert option (IHL 6), padded.
    bytes.fromhex(_ETH_IP + "46c000200000400001024172c0a80102e00000fb9404000016000904e00000fb")
    + bytes(14),
    # ICMP port unreachable quoting the DNS query.
    bytes.fromhex(
        _ETH_IP + "45000038000040004001690b08080808c0a80102"
        "0303b8860000000045000039beef00004011ea0ac0a8010208080808cf08003500257513"
    ),
    # A middle fragment (MF, offset 1480) of an ICMP datagram.
    bytes.fromhex(_ETH_IP + "4500003c123420b9400133d20a0000010a000002") + bytes(range(40)),
    # Linux's SYN: MSS, SACK-permitted + timestamps, NOP + window scale.
    bytes.fromhex(
        _ETH_IP + "4500003c62f340004006c3c60a0000010a000002"
        "b8c00050c2d006c800000000a002faf026350000020405b40402080abbe5d445000000000103030a"
    ),
    # Linux sending data: NOP NOP timestamps, NOP NOP SACK, 13 bytes.
    bytes.fromhex(
        _ETH_IP + "4500004d596540004006cd430a0000010a000002"
        "1f909c4013cb690c000010c9b01800402d6800000101080a291f1b60000003ec0101050a0000112d00001191"
    )
    + b"hello, world\n",
]


def _fix_checksums(buf: bytearray) -> None:
    """Make the IPv4 and transport checksums right again, where the lengths allow it."""
    if len(buf) < 34 or buf[12:14] != b"\x08\x00":
        return
    ihl = (buf[14] & 0x0F) * 4
    if ihl < 20 or 14 + ihl > len(buf):
        return
    buf[24:26] = b"\x00\x00"
    buf[24:26] = checksum.checksum(buf[14 : 14 + ihl]).to_bytes(2, "big")
    total = (buf[16] << 8) | buf[17]
    end = min(14 + total, len(buf))
    body = 14 + ihl
    if end - body < 8:
        return
    if buf[23] == PROTOCOL_ICMP:
        buf[body + 2 : body + 4] = b"\x00\x00"
        buf[body + 2 : body + 4] = checksum.checksum(buf[body:end]).to_bytes(2, "big")
    elif buf[23] == PROTOCOL_UDP:
        length = min((buf[body + 4] << 8) | buf[body + 5], end - body)
        if length >= 8:
            buf[body + 6 : body + 8] = b"\x00\x00"
            initial = checksum.pseudo_header_ipv4(bytes(buf[26:30]), bytes(buf[30:34]), 17, length)
            value = checksum.checksum(buf[body : body + length], initial) or 0xFFFF
            buf[body + 6 : body + 8] = value.to_bytes(2, "big")
    elif buf[23] == PROTOCOL_TCP and end - body >= 18:
        buf[body + 16 : body + 18] = b"\x00\x00"
        initial = checksum.pseudo_header_ipv4(bytes(buf[26:30]), bytes(buf[30:34]), 6, end - body)
        buf[body + 16 : body + 18] = checksum.checksum(buf[body:end], initial).to_bytes(2, "big")


def mutate(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.05:
        return rng.randbytes(rng.randrange(0, 120))
    buf = bytearray(rng.choice(SEEDS))
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(7)
        if kind == 0 and buf:  # bit flips
            for _ in range(rng.randrange(1, 9)):
                bit = rng.randrange(len(buf) * 8)
                buf[bit >> 3] ^= 1 << (bit & 7)
        elif kind == 1 and buf:  # overwrite bytes with random or boundary values
            for _ in range(rng.randrange(1, 5)):
                value = rng.choice(_BYTE_VALUES) if rng.random() < 0.5 else rng.randrange(256)
                buf[rng.randrange(len(buf))] = value
        elif kind == 2:  # truncate
            del buf[rng.randrange(0, len(buf) + 1) :]
        elif kind == 3:  # extend
            buf += rng.randbytes(rng.randrange(1, 64))
        elif kind == 4 and len(buf) >= 44:  # IPv4 total length / UDP or ICMP header fields
            offset = rng.choice((16, 34 + 4, 34 + 2, 38, 14))
            value = rng.choice(_LENGTHS) if rng.random() < 0.7 else rng.randrange(0x10000)
            buf[offset : offset + 2] = value.to_bytes(2, "big")
        elif kind == 5:  # splice two frames
            other = rng.choice(SEEDS)
            cut = rng.randrange(0, len(buf) + 1)
            buf = buf[:cut] + other[rng.randrange(0, len(other) + 1) :]
        elif kind == 6 and len(buf) >= 22:  # fragment fields
            value = rng.choice(_FRAGMENT_FIELDS) if rng.random() < 0.7 else rng.randrange(0x10000)
            buf[20:22] = value.to_bytes(2, "big")
    if rng.random() < 0.6:
        _fix_checksums(buf)
    return bytes(buf)


def _touch(view, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(view, name)
        if isinstance(value, memoryview):
            bytes(value)


_ARP_FIELDS = ("hardware_type", "protocol_type", "hardware_len", "protocol_len", "operation",
               "sender_mac", "sender_ip", "target_mac", "target_ip")
_IPV4_FIELDS = ("version", "header_len", "dscp_ecn", "total_length", "ident", "dont_fragment",
                "more_fragments", "frag_offset", "ttl", "protocol", "checksum", "src", "dst",
                "options", "payload")
_ICMP_FIELDS = ("type", "code", "checksum", "rest", "ident", "sequence", "data")
_UDP_FIELDS = ("src_port", "dst_port", "length", "checksum", "payload")
_TCP_FIELDS = ("src_port", "dst_port", "seq", "ack", "header_len", "flags", "window", "checksum",
               "urgent", "options", "payload")


def parse_chain(data: bytes, verify: bool) -> str:
    """What a receive path does with one frame; returns what it found."""
    frame = EthernetFrame.new_checked(data)
    frame.dst, frame.src, bytes(frame.payload)
    ethernet = EthernetRepr.parse(frame)
    if ethernet.ethertype == ETHERTYPE_ARP:
        arp = ArpPacket.new_checked(frame.payload)
        _touch(arp, _ARP_FIELDS)
        ArpRepr.parse(arp)
        return "arp"
    if ethernet.ethertype != ETHERTYPE_IPV4:
        return "other_ethertype"
    ip = Ipv4Packet.new_checked(frame.payload)
    _touch(ip, _IPV4_FIELDS)
    ip.verify_checksum()
    ip_repr = Ipv4Repr.parse(ip, verify_checksum=verify)
    if ip_repr.more_fragments or ip_repr.frag_offset:
        return "fragment"
    if ip_repr.protocol == PROTOCOL_ICMP:
        icmp = Icmpv4Packet.new_checked(ip.payload)
        _touch(icmp, _ICMP_FIELDS)
        icmp_repr = Icmpv4Repr.parse(icmp, verify_checksum=verify)
        icmp_repr.ident, icmp_repr.sequence, bytes(icmp_repr.data)
        return "icmp"
    if ip_repr.protocol == PROTOCOL_UDP:
        udp = UdpPacket.new_checked(ip.payload)
        _touch(udp, _UDP_FIELDS)
        udp.verify_checksum(ip_repr.src, ip_repr.dst)
        UdpRepr.parse(udp, ip_repr.src, ip_repr.dst, verify_checksum=verify)
        return "udp"
    if ip_repr.protocol == PROTOCOL_TCP:
        tcp = TcpPacket.new_checked(ip.payload)
        _touch(tcp, _TCP_FIELDS)
        length = len(tcp.buffer)
        pseudo_sum = checksum.pseudo_header_ipv4(ip_repr.src, ip_repr.dst, PROTOCOL_TCP, length)
        tcp.verify_checksum(pseudo_sum)
        TcpRepr.parse(tcp, pseudo_sum if verify else None)
        return "tcp"
    return "other_protocol"


def test_seeds_parse():
    outcomes = [parse_chain(seed, True) for seed in SEEDS]
    assert outcomes == ["arp", "icmp", "udp", "other_protocol", "icmp", "fragment", "tcp", "tcp"]


def test_only_declared_errors():
    rng = random.Random(0x5EED)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for _ in range(100_000):
        data = mutate(rng)
        verify = rng.random() < 0.7
        try:
            outcomes[parse_chain(data, verify)] += 1
        except WireError as error:
            assert type(error) in DECLARED, repr(error)
            assert error.reason in DECLARED[type(error)], repr(error)
            outcomes[error.counter] += 1
        except Exception as error:  # pragma: no cover - the failure we look for
            raise AssertionError(
                f"{type(error).__name__}: {error} for frame {data.hex()} verify={verify}"
            ) from error
    elapsed = time.monotonic() - started
    # The fuzz must reach every layer, succeed there, and produce every declared error.
    expected = {"arp", "icmp", "udp", "tcp", "fragment", "other_ethertype", "other_protocol"}
    expected |= {f"{error.layer}.{r}" for error, reasons in DECLARED.items() for r in reasons}
    assert expected <= set(outcomes), (expected - set(outcomes), outcomes)
    assert elapsed < 20, elapsed


# -- TCP: bare segments, aimed at the header length and the options -----------------

_TCP_SEEDS = [
    SEEDS[6][34:],  # Linux's SYN
    SEEDS[7][34:],  # Linux sending data with timestamps and SACK
    # A Linux duplicate ACK with two SACK blocks.
    bytes.fromhex(
        "1f909c4013cb690c00001001d010004037560000"
        "0101080a291f1b60000003e9010105120000112d0000119100001065000010c9"
    ),
    # A bare ACK, no options.
    bytes.fromhex("1f909c4013cb690c000010c95010004052210000"),
]
_OPTION_BYTE_VALUES = (0, 1, 2, 3, 4, 5, 8, 10, 12, 18, 26, 34, 0x0F, 0x1E, 0xFE, 0xFF)
_TCP_SRC = bytes([10, 0, 0, 1])
_TCP_DST = bytes([10, 0, 0, 2])


def _tcp_pseudo_sum(length: int) -> int:
    return checksum.pseudo_header_ipv4(_TCP_SRC, _TCP_DST, PROTOCOL_TCP, length)


def mutate_tcp(rng: random.Random) -> bytes:
    if rng.random() < 0.05:
        return rng.randbytes(rng.randrange(0, 80))
    buf = bytearray(rng.choice(_TCP_SEEDS))
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(6)
        if kind == 0 and buf:  # bit flips
            for _ in range(rng.randrange(1, 5)):
                bit = rng.randrange(len(buf) * 8)
                buf[bit >> 3] ^= 1 << (bit & 7)
        elif kind == 1 and len(buf) > 20:  # option kinds and lengths
            for _ in range(rng.randrange(1, 5)):
                offset = rng.randrange(20, min(len(buf), 60))
                if rng.random() < 0.7:
                    buf[offset] = rng.choice(_OPTION_BYTE_VALUES)
                else:
                    buf[offset] = rng.randrange(256)
        elif kind == 2 and len(buf) > 12:  # data offset, sometimes with the reserved bits
            buf[12] = (rng.randrange(16) << 4) | (rng.randrange(16) if rng.random() < 0.2 else 0)
        elif kind == 3:  # truncate
            del buf[rng.randrange(0, len(buf) + 1) :]
        elif kind == 4:  # extend: more options or payload
            buf += rng.randbytes(rng.randrange(1, 32))
        elif kind == 5 and len(buf) >= 4:  # a zero port
            offset = rng.choice((0, 2))
            buf[offset : offset + 2] = b"\x00\x00"
    if rng.random() < 0.7 and len(buf) >= 18:
        buf[16:18] = b"\x00\x00"
        buf[16:18] = checksum.checksum(buf, _tcp_pseudo_sum(len(buf))).to_bytes(2, "big")
    return bytes(buf)


def parse_segment(data: bytes, verify: bool) -> TcpRepr:
    tcp = TcpPacket.new_checked(data)
    _touch(tcp, _TCP_FIELDS)
    pseudo_sum = _tcp_pseudo_sum(len(data))
    tcp.verify_checksum(pseudo_sum)
    return TcpRepr.parse(tcp, pseudo_sum if verify else None)


def _emit_again(repr_: TcpRepr, payload: memoryview) -> bytes:
    header_len = repr_.buffer_len()
    buf = bytearray(header_len + len(payload))
    buf[header_len:] = payload
    repr_.emit(TcpPacket(buf), len(payload), _tcp_pseudo_sum(len(buf)))
    return bytes(buf)


def test_tcp_seeds_parse():
    for seed in _TCP_SEEDS:
        parse_segment(seed, True)


def test_tcp_segments_only_declared_errors():
    rng = random.Random(0x7C9)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for _ in range(50_000):
        data = mutate_tcp(rng)
        verify = rng.random() < 0.7
        try:
            repr_ = parse_segment(data, verify)
        except TcpError as error:
            assert error.reason in DECLARED[TcpError], repr(error)
            outcomes[error.counter] += 1
            continue
        except Exception as error:  # pragma: no cover - the failure we look for
            raise AssertionError(
                f"{type(error).__name__}: {error} for segment {data.hex()} verify={verify}"
            ) from error
        options = repr_.options
        outcomes["tcp"] += 1
        outcomes.update(
            name for name in ("mss", "window_scale", "sack_permitted", "sack_blocks", "timestamp")
            if getattr(options, name) not in (None, False, ())
        )
        # Whatever parses can be sent again and reads back the same, except
        # that emit writes only the SACK blocks that fit beside the rest.
        again = parse_segment(_emit_again(repr_, TcpPacket(data).payload), True)
        kept = again.options.sack_blocks
        assert kept == options.sack_blocks[: len(kept)]
        assert len(kept) >= min(len(options.sack_blocks), 2)
        expected = dataclasses.replace(options, sack_blocks=kept)
        assert again == dataclasses.replace(repr_, options=expected)
    # Random option areas: parse_options raises bad_option or nothing.
    for _ in range(20_000):
        area = rng.randbytes(rng.randrange(0, 44))
        try:
            parse_options(area)
        except TcpError as error:
            assert error.reason == "bad_option", repr(error)
            outcomes["random_options.bad_option"] += 1
        else:
            outcomes["random_options"] += 1
    elapsed = time.monotonic() - started
    expected = {"tcp", "mss", "window_scale", "sack_permitted", "sack_blocks", "timestamp"}
    expected |= {"random_options", "random_options.bad_option"}
    expected |= {f"tcp.{reason}" for reason in DECLARED[TcpError]}
    assert expected <= set(outcomes), (expected - set(outcomes), outcomes)
    assert elapsed < 20, elapsed
