"""ARP packets (RFC 826): byte literals, every error reason, round trips, dpkt oracle."""

from __future__ import annotations

import socket

import dpkt
import hypothesis.strategies as st
import pytest
from hypothesis import given

from netstack.wire.arp import (
    HEADER_LEN,
    OPERATION_REPLY,
    OPERATION_REQUEST,
    ArpError,
    ArpPacket,
    ArpRepr,
)

# "Who has 24.166.173.159? Tell 24.166.172.1", as it arrives after the
# Ethernet header: 28 bytes of ARP then 18 bytes of padding to 60.
REQUEST = bytes.fromhex(
    "0001" "0800" "06" "04" "0001"
    "00070daff454" "18a6ac01"
    "000000000000" "18a6ad9f"
) + bytes(18)

# "24.166.173.159 is at 00:14:22:33:44:55", 28 bytes, no padding.
REPLY = bytes.fromhex(
    "0001" "0800" "06" "04" "0002"
    "001422334455" "18a6ad9f"
    "00070daff454" "18a6ac01"
)

macs = st.binary(min_size=6, max_size=6)
ips = st.binary(min_size=4, max_size=4)
operations = st.sampled_from([OPERATION_REQUEST, OPERATION_REPLY])
arp_reprs = st.builds(ArpRepr, operations, macs, ips, macs, ips)


def test_parse_request():
    packet = ArpPacket.new_checked(REQUEST)
    assert packet.hardware_type == 1
    assert packet.protocol_type == 0x0800
    assert packet.hardware_len == 6
    assert packet.protocol_len == 4
    assert packet.operation == OPERATION_REQUEST
    assert packet.sender_mac == bytes.fromhex("00070daff454")
    assert packet.sender_ip == bytes([24, 166, 172, 1])
    assert packet.target_mac == bytes(6)
    assert packet.target_ip == bytes([24, 166, 173, 159])
    assert ArpRepr.parse(packet) == ArpRepr(
        OPERATION_REQUEST,
        bytes.fromhex("00070daff454"),
        bytes([24, 166, 172, 1]),
        bytes(6),
        bytes([24, 166, 173, 159]),
    )


def test_parse_reply_and_emit_it_back():
    repr_ = ArpRepr.parse(ArpPacket.new_checked(REPLY))
    assert repr_.operation == OPERATION_REPLY
    assert repr_.sender_mac == bytes.fromhex("001422334455")
    buf = bytearray(repr_.buffer_len())
    repr_.emit(ArpPacket(buf))
    assert bytes(buf) == REPLY
    assert repr_.buffer_len() == HEADER_LEN == 28


def test_emit_overwrites_every_field():
    buf = bytearray(b"\xee" * 28)
    ArpRepr.parse(ArpPacket.new_checked(REPLY)).emit(ArpPacket(buf))
    assert bytes(buf) == REPLY


def test_padding_is_ignored():
    assert ArpRepr.parse(ArpPacket.new_checked(REQUEST)) == ArpRepr.parse(
        ArpPacket.new_checked(REQUEST[:28])
    )


def test_setters():
    packet = ArpPacket(bytearray(28))
    packet.hardware_type = 1
    packet.protocol_type = 0x0800
    packet.hardware_len = 6
    packet.protocol_len = 4
    packet.operation = OPERATION_REPLY
    packet.sender_mac = bytes.fromhex("001422334455")
    packet.sender_ip = bytes([24, 166, 173, 159])
    packet.target_mac = bytes.fromhex("00070daff454")
    packet.target_ip = bytes([24, 166, 172, 1])
    assert bytes(packet.buffer) == REPLY


def _with(offset: int, value: bytes) -> bytes:
    buf = bytearray(REQUEST)
    buf[offset : offset + len(value)] = value
    return bytes(buf)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (REQUEST[:7], "truncated"),
        (REQUEST[:8], "truncated"),
        (REQUEST[:27], "truncated"),
        (_with(0, b"\x00\x06"), "unsupported_hardware"),  # IEEE 802 networks
        (_with(0, b"\x00\x06")[:8], "unsupported_hardware"),  # type checked before body length
        (_with(2, b"\x86\xdd"), "unsupported_protocol"),
        (_with(4, b"\x08"), "bad_length"),
        (_with(5, b"\x10"), "bad_length"),
        (_with(4, b"\x06\x04")[:12], "truncated"),
    ],
)
def test_new_checked_errors(data, reason):
    with pytest.raises(ArpError) as info:
        ArpPacket.new_checked(data)
    assert info.value.reason == reason
    assert info.value.counter == f"arp.{reason}"


@pytest.mark.parametrize("operation", [0, 3, 4, 8, 9, 0xFFFF])  # RARP, InARP, ...
def test_unsupported_operation(operation):
    packet = ArpPacket.new_checked(_with(6, operation.to_bytes(2, "big")))
    assert packet.operation == operation
    with pytest.raises(ArpError) as info:
        ArpRepr.parse(packet)
    assert info.value.reason == "unsupported_operation"


@pytest.mark.parametrize("length", range(28))
def test_every_prefix_is_truncated_or_rejected(length):
    with pytest.raises(ArpError):
        ArpPacket.new_checked(REQUEST[:length])


@given(arp_reprs)
def test_round_trip(repr_):
    buf = bytearray(repr_.buffer_len())
    repr_.emit(ArpPacket(buf))
    assert ArpRepr.parse(ArpPacket.new_checked(bytes(buf))) == repr_


@given(arp_reprs)
def test_dpkt_parses_what_we_emit(repr_):
    buf = bytearray(repr_.buffer_len())
    repr_.emit(ArpPacket(buf))
    theirs = dpkt.arp.ARP(bytes(buf))
    assert (theirs.hrd, theirs.pro, theirs.hln, theirs.pln) == (1, 0x0800, 6, 4)
    assert (theirs.op, theirs.sha, theirs.spa, theirs.tha, theirs.tpa) == (
        repr_.operation,
        repr_.sender_mac,
        repr_.sender_ip,
        repr_.target_mac,
        repr_.target_ip,
    )


@given(arp_reprs)
def test_we_parse_what_dpkt_builds(repr_):
    theirs = dpkt.arp.ARP(
        op=repr_.operation,
        sha=repr_.sender_mac,
        spa=repr_.sender_ip,
        tha=repr_.target_mac,
        tpa=repr_.target_ip,
    )
    frame = bytes(
        dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=repr_.sender_mac, type=0x0806, data=theirs)
    )
    assert ArpRepr.parse(ArpPacket.new_checked(frame[14:])) == repr_


def test_dpkt_agrees_on_the_literal():
    theirs = dpkt.arp.ARP(REQUEST)
    assert socket.inet_ntoa(theirs.spa) == "24.166.172.1"
    assert socket.inet_ntoa(theirs.tpa) == "24.166.173.159"
