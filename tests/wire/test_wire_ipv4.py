"""IPv4 headers (RFC 791, RFC 1122): byte literals, every error reason, round trips, dpkt oracle."""

from __future__ import annotations

import dataclasses

import dpkt
import hypothesis.strategies as st
import pytest
from hypothesis import assume, given

from netstack.wire import checksum
from netstack.wire.ipv4 import (
    HEADER_LEN,
    PROTOCOL_ICMP,
    PROTOCOL_TCP,
    PROTOCOL_UDP,
    Ipv4Error,
    Ipv4Packet,
    Ipv4Repr,
    ip_from_str,
    ip_to_str,
)

# ping 10.0.0.2 from 10.0.0.1 (Linux: DF set, TTL 64, 56 bytes of data).
PING = bytes.fromhex(
    "450000544a3b40004001dc6b0a0000010a000002"
    "0800e3f11c2f0001a3b1d26500000000b5f30d0000000000101112131415"
    "161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435"
    "3637"
)

# The header from Wikipedia's "IPv4 header checksum" example, UDP, 115 bytes.
WIKIPEDIA_HEADER = bytes.fromhex("45000073" "00004000" "4011b861" "c0a80001" "c0a800c7")

# An IGMPv2 membership report for 224.0.0.251: IHL 6 with the Router Alert
# option (RFC 2113: 94 04 00 00), TOS 0xc0, TTL 1.
IGMP_WITH_OPTIONS = bytes.fromhex(
    "46c000200000400001024172c0a80102e00000fb" "94040000" "16000904e00000fb"
)

ips = st.binary(min_size=4, max_size=4)


@st.composite
def ipv4_reprs(draw, max_payload=2000):
    payload_len = draw(st.integers(0, max_payload))
    frag_offset = 8 * draw(st.integers(0, min(0x1FFF, (65535 - payload_len) // 8)))
    return Ipv4Repr(
        src=draw(ips),
        dst=draw(ips),
        protocol=draw(st.integers(0, 255)),
        payload_len=payload_len,
        ttl=draw(st.integers(0, 255)),
        ident=draw(st.integers(0, 0xFFFF)),
        dont_fragment=draw(st.booleans()),
        more_fragments=draw(st.booleans()),
        frag_offset=frag_offset,
        dscp_ecn=draw(st.integers(0, 255)),
    )


def emit(repr_: Ipv4Repr, payload: bytes = b"", **kwargs) -> bytearray:
    buf = bytearray(repr_.buffer_len() + repr_.payload_len)
    packet = Ipv4Packet(buf)
    repr_.emit(packet, **kwargs)
    packet.payload[:] = payload or bytes(repr_.payload_len)
    return buf


def test_parse_ping():
    packet = Ipv4Packet.new_checked(PING)
    assert packet.version == 4
    assert packet.header_len == 20
    assert packet.dscp_ecn == 0
    assert packet.total_length == 84
    assert packet.ident == 0x4A3B
    assert packet.dont_fragment is True
    assert packet.more_fragments is False
    assert packet.frag_offset == 0
    assert packet.ttl == 64
    assert packet.protocol == PROTOCOL_ICMP
    assert packet.checksum == 0xDC6B
    assert packet.src == bytes([10, 0, 0, 1])
    assert packet.dst == bytes([10, 0, 0, 2])
    assert len(packet.options) == 0
    assert bytes(packet.payload) == PING[20:]
    assert packet.verify_checksum()
    assert Ipv4Repr.parse(packet) == Ipv4Repr(
        src=bytes([10, 0, 0, 1]),
        dst=bytes([10, 0, 0, 2]),
        protocol=PROTOCOL_ICMP,
        payload_len=64,
        ttl=64,
        ident=0x4A3B,
        dont_fragment=True,
    )


def test_emit_ping_header_exactly():
    repr_ = Ipv4Repr.parse(Ipv4Packet.new_checked(PING))
    assert repr_.buffer_len() == HEADER_LEN
    buf = emit(repr_, PING[20:])
    assert bytes(buf) == PING


def test_wikipedia_header():
    packet = Ipv4Packet.new_checked(WIKIPEDIA_HEADER + bytes(95))
    assert packet.verify_checksum()
    assert packet.protocol == PROTOCOL_UDP
    assert ip_to_str(packet.src) == "192.168.0.1"
    assert ip_to_str(packet.dst) == "192.168.0.199"
    assert len(packet.payload) == 95
    buf = bytearray(WIKIPEDIA_HEADER)
    view = Ipv4Packet(buf)
    view.checksum = 0
    view.fill_checksum()
    assert view.checksum == 0xB861


def test_header_with_options_is_skipped():
    packet = Ipv4Packet.new_checked(IGMP_WITH_OPTIONS)
    assert packet.header_len == 24
    assert bytes(packet.options) == bytes.fromhex("94040000")
    assert bytes(packet.payload) == bytes.fromhex("16000904e00000fb")
    assert packet.verify_checksum()
    repr_ = Ipv4Repr.parse(packet)
    assert repr_ == Ipv4Repr(
        src=bytes([192, 168, 1, 2]),
        dst=bytes([224, 0, 0, 251]),
        protocol=2,
        payload_len=8,
        ttl=1,
        ident=0,
        dont_fragment=True,
        dscp_ecn=0xC0,
    )
    # The IGMP message in it is intact: its checksum covers only itself.
    assert checksum.is_valid(packet.payload)


def test_full_size_options():
    # IHL 15: 40 bytes of options (NOPs then End of Option List).
    buf = bytearray(60 + 4)
    packet = Ipv4Packet(buf)
    Ipv4Repr(bytes(4), bytes(4), PROTOCOL_UDP, 0).emit(packet)
    packet.header_len = 60
    packet.total_length = 64
    buf[20:59] = b"\x01" * 39
    packet.fill_checksum()
    parsed = Ipv4Packet.new_checked(buf)
    assert len(parsed.options) == 40
    assert Ipv4Repr.parse(parsed).payload_len == 4


def test_ethernet_padding_is_ignored():
    padded = PING[:20] + PING[20:] + bytes(30)
    packet = Ipv4Packet.new_checked(padded)
    assert bytes(packet.payload) == PING[20:]
    assert Ipv4Repr.parse(packet) == Ipv4Repr.parse(Ipv4Packet.new_checked(PING))
    # A minimum-size frame: 20-byte header + 8-byte UDP, padded to 46.
    small = bytearray(emit(Ipv4Repr(bytes(4), bytes(4), PROTOCOL_UDP, 8))) + bytes(18)
    assert len(Ipv4Packet.new_checked(small).payload) == 8


def test_fragment_fields():
    # The second fragment of a 3000-byte ping: offset 1480, MF set.
    repr_ = Ipv4Repr(
        src=bytes([10, 0, 0, 1]),
        dst=bytes([10, 0, 0, 2]),
        protocol=PROTOCOL_ICMP,
        payload_len=1480,
        ident=0x1234,
        more_fragments=True,
        frag_offset=1480,
    )
    buf = emit(repr_, b"\xab" * 1480)
    # flags/offset 20b9: MF (0x2000) | 1480 / 8 = 185 = 0xb9.
    assert bytes(buf[:20]) == bytes.fromhex("450005dc" "123420b9" "40012e32" "0a000001" "0a000002")
    packet = Ipv4Packet.new_checked(buf)
    assert packet.more_fragments and not packet.dont_fragment
    assert packet.frag_offset == 1480
    assert Ipv4Repr.parse(packet) == repr_


def test_setters():
    buf = bytearray(28)
    packet = Ipv4Packet(buf)
    packet.version = 4
    packet.header_len = 20
    packet.dscp_ecn = 0xB8
    packet.total_length = 28
    packet.ident = 0xBEEF
    packet.dont_fragment = True
    packet.more_fragments = True
    packet.frag_offset = 65528
    packet.ttl = 255
    packet.protocol = PROTOCOL_TCP
    packet.src = bytes([1, 2, 3, 4])
    packet.dst = bytes([5, 6, 7, 8])
    packet.fill_checksum()
    assert bytes(buf[:10]) == bytes.fromhex("45b8001cbeef7fffff06")
    assert packet.verify_checksum()
    packet.dont_fragment = False
    packet.more_fragments = False
    assert packet.frag_offset == 65528
    packet.frag_offset = 8
    assert buf[6:8] == b"\x00\x01"
    packet.checksum = 0x1234
    assert buf[10:12] == b"\x12\x34"
    assert packet.version == 4 and packet.header_len == 20


@pytest.mark.parametrize("value", [1, 4, 65529, 65536, -8])
def test_frag_offset_setter_rejects(value):
    with pytest.raises(ValueError):
        Ipv4Packet(bytearray(20)).frag_offset = value


@pytest.mark.parametrize("value", [16, 22, 64])
def test_header_len_setter_rejects(value):
    with pytest.raises(ValueError):
        Ipv4Packet(bytearray(20)).header_len = value


def test_emit_rejects_unaligned_fragment_offset():
    with pytest.raises(ValueError):
        emit(Ipv4Repr(bytes(4), bytes(4), PROTOCOL_UDP, 8, frag_offset=4))


def test_emit_without_checksum_leaves_zero():
    repr_ = Ipv4Repr.parse(Ipv4Packet.new_checked(PING))
    buf = emit(repr_, PING[20:], fill_checksum=False)
    assert buf[10:12] == b"\x00\x00"
    assert bytes(buf[:10]) == PING[:10] and bytes(buf[12:]) == PING[12:]


def _with(base: bytes, offset: int, value: bytes) -> bytes:
    buf = bytearray(base)
    buf[offset : offset + len(value)] = value
    return bytes(buf)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (PING[:19], "truncated"),
        (_with(PING, 0, b"\x65"), "bad_version"),  # an IPv6-ish first nibble
        (_with(PING, 0, b"\x05"), "bad_version"),
        (_with(PING, 0, b"\x44"), "bad_header_length"),
        (_with(PING, 0, b"\x40"), "bad_header_length"),
        (IGMP_WITH_OPTIONS[:23], "truncated"),  # the options do not fit
        (_with(PING, 0, b"\x4f")[:59], "truncated"),
        (_with(PING, 2, b"\x00\x13"), "bad_length"),  # total length 19 < 20
        (_with(IGMP_WITH_OPTIONS, 2, b"\x00\x16"), "bad_length"),  # 22 < 24
        (_with(PING, 2, b"\x00\x00"), "bad_length"),
        (PING[:83], "truncated"),  # total length 84 > 83 bytes
        (_with(PING, 2, b"\xff\xff"), "truncated"),
    ],
)
def test_new_checked_errors(data, reason):
    with pytest.raises(Ipv4Error) as info:
        Ipv4Packet.new_checked(data)
    assert info.value.reason == reason
    assert info.value.counter == f"ipv4.{reason}"


@pytest.mark.parametrize("length", range(len(PING)))
def test_every_prefix_is_rejected(length):
    with pytest.raises(Ipv4Error) as info:
        Ipv4Packet.new_checked(PING[:length])
    assert info.value.reason == "truncated"


@pytest.mark.parametrize("offset", range(20))
def test_bad_checksum(offset):
    # Flipping any header bit breaks the checksum (version/IHL/length flips
    # may be caught earlier, by new_checked).
    data = bytearray(PING)
    data[offset] ^= 0x01
    try:
        packet = Ipv4Packet.new_checked(data)
    except Ipv4Error:
        return
    assert not packet.verify_checksum()
    with pytest.raises(Ipv4Error) as info:
        Ipv4Repr.parse(packet)
    assert info.value.reason == "bad_checksum"
    # Without verification the header still parses (for checksum offload).
    assert Ipv4Repr.parse(packet, verify_checksum=False).payload_len == 64


def test_bad_checksum_in_options_is_caught():
    data = _with(IGMP_WITH_OPTIONS, 21, b"\x05")
    with pytest.raises(Ipv4Error) as info:
        Ipv4Repr.parse(Ipv4Packet.new_checked(data))
    assert info.value.reason == "bad_checksum"


def _fragment(offset_field: int, payload_len: int) -> bytes:
    buf = bytearray(20 + payload_len)
    packet = Ipv4Packet(buf)
    Ipv4Repr(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), PROTOCOL_ICMP, payload_len).emit(packet)
    buf[6:8] = offset_field.to_bytes(2, "big")
    packet.fill_checksum()
    return bytes(buf)


def test_bad_fragment():
    # Ping of death: the last fragment ends past 65535 octets.
    packet = Ipv4Packet.new_checked(_fragment(0x1FFF, 8))
    assert packet.frag_offset == 65528
    with pytest.raises(Ipv4Error) as info:
        Ipv4Repr.parse(packet)
    assert info.value.reason == "bad_fragment"
    with pytest.raises(Ipv4Error):
        Ipv4Repr.parse(Ipv4Packet.new_checked(_fragment(0x2000 | 8000, 1536)))


def test_largest_fragment_is_accepted():
    repr_ = Ipv4Repr.parse(Ipv4Packet.new_checked(_fragment(0x1FFF, 7)))
    assert repr_.frag_offset + repr_.payload_len == 65535


def test_ip_strings():
    assert ip_to_str(bytes([10, 0, 0, 2])) == "10.0.0.2"
    assert ip_to_str(bytes([255, 255, 255, 255])) == "255.255.255.255"
    assert ip_from_str("10.0.0.2") == bytes([10, 0, 0, 2])
    assert ip_from_str("0.0.0.0") == bytes(4)
    assert ip_from_str("192.168.100.255") == bytes([192, 168, 100, 255])


@pytest.mark.parametrize(
    "text",
    [
        "", "10.0.0", "10.0.0.2.1", "10.0.0.256", "10.0.0.02", "010.0.0.1", "10..0.1",
        "10.0.0.-1", "10.0.0.+1", " 10.0.0.1", "10.0.0.1 ", "a.b.c.d", "10.0.0.0x1",
        "\uff11.2.3.4",  # FULLWIDTH DIGIT ONE: str.isdigit() alone would accept it
        "10.0.0.1000", 167772162,
    ],
)
def test_ip_from_str_rejects(text):
    with pytest.raises(ValueError):
        ip_from_str(text)


@pytest.mark.parametrize("value", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_ip_to_str_rejects(value):
    with pytest.raises(ValueError):
        ip_to_str(value)


@given(ips)
def test_ip_string_round_trip(address):
    assert ip_from_str(ip_to_str(address)) == address


@given(ipv4_reprs())
def test_round_trip(repr_):
    buf = emit(repr_)
    packet = Ipv4Packet.new_checked(bytes(buf))
    assert packet.verify_checksum()
    assert Ipv4Repr.parse(packet) == repr_
    assert len(packet.payload) == repr_.payload_len


@given(ipv4_reprs(max_payload=65515))
def test_round_trip_any_size(repr_):
    assert Ipv4Repr.parse(Ipv4Packet.new_checked(emit(repr_))) == repr_


@given(ipv4_reprs(max_payload=64), st.binary(max_size=32))
def test_trailing_bytes_change_nothing(repr_, trailer):
    buf = emit(repr_) + trailer
    packet = Ipv4Packet.new_checked(buf)
    assert Ipv4Repr.parse(packet) == repr_
    assert len(packet.payload) == repr_.payload_len


# dpkt decodes the payload by protocol number; keep it to numbers it leaves
# as raw bytes so only the header is compared.
raw_protocols = st.sampled_from([0, 2, 4, 41, 89, 132, 253, 254])


@given(ipv4_reprs(max_payload=256), raw_protocols)
def test_dpkt_parses_what_we_emit(repr_, protocol):
    repr_ = dataclasses.replace(repr_, protocol=protocol)
    wire = bytes(emit(repr_))
    theirs = dpkt.ip.IP(wire)
    assert (theirs.v, theirs.hl, theirs.tos) == (4, 5, repr_.dscp_ecn)
    assert theirs.len == 20 + repr_.payload_len
    assert (theirs.id, theirs.ttl, theirs.p, theirs.src, theirs.dst) == (
        repr_.ident,
        repr_.ttl,
        repr_.protocol,
        repr_.src,
        repr_.dst,
    )
    assert (bool(theirs.df), bool(theirs.mf), theirs.offset * 8, theirs.rf) == (
        repr_.dont_fragment,
        repr_.more_fragments,
        repr_.frag_offset,
        0,
    )
    # dpkt's own checksum of the header we wrote.
    assert theirs.sum == dpkt.in_cksum(wire[:10] + b"\x00\x00" + wire[12:20])


@given(
    ips,
    ips,
    raw_protocols,
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 255),
    st.booleans(),
    st.booleans(),
    st.integers(0, 0x1FFF),
    st.binary(max_size=10).map(lambda b: b + bytes(-len(b) % 4)),
    st.binary(max_size=128),
)
def test_we_parse_what_dpkt_builds(
    src, dst, protocol, tos, ident, ttl, df, mf, offset, opts, payload
):
    assume(offset * 8 + len(payload) <= 65535)
    theirs = dpkt.ip.IP(
        src=src, dst=dst, p=protocol, tos=tos, id=ident, ttl=ttl, df=int(df), mf=int(mf),
        offset=offset, data=payload,
    )
    theirs.opts = opts
    theirs.hl = 5 + len(opts) // 4
    wire = bytes(theirs)
    packet = Ipv4Packet.new_checked(wire)
    assert packet.checksum == theirs.sum
    assert bytes(packet.options) == opts
    assert bytes(packet.payload) == payload
    assert Ipv4Repr.parse(packet) == Ipv4Repr(
        src=src,
        dst=dst,
        protocol=protocol,
        payload_len=len(payload),
        ttl=ttl,
        ident=ident,
        dont_fragment=df,
        more_fragments=mf,
        frag_offset=offset * 8,
        dscp_ecn=tos,
    )
