"""UDP datagrams (RFC 768): byte literals, every error reason, round trips, dpkt oracle."""

from __future__ import annotations

import dpkt
import hypothesis.strategies as st
import pytest
from hypothesis import given

from netstack.wire import checksum
from netstack.wire.udp import HEADER_LEN, UdpError, UdpPacket, UdpRepr

SRC_IP = bytes([192, 168, 1, 2])
DST_IP = bytes([8, 8, 8, 8])

# A DNS query for example.com A, 192.168.1.2:53000 -> 8.8.8.8:53.
DNS_QUERY = bytes.fromhex("1a2b01000001000000000000" "076578616d706c6503636f6d00" "00010001")
DNS_DATAGRAM = bytes.fromhex("cf08" "0035" "0025" "7513") + DNS_QUERY
# The same datagram inside its IPv4 header, as dpkt and the kernel build it.
DNS_IP = bytes.fromhex("45000039beef00004011ea0ac0a8010208080808") + DNS_DATAGRAM

ports = st.integers(0, 0xFFFF)
ips = st.binary(min_size=4, max_size=4)
payloads = st.binary(max_size=512)


def emit(repr_: UdpRepr, payload: bytes, src_ip=SRC_IP, dst_ip=DST_IP, **kwargs) -> bytearray:
    # Size first, then write in place: the payload goes in before the header.
    buf = bytearray(repr_.buffer_len() + len(payload))
    buf[HEADER_LEN:] = payload
    repr_.emit(UdpPacket(buf), src_ip, dst_ip, len(payload), **kwargs)
    return buf


def test_parse_dns_query():
    packet = UdpPacket.new_checked(DNS_DATAGRAM)
    assert packet.src_port == 53000
    assert packet.dst_port == 53
    assert packet.length == 37
    assert packet.checksum == 0x7513
    assert bytes(packet.payload) == DNS_QUERY
    assert packet.verify_checksum(SRC_IP, DST_IP)
    assert UdpRepr.parse(packet, SRC_IP, DST_IP) == UdpRepr(53000, 53)


def test_emit_dns_query_exactly():
    assert bytes(emit(UdpRepr(53000, 53), DNS_QUERY)) == DNS_DATAGRAM
    assert UdpRepr(53000, 53).buffer_len() == HEADER_LEN == 8


def test_emit_writes_header_only():
    buf = bytearray(b"\xee" * 8) + bytearray(DNS_QUERY) + b"\xee" * 5
    UdpRepr(53000, 53).emit(UdpPacket(buf), SRC_IP, DST_IP, len(DNS_QUERY))
    assert bytes(buf[:37]) == DNS_DATAGRAM
    assert buf[37:] == b"\xee" * 5


def test_emit_without_checksum():
    buf = emit(UdpRepr(53000, 53), DNS_QUERY, fill_checksum=False)
    assert buf[6:8] == b"\x00\x00"
    assert UdpRepr.parse(UdpPacket.new_checked(buf), SRC_IP, DST_IP) == UdpRepr(53000, 53)


def test_zero_checksum_means_none():
    buf = bytearray(DNS_DATAGRAM)
    buf[6:8] = b"\x00\x00"
    buf[-1] ^= 0xFF  # with no checksum, nothing can notice
    packet = UdpPacket.new_checked(buf)
    assert packet.verify_checksum(SRC_IP, DST_IP)
    assert UdpRepr.parse(packet, SRC_IP, DST_IP) == UdpRepr(53000, 53)


def test_computed_zero_is_sent_as_all_ones():
    # Choose a payload word that makes the sum all ones, so the computed
    # checksum is 0: RFC 768 says to transmit 0xffff instead.
    repr_ = UdpRepr(1234, 5678)
    probe = emit(repr_, b"\x00\x00")
    word = probe[6:8]
    buf = emit(repr_, bytes(word))
    assert buf[6:8] == b"\xff\xff"
    packet = UdpPacket.new_checked(buf)
    assert packet.verify_checksum(SRC_IP, DST_IP)
    packet.fill_checksum(SRC_IP, DST_IP)
    assert packet.checksum == 0xFFFF


def test_trailing_bytes_after_length_are_ignored():
    data = DNS_DATAGRAM + b"\x00" * 9
    packet = UdpPacket.new_checked(data)
    assert bytes(packet.payload) == DNS_QUERY
    assert UdpRepr.parse(packet, SRC_IP, DST_IP) == UdpRepr(53000, 53)


def test_setters():
    buf = bytearray(8 + len(DNS_QUERY))
    packet = UdpPacket(buf)
    packet.src_port = 53000
    packet.dst_port = 53
    packet.length = 37
    packet.payload[:] = DNS_QUERY
    packet.fill_checksum(SRC_IP, DST_IP)
    assert bytes(buf) == DNS_DATAGRAM
    packet.checksum = 0xABCD
    assert buf[6:8] == b"\xab\xcd"


def test_source_port_zero_is_accepted():
    buf = emit(UdpRepr(0, 53), b"x")
    assert UdpRepr.parse(UdpPacket.new_checked(buf), SRC_IP, DST_IP) == UdpRepr(0, 53)


def _with(offset: int, value: bytes) -> bytes:
    buf = bytearray(DNS_DATAGRAM)
    buf[offset : offset + len(value)] = value
    return bytes(buf)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (DNS_DATAGRAM[:7], "truncated"),
        (_with(4, b"\x00\x00"), "bad_length"),
        (_with(4, b"\x00\x07"), "bad_length"),
        (DNS_DATAGRAM[:36], "truncated"),  # length 37 > 36 bytes
        (_with(4, b"\xff\xff"), "truncated"),
    ],
)
def test_new_checked_errors(data, reason):
    with pytest.raises(UdpError) as info:
        UdpPacket.new_checked(data)
    assert info.value.reason == reason
    assert info.value.counter == f"udp.{reason}"


def test_header_only_datagram():
    packet = UdpPacket.new_checked(_with(4, b"\x00\x08")[:8])
    assert len(packet.payload) == 0


@pytest.mark.parametrize("offset", [0, 1, 2, 3, 7, 8, 20, 36])
def test_bad_checksum(offset):
    data = bytearray(DNS_DATAGRAM)
    data[offset] ^= 0x10
    packet = UdpPacket.new_checked(data)
    assert not packet.verify_checksum(SRC_IP, DST_IP)
    with pytest.raises(UdpError) as info:
        UdpRepr.parse(packet, SRC_IP, DST_IP)
    assert info.value.reason == "bad_checksum"
    UdpRepr.parse(packet, SRC_IP, DST_IP, verify_checksum=False)


def test_pseudo_header_is_covered():
    packet = UdpPacket.new_checked(DNS_DATAGRAM)
    assert not packet.verify_checksum(SRC_IP, bytes([8, 8, 4, 4]))
    assert not packet.verify_checksum(bytes([192, 168, 1, 3]), DST_IP)
    # A shorter length field changes both the covered bytes and the pseudo-header.
    shorter = bytearray(DNS_DATAGRAM)
    shorter[4:6] = (36).to_bytes(2, "big")
    assert not UdpPacket.new_checked(shorter).verify_checksum(SRC_IP, DST_IP)


def test_bad_port():
    buf = emit(UdpRepr(53000, 0), DNS_QUERY)
    packet = UdpPacket.new_checked(buf)
    assert packet.verify_checksum(SRC_IP, DST_IP)
    with pytest.raises(UdpError) as info:
        UdpRepr.parse(packet, SRC_IP, DST_IP)
    assert info.value.reason == "bad_port"


def test_checksum_is_checked_before_port():
    data = bytearray(emit(UdpRepr(53000, 0), DNS_QUERY))
    data[-1] ^= 1
    with pytest.raises(UdpError) as info:
        UdpRepr.parse(UdpPacket.new_checked(data), SRC_IP, DST_IP)
    assert info.value.reason == "bad_checksum"


@pytest.mark.parametrize("length", range(len(DNS_DATAGRAM)))
def test_every_prefix_is_rejected(length):
    with pytest.raises(UdpError):
        UdpPacket.new_checked(DNS_DATAGRAM[:length])


@given(ports, st.integers(1, 0xFFFF), payloads, ips, ips)
def test_round_trip(src_port, dst_port, payload, src_ip, dst_ip):
    repr_ = UdpRepr(src_port, dst_port)
    buf = emit(repr_, payload, src_ip, dst_ip)
    packet = UdpPacket.new_checked(bytes(buf))
    assert packet.checksum != 0
    assert packet.verify_checksum(src_ip, dst_ip)
    assert UdpRepr.parse(packet, src_ip, dst_ip) == repr_
    assert bytes(packet.payload) == payload


@given(payloads, ips, ips)
def test_fill_checksum_agrees_with_emit(payload, src_ip, dst_ip):
    buf = emit(UdpRepr(1, 2), payload, src_ip, dst_ip)
    expected = bytes(buf)
    packet = UdpPacket(buf)
    packet.checksum = 0x5555
    packet.fill_checksum(src_ip, dst_ip)
    assert bytes(buf) == expected
    initial = checksum.pseudo_header_ipv4(src_ip, dst_ip, 17, len(buf))
    value = checksum.checksum(buf[:6] + b"\x00\x00" + buf[8:], initial)
    assert packet.checksum == (value or 0xFFFF)


def _dpkt_ip(src_ip, dst_ip, udp):
    return dpkt.ip.IP(src=src_ip, dst=dst_ip, p=17, data=udp)


@given(ports, st.integers(1, 0xFFFF), payloads, ips, ips)
def test_dpkt_parses_what_we_emit(src_port, dst_port, payload, src_ip, dst_ip):
    wire = bytes(emit(UdpRepr(src_port, dst_port), payload, src_ip, dst_ip))
    theirs = dpkt.udp.UDP(wire)
    assert (theirs.sport, theirs.dport, theirs.ulen, theirs.data) == (
        src_port,
        dst_port,
        8 + len(payload),
        payload,
    )
    # Let dpkt compute the checksum itself (it does so inside IP) and compare.
    ours = theirs.sum
    theirs.sum = 0
    bytes(_dpkt_ip(src_ip, dst_ip, theirs))
    assert theirs.sum == ours


@given(ports, st.integers(1, 0xFFFF), payloads, ips, ips)
def test_we_parse_what_dpkt_builds(src_port, dst_port, payload, src_ip, dst_ip):
    udp = dpkt.udp.UDP(sport=src_port, dport=dst_port, ulen=8 + len(payload), data=payload)
    wire = bytes(_dpkt_ip(src_ip, dst_ip, udp))[20:]
    packet = UdpPacket.new_checked(wire)
    assert packet.checksum == udp.sum
    assert UdpRepr.parse(packet, src_ip, dst_ip) == UdpRepr(src_port, dst_port)
    assert bytes(packet.payload) == payload


def test_dns_literal_is_what_dpkt_builds():
    udp = dpkt.udp.UDP(sport=53000, dport=53, ulen=37, data=DNS_QUERY)
    ip = dpkt.ip.IP(src=SRC_IP, dst=DST_IP, p=17, ttl=64, id=0xBEEF, data=udp)
    assert bytes(ip) == DNS_IP
