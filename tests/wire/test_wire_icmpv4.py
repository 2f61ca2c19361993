"""ICMPv4 (RFC 792, RFC 1191): byte literals, every error reason, round trips, dpkt oracle."""

from __future__ import annotations

import dpkt
import hypothesis.strategies as st
import pytest
from hypothesis import given

from netstack.wire.icmpv4 import (
    CODE_FRAGMENTATION_NEEDED,
    CODE_PORT_UNREACHABLE,
    CODE_REASSEMBLY_TIME_EXCEEDED,
    CODE_TTL_EXCEEDED,
    HEADER_LEN,
    TYPE_DEST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    TYPE_TIME_EXCEEDED,
    Icmpv4Error,
    Icmpv4Packet,
    Icmpv4Repr,
)

PING_DATA = bytes.fromhex("a3b1d26500000000b5f30d0000000000") + bytes(range(0x10, 0x38))

# Linux ping: echo request, id 0x1c2f, sequence 1, 56 bytes of data.
ECHO_REQUEST = bytes.fromhex("0800e3f11c2f0001") + PING_DATA
# Its reply: only the type and the checksum change.
ECHO_REPLY = bytes.fromhex("0000ebf11c2f0001") + PING_DATA

# The IP header and first 8 bytes of a DNS query 192.168.1.2:53000 -> 8.8.8.8:53.
QUOTED = bytes.fromhex("45000039beef00004011ea0ac0a8010208080808" "cf08003500257513")
PORT_UNREACHABLE = bytes.fromhex("0303b88600000000") + QUOTED
# RFC 1191: code 4 with the next-hop MTU (1400 = 0x0578) in the low 16 bits.
FRAGMENTATION_NEEDED = bytes.fromhex("0304b30d00000578") + QUOTED

datas = st.binary(max_size=256)
bytes_ = st.integers(0, 255)
icmp_reprs = st.builds(Icmpv4Repr, bytes_, bytes_, st.integers(0, 2**32 - 1), datas)
echoes = st.sampled_from([TYPE_ECHO_REQUEST, TYPE_ECHO_REPLY])
words = st.integers(0, 0xFFFF)


def emit(repr_: Icmpv4Repr, **kwargs) -> bytearray:
    buf = bytearray(repr_.buffer_len())
    repr_.emit(Icmpv4Packet(buf), **kwargs)
    return buf


def test_parse_echo_request():
    packet = Icmpv4Packet.new_checked(ECHO_REQUEST)
    assert packet.type == TYPE_ECHO_REQUEST
    assert packet.code == 0
    assert packet.checksum == 0xE3F1
    assert packet.rest == 0x1C2F0001
    assert packet.ident == 0x1C2F
    assert packet.sequence == 1
    assert bytes(packet.data) == PING_DATA
    assert packet.verify_checksum()
    repr_ = Icmpv4Repr.parse(packet)
    assert repr_ == Icmpv4Repr.echo_request(0x1C2F, 1, PING_DATA)
    assert (repr_.ident, repr_.sequence) == (0x1C2F, 1)


def test_parse_does_not_copy_data():
    buf = bytearray(ECHO_REQUEST)
    repr_ = Icmpv4Repr.parse(Icmpv4Packet.new_checked(buf))
    assert isinstance(repr_.data, memoryview)
    buf[8] = 0x00
    assert repr_.data[0] == 0x00


def test_echo_reply_from_request():
    request = Icmpv4Repr.parse(Icmpv4Packet.new_checked(ECHO_REQUEST))
    reply = Icmpv4Repr.echo_reply(request.ident, request.sequence, request.data)
    assert bytes(emit(reply)) == ECHO_REPLY
    assert Icmpv4Repr.parse(Icmpv4Packet.new_checked(ECHO_REPLY)) == reply


def test_echo_reply_in_place():
    # The data memoryview aliases the buffer being emitted into.
    buf = bytearray(ECHO_REQUEST)
    request = Icmpv4Repr.parse(Icmpv4Packet.new_checked(buf))
    Icmpv4Repr.echo_reply(request.ident, request.sequence, request.data).emit(Icmpv4Packet(buf))
    assert bytes(buf) == ECHO_REPLY


def test_dest_unreachable():
    repr_ = Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, QUOTED)
    assert (repr_.type, repr_.code, repr_.rest) == (TYPE_DEST_UNREACHABLE, CODE_PORT_UNREACHABLE, 0)
    assert bytes(emit(repr_)) == PORT_UNREACHABLE
    assert repr_.buffer_len() == HEADER_LEN + 28
    # next_hop_mtu only means something for code 4.
    assert Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, QUOTED, next_hop_mtu=1400).rest == 0


def test_fragmentation_needed():
    repr_ = Icmpv4Repr.dest_unreachable(CODE_FRAGMENTATION_NEEDED, QUOTED, next_hop_mtu=1400)
    assert repr_.rest == 1400
    assert bytes(emit(repr_)) == FRAGMENTATION_NEEDED
    parsed = Icmpv4Repr.parse(Icmpv4Packet.new_checked(FRAGMENTATION_NEEDED))
    assert parsed == repr_
    assert parsed.sequence == 1400


@pytest.mark.parametrize("code", [CODE_TTL_EXCEEDED, CODE_REASSEMBLY_TIME_EXCEEDED])
def test_time_exceeded(code):
    repr_ = Icmpv4Repr.time_exceeded(code, QUOTED)
    buf = emit(repr_)
    assert buf[0:2] == bytes([TYPE_TIME_EXCEEDED, code])
    assert buf[4:8] == bytes(4)
    assert Icmpv4Repr.parse(Icmpv4Packet.new_checked(buf)) == repr_


def test_setters():
    packet = Icmpv4Packet(bytearray(8 + len(PING_DATA)))
    packet.type = TYPE_ECHO_REQUEST
    packet.code = 0
    packet.ident = 0x1C2F
    packet.sequence = 1
    packet.data[:] = PING_DATA
    packet.fill_checksum()
    assert bytes(packet.buffer) == ECHO_REQUEST
    packet.rest = 0xDEADBEEF
    assert (packet.ident, packet.sequence) == (0xDEAD, 0xBEEF)
    packet.checksum = 0x1234
    assert packet.buffer[2:4] == b"\x12\x34"
    assert not packet.verify_checksum()


def test_emit_without_checksum_and_into_a_larger_buffer():
    repr_ = Icmpv4Repr.echo_request(1, 2, b"abc")
    assert emit(repr_, fill_checksum=False)[2:4] == b"\x00\x00"
    big = bytearray(b"\xee" * 32)
    repr_.emit(Icmpv4Packet(big))
    assert big[:11] == emit(repr_)
    assert big[11:] == b"\xee" * 21


@pytest.mark.parametrize("length", range(HEADER_LEN))
def test_truncated(length):
    with pytest.raises(Icmpv4Error) as info:
        Icmpv4Packet.new_checked(ECHO_REQUEST[:length])
    assert info.value.reason == "truncated"
    assert info.value.counter == "icmpv4.truncated"


def test_header_only_message():
    repr_ = Icmpv4Repr.echo_request(7, 9)
    buf = emit(repr_)
    assert len(buf) == 8
    assert Icmpv4Repr.parse(Icmpv4Packet.new_checked(buf)) == repr_


@pytest.mark.parametrize("offset", range(len(ECHO_REQUEST)))
def test_bad_checksum(offset):
    data = bytearray(ECHO_REQUEST)
    data[offset] ^= 0x80
    packet = Icmpv4Packet.new_checked(data)
    assert not packet.verify_checksum()
    with pytest.raises(Icmpv4Error) as info:
        Icmpv4Repr.parse(packet)
    assert info.value.reason == "bad_checksum"
    assert Icmpv4Repr.parse(packet, verify_checksum=False).type == data[0]


def test_truncated_message_fails_checksum():
    # A message cut short (odd length included) no longer sums to all ones.
    with pytest.raises(Icmpv4Error) as info:
        Icmpv4Repr.parse(Icmpv4Packet.new_checked(ECHO_REQUEST[:-3]))
    assert info.value.reason == "bad_checksum"


@given(icmp_reprs)
def test_round_trip(repr_):
    buf = emit(repr_)
    packet = Icmpv4Packet.new_checked(bytes(buf))
    assert packet.verify_checksum()
    assert Icmpv4Repr.parse(packet) == repr_


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), datas)
def test_echo_round_trip(ident, sequence, data):
    for make in (Icmpv4Repr.echo_request, Icmpv4Repr.echo_reply):
        repr_ = make(ident, sequence, data)
        parsed = Icmpv4Repr.parse(Icmpv4Packet.new_checked(emit(repr_)))
        assert parsed == repr_
        assert (parsed.ident, parsed.sequence, bytes(parsed.data)) == (ident, sequence, data)


@given(echoes, words, words, datas)
def test_dpkt_parses_echo_we_emit(type_, ident, sequence, data):
    wire = bytes(emit(Icmpv4Repr(type_, 0, (ident << 16) | sequence, data)))
    theirs = dpkt.icmp.ICMP(wire)
    assert (theirs.type, theirs.code) == (type_, 0)
    assert (theirs.data.id, theirs.data.seq, theirs.data.data) == (ident, sequence, data)
    assert theirs.sum == dpkt.in_cksum(wire[:2] + b"\x00\x00" + wire[4:])


@given(st.integers(0, 15), st.integers(0, 0xFFFF))
def test_dpkt_parses_unreachable_we_emit(code, mtu):
    wire = bytes(emit(Icmpv4Repr.dest_unreachable(code, QUOTED, next_hop_mtu=mtu)))
    theirs = dpkt.icmp.ICMP(wire)
    assert (theirs.type, theirs.code) == (TYPE_DEST_UNREACHABLE, code)
    assert theirs.data.mtu == (mtu if code == CODE_FRAGMENTATION_NEEDED else 0)
    quoted = theirs.data.data
    assert (quoted.src, quoted.dst, quoted.p) == (bytes([192, 168, 1, 2]), bytes([8, 8, 8, 8]), 17)
    assert theirs.sum == dpkt.in_cksum(wire[:2] + b"\x00\x00" + wire[4:])


@given(echoes, words, words, datas)
def test_we_parse_echo_dpkt_builds(type_, ident, sequence, data):
    echo = dpkt.icmp.ICMP.Echo(id=ident, seq=sequence, data=data)
    theirs = dpkt.icmp.ICMP(type=type_, code=0, data=echo)
    wire = bytes(theirs)
    packet = Icmpv4Packet.new_checked(wire)
    assert packet.checksum == theirs.sum
    assert Icmpv4Repr.parse(packet) == Icmpv4Repr(type_, 0, (ident << 16) | sequence, data)


@given(st.integers(0, 255), st.integers(0, 255), st.binary(max_size=64))
def test_we_parse_any_type_dpkt_builds(type_, code, body):
    # dpkt carries the 4 "rest" bytes as the start of its data for types it does not know.
    theirs = dpkt.icmp.ICMP(type=type_, code=code, data=bytes(4) + body)
    wire = bytes(theirs)
    repr_ = Icmpv4Repr.parse(Icmpv4Packet.new_checked(wire))
    assert (repr_.type, repr_.code, repr_.rest, bytes(repr_.data)) == (type_, code, 0, body)
