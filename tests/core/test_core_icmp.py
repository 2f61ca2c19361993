"""ICMPv4 at virtual time: echo, port unreachable and its rate limit, what never gets an error."""

from __future__ import annotations

import ipaddress

from netstack.arp import SECOND, ArpCore
from netstack.icmp import IcmpConfig, Icmpv4, TokenBucket
from netstack.ipv4 import Datagram, Ipv4, Ipv4Config
from netstack.wire.icmpv4 import (
    CODE_PORT_UNREACHABLE,
    TYPE_DEST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    Icmpv4Packet,
    Icmpv4Repr,
)
from netstack.wire.ipv4 import PROTOCOL_ICMP, PROTOCOL_UDP, Ipv4Packet, Ipv4Repr

OUR_MAC = bytes.fromhex("020000000002")
OUR_IP = bytes([10, 0, 0, 2])
PEER_IP = bytes([10, 0, 0, 1])
PEER_MAC = bytes.fromhex("020000000001")
T0 = 3 * SECOND


def make_icmp(**config) -> Icmpv4:
    arp = ArpCore(OUR_MAC, OUR_IP)
    # The peer is resolved, so replies come straight out.
    from netstack.arp import build_frame
    from netstack.wire.arp import OPERATION_REQUEST, ArpRepr
    arp.handle(memoryview(build_frame(PEER_MAC, OUR_MAC, ArpRepr(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP)))[14:], 0)
    ipv4 = Ipv4(Ipv4Config(ipaddress.IPv4Interface("10.0.0.2/24")), arp, OUR_MAC, 1500)
    return Icmpv4(ipv4, IcmpConfig(**config))


def datagram(protocol: int, payload: bytes, *, dst: bytes = OUR_IP, broadcast: bool = False) -> Datagram:
    buffer = bytearray(20 + len(payload))
    buffer[20:] = payload
    Ipv4Repr(src=PEER_IP, dst=dst, protocol=protocol, payload_len=len(payload)).emit(Ipv4Packet(buffer))
    view = memoryview(buffer)
    return Datagram(PEER_IP, dst, protocol, view[20:], view, broadcast)


def icmp_bytes(message: Icmpv4Repr) -> bytes:
    buffer = bytearray(message.buffer_len())
    message.emit(Icmpv4Packet(buffer))
    return bytes(buffer)


def parse_out(frame: bytearray) -> tuple[Ipv4Repr, Icmpv4Repr]:
    ip_view = Ipv4Packet.new_checked(memoryview(frame)[14:])
    return Ipv4Repr.parse(ip_view), Icmpv4Repr.parse(Icmpv4Packet.new_checked(ip_view.payload))


def test_echo_request_is_answered_with_the_same_data() -> None:
    icmp = make_icmp()
    (out,) = icmp.handle(datagram(PROTOCOL_ICMP, icmp_bytes(Icmpv4Repr.echo_request(7, 9, b"abc" * 100))), T0)
    ip, reply = parse_out(out)
    assert (ip.src, ip.dst, ip.protocol) == (OUR_IP, PEER_IP, PROTOCOL_ICMP)
    assert (reply.type, reply.ident, reply.sequence, bytes(reply.data)) == (TYPE_ECHO_REPLY, 7, 9, b"abc" * 100)


def test_broadcast_echo_is_ignored() -> None:
    icmp = make_icmp()
    request = icmp_bytes(Icmpv4Repr.echo_request(7, 9, b""))
    assert icmp.handle(datagram(PROTOCOL_ICMP, request, dst=b"\xff" * 4, broadcast=True), T0) == []
    assert icmp.stats["icmp.echo_ignored"] == 1


def test_port_unreachable_quotes_header_and_eight_bytes() -> None:
    icmp = make_icmp()
    udp = bytes(range(8)) + b"payload that is not quoted"
    offending = datagram(PROTOCOL_UDP, udp)
    (out,) = icmp.port_unreachable(offending, T0)
    _, error = parse_out(out)
    assert (error.type, error.code) == (TYPE_DEST_UNREACHABLE, CODE_PORT_UNREACHABLE)
    assert bytes(error.data) == bytes(offending.packet[:28])


def test_port_unreachable_is_rate_limited_by_a_token_bucket() -> None:
    icmp = make_icmp(error_rate_per_s=1000, error_burst=50)
    offending = datagram(PROTOCOL_UDP, bytes(8))
    sent = sum(len(icmp.port_unreachable(offending, T0)) for _ in range(200))
    assert sent == 50
    assert icmp.stats["icmp.errors_rate_limited"] == 150
    # 10 ms later, 10 more tokens at 1000/s.
    sent = sum(len(icmp.port_unreachable(offending, T0 + 10_000_000)) for _ in range(200))
    assert sent == 10
    # A second later the bucket is full again, but never over its burst.
    sent = sum(len(icmp.port_unreachable(offending, T0 + 5 * SECOND)) for _ in range(200))
    assert sent == 50


def test_no_error_about_errors_or_broadcasts() -> None:
    icmp = make_icmp()
    error = icmp_bytes(Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, bytes(28)))
    assert icmp.port_unreachable(datagram(PROTOCOL_ICMP, error), T0) == []
    assert icmp.port_unreachable(datagram(PROTOCOL_UDP, bytes(8), dst=b"\xff" * 4, broadcast=True), T0) == []
    assert icmp.stats["icmp.port_unreachable_sent"] == 0


def test_unreachable_is_routed_to_the_handler_with_the_quoted_ports() -> None:
    icmp = make_icmp()
    seen = []
    icmp.unreachable_handler = lambda *args: seen.append(args)
    quoted = bytearray(28)
    Ipv4Repr(src=OUR_IP, dst=PEER_IP, protocol=PROTOCOL_UDP, payload_len=8).emit(Ipv4Packet(quoted))
    quoted[20:24] = (50000).to_bytes(2, "big") + (7).to_bytes(2, "big")
    message = icmp_bytes(Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, bytes(quoted)))
    icmp.handle(datagram(PROTOCOL_ICMP, message), T0)
    assert seen == [(PROTOCOL_UDP, OUR_IP, 50000, PEER_IP, 7, CODE_PORT_UNREACHABLE)]
    # A truncated quote is counted, not trusted.
    icmp.handle(datagram(PROTOCOL_ICMP, icmp_bytes(Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, bytes(10)))), T0)
    assert icmp.stats["icmp.bad_quote"] == 1 and len(seen) == 1


def test_token_bucket_refills_exactly() -> None:
    bucket = TokenBucket(rate_per_s=3, burst=2, now=0)
    assert [bucket.take(0) for _ in range(3)] == [True, True, False]
    assert bucket.take(SECOND // 3 - 1) is False
    assert bucket.take(SECOND // 3 + 1) is True
