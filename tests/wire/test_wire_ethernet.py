"""Ethernet II frames: byte literals, round trips, and dpkt as an oracle."""

from __future__ import annotations

import dpkt
import hypothesis.strategies as st
import pytest
from hypothesis import given

from netstack.wire import WireError
from netstack.wire.ethernet import (
    BROADCAST,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    HEADER_LEN,
    EthernetError,
    EthernetFrame,
    EthernetRepr,
    mac_from_str,
    mac_to_str,
)

# A broadcast ARP request as captured, padded to 60 bytes by the sender.
ARP_FRAME = bytes.fromhex(
    "ffffffffffff00070daff4540806000108000604000100070daff45418a6ac01"
    "00000000000018a6ad9f000000000000000000000000000000000000"
)

macs = st.binary(min_size=6, max_size=6)
ethertypes = st.integers(0x0600, 0xFFFF)


def test_parse_arp_frame():
    frame = EthernetFrame.new_checked(ARP_FRAME)
    assert frame.dst == BROADCAST
    assert frame.src == bytes.fromhex("00070daff454")
    assert frame.ethertype == ETHERTYPE_ARP
    assert bytes(frame.payload) == ARP_FRAME[14:]
    expected = EthernetRepr(BROADCAST, bytes.fromhex("00070daff454"), ETHERTYPE_ARP)
    assert EthernetRepr.parse(frame) == expected


def test_payload_is_a_view_not_a_copy():
    buf = bytearray(ARP_FRAME)
    frame = EthernetFrame.new_checked(buf)
    frame.payload[0] = 0xAB
    assert buf[14] == 0xAB


def test_emit_exact_bytes():
    repr_ = EthernetRepr(
        dst=bytes.fromhex("020000000002"),
        src=bytes.fromhex("020000000001"),
        ethertype=ETHERTYPE_IPV4,
    )
    buf = bytearray(repr_.buffer_len() + 4)
    repr_.emit(EthernetFrame(buf))
    assert bytes(buf) == bytes.fromhex("020000000002" "020000000001" "0800" "00000000")
    assert repr_.buffer_len() == HEADER_LEN


def test_setters():
    frame = EthernetFrame(bytearray(14))
    frame.dst = b"\x01" * 6
    frame.src = b"\x02" * 6
    frame.ethertype = 0x86DD
    assert bytes(frame.buffer) == b"\x01" * 6 + b"\x02" * 6 + b"\x86\xdd"


@pytest.mark.parametrize("length", range(HEADER_LEN))
def test_truncated(length):
    with pytest.raises(EthernetError) as info:
        EthernetFrame.new_checked(ARP_FRAME[:length])
    assert info.value.reason == "truncated"
    assert info.value.counter == "ethernet.truncated"
    assert isinstance(info.value, WireError)


def test_header_only_frame_is_accepted():
    frame = EthernetFrame.new_checked(ARP_FRAME[:14])
    assert len(frame.payload) == 0


@pytest.mark.parametrize("type_or_length", [0, 46, 0x05DC, 0x05FF])
def test_length_field_is_unsupported(type_or_length):
    buf = bytearray(ARP_FRAME)
    buf[12:14] = type_or_length.to_bytes(2, "big")
    with pytest.raises(EthernetError) as info:
        EthernetRepr.parse(EthernetFrame.new_checked(buf))
    assert info.value.reason == "unsupported_length_field"


def test_mac_strings():
    assert mac_to_str(bytes.fromhex("00070daff454")) == "00:07:0d:af:f4:54"
    assert mac_from_str("00:07:0D:af:f4:54") == bytes.fromhex("00070daff454")


@pytest.mark.parametrize(
    "text",
    ["", "00:07:0d:af:f4", "00:07:0d:af:f4:54:00", "0:07:0d:af:f4:54", "00-07-0d-af-f4-54",
     "gg:07:0d:af:f4:54", "+1:07:0d:af:f4:54", " f:07:0d:af:f4:54", "-0:07:0d:af:f4:54"],
)
def test_mac_from_str_rejects(text):
    with pytest.raises(ValueError):
        mac_from_str(text)


@given(macs)
def test_mac_string_round_trip(mac):
    assert mac_from_str(mac_to_str(mac)) == mac


@given(macs, macs, ethertypes, st.binary(max_size=64))
def test_round_trip(dst, src, ethertype, payload):
    repr_ = EthernetRepr(dst, src, ethertype)
    buf = bytearray(repr_.buffer_len() + len(payload))
    frame = EthernetFrame(buf)
    repr_.emit(frame)
    frame.payload[:] = payload
    parsed_frame = EthernetFrame.new_checked(bytes(buf))
    assert EthernetRepr.parse(parsed_frame) == repr_
    assert bytes(parsed_frame.payload) == payload


# EtherTypes dpkt does not decode further (0x88b5/0x88b6 are IEEE local
# experimental), so dpkt keeps the payload as raw bytes.
plain_ethertypes = st.sampled_from([0x88B5, 0x88B6, 0x0900, 0xFFFF])


@given(macs, macs, plain_ethertypes, st.binary(max_size=64))
def test_dpkt_parses_what_we_emit(dst, src, ethertype, payload):
    repr_ = EthernetRepr(dst, src, ethertype)
    buf = bytearray(repr_.buffer_len() + len(payload))
    repr_.emit(EthernetFrame(buf))
    buf[HEADER_LEN:] = payload
    theirs = dpkt.ethernet.Ethernet(bytes(buf))
    assert (theirs.dst, theirs.src, theirs.type) == (dst, src, ethertype)
    assert bytes(theirs.data) == payload


@given(macs, macs, plain_ethertypes, st.binary(max_size=64))
def test_we_parse_what_dpkt_builds(dst, src, ethertype, payload):
    wire = bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=ethertype, data=payload))
    frame = EthernetFrame.new_checked(wire)
    assert EthernetRepr.parse(frame) == EthernetRepr(dst, src, ethertype)
    assert bytes(frame.payload) == payload
