"""The TCP layer with a scripted peer: closed ports, SYN cookies, ISNs, ports, bounds.

The peer is raw frames written into one end of an in-memory link; the stack
under test is on the other end, driven at virtual time.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from netstack.arp import build_frame
from netstack.clock import ManualClock
from netstack.devices.link import link_pair
from netstack.ipv4 import HEADROOM
from netstack.stack import Stack
from netstack.tcp import seq as sq
from netstack.tcp.connection import SECOND, TcpConfig
from netstack.tcp.layer import TcpLayerConfig
from netstack.tcp.states import State
from netstack.wire.arp import OPERATION_REPLY, ArpRepr
from netstack.wire.checksum import pseudo_header_ipv4
from netstack.wire.ethernet import ETHERTYPE_IPV4, EthernetFrame, EthernetRepr
from netstack.wire.ipv4 import PROTOCOL_TCP, Ipv4Packet, Ipv4Repr
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpOptions, TcpPacket, TcpRepr

PEER_IP = ipaddress.IPv4Address("10.0.0.1").packed
STACK_IP = ipaddress.IPv4Address("10.0.0.2").packed


class Peer:
    """Raw frames in, parsed TCP segments out."""

    def __init__(self, netif, stack_mac: bytes) -> None:
        self.netif = netif
        self.stack_mac = stack_mac
        self.segments: list[tuple[TcpRepr, bytes]] = []
        netif.listen(self._receive)

    def _receive(self, batch) -> None:
        for frame in batch:
            view = memoryview(frame)
            eth = EthernetRepr.parse(EthernetFrame.new_checked(view))
            if eth.ethertype != ETHERTYPE_IPV4:
                continue
            ip_view = Ipv4Packet.new_checked(view[14:])
            ip = Ipv4Repr.parse(ip_view)
            if ip.protocol != PROTOCOL_TCP:
                continue
            payload = ip_view.payload
            tcp_view = TcpPacket.new_checked(payload)
            tcp = TcpRepr.parse(tcp_view, pseudo_header_ipv4(ip.src, ip.dst, PROTOCOL_TCP, len(payload)))
            self.segments.append((tcp, bytes(tcp_view.payload)))

    def introduce(self) -> None:
        """Tell the stack our MAC, so its replies need no ARP round."""
        reply = ArpRepr(OPERATION_REPLY, self.netif.mac, PEER_IP, self.stack_mac, STACK_IP)
        self.netif.write(build_frame(self.netif.mac, self.stack_mac, reply))

    def send(self, tcp: TcpRepr, payload: bytes = b"", *, src: bytes = PEER_IP) -> None:
        header_len = tcp.buffer_len()
        frame = bytearray(HEADROOM + header_len + len(payload))
        EthernetRepr(self.stack_mac, self.netif.mac, ETHERTYPE_IPV4).emit(EthernetFrame(frame))
        segment = memoryview(frame)[HEADROOM:]
        segment[header_len:] = payload
        tcp.emit(TcpPacket(segment), len(payload), pseudo_header_ipv4(src, STACK_IP, PROTOCOL_TCP, len(segment)))
        Ipv4Repr(src=src, dst=STACK_IP, protocol=PROTOCOL_TCP, payload_len=len(segment)).emit(Ipv4Packet(memoryview(frame)[14:]))
        self.netif.write(frame)

    def take(self) -> list[tuple[TcpRepr, bytes]]:
        out, self.segments = self.segments, []
        return out


async def setup(clock: ManualClock, **layer) -> tuple[Stack, Peer]:
    a, b = link_pair()
    stack = Stack(b, clock, ipv4="10.0.0.2/24", tcp_config=TcpLayerConfig(**layer) if layer else None)
    stack.start()
    peer = Peer(a, b.mac)
    peer.introduce()
    await clock.settle()
    return stack, peer


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = False

    def connection_made(self, transport) -> None:
        self.made = True
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data


@pytest.mark.asyncio
async def test_closed_port_answers_rst(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    peer.send(TcpRepr(40000, 80, 1000, 0, SYN, 65535))
    await manual_clock.settle()
    (reply, _), = peer.take()
    assert reply.flags == RST | ACK and reply.seq == 0 and reply.ack == 1001
    peer.send(TcpRepr(40000, 80, 5000, 777, ACK, 65535), b"data")
    await manual_clock.settle()
    (reply, _), = peer.take()
    assert reply.flags == RST and reply.seq == 777
    peer.send(TcpRepr(40000, 80, 5000, 777, RST, 0))  # never answer a RST
    await manual_clock.settle()
    assert peer.take() == []
    assert stack.stats["tcp.resets_sent"] == 2


@pytest.mark.asyncio
async def test_handshake_data_and_close_with_a_scripted_peer(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    sink = Sink()
    server = await stack.create_server(lambda: sink, port=80)
    peer.send(TcpRepr(40000, 80, 1000, 0, SYN, 65535, TcpOptions(mss=1460)))
    await manual_clock.settle()
    (synack, _), = peer.take()
    assert synack.flags == SYN | ACK and synack.ack == 1001 and synack.options.mss == 1460
    isn = synack.seq
    peer.send(TcpRepr(40000, 80, 1001, sq.add(isn, 1), ACK, 65535), b"hello")
    await manual_clock.settle()
    assert sink.made and bytes(sink.data) == b"hello"
    assert stack.tcp.open_connections() == 1
    peer.send(TcpRepr(40000, 80, 1006, sq.add(isn, 1), FIN | ACK, 65535))
    await manual_clock.settle()
    segments = peer.take()
    assert any(s.flags & FIN for s, _ in segments)  # eof_received -> close -> our FIN
    fin = next(s for s, _ in segments if s.flags & FIN)
    assert fin.ack == 1007
    peer.send(TcpRepr(40000, 80, 1007, sq.add(fin.seq, 1), ACK, 65535))
    await manual_clock.settle()
    assert stack.tcp.connections == {}  # LAST-ACK -> CLOSED, no TIME-WAIT for the passive closer
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_full_syn_queue_falls_back_to_cookies_that_open_connections(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    sinks: list[Sink] = []
    await stack.create_server(lambda: sinks.append(Sink()) or sinks[-1], port=80, backlog=2)
    for port in (41000, 41001):  # two half-open connections fill the queue
        peer.send(TcpRepr(port, 80, 1000, 0, SYN, 65535, TcpOptions(mss=1460, sack_permitted=True)))
    await manual_clock.settle()
    assert len(peer.take()) == 2
    peer.send(TcpRepr(42000, 80, 7000, 0, SYN, 65535, TcpOptions(mss=1460, sack_permitted=True, window_scale=7)))
    await manual_clock.settle()
    (cookie_synack, _), = peer.take()
    assert stack.stats["tcp.syn_cookies_sent"] == 1
    assert cookie_synack.flags == SYN | ACK and cookie_synack.options == TcpOptions(mss=1460)  # no state, no extras
    assert (PEER_IP, 42000, 80) not in stack.tcp.connections
    # The returning ACK recreates the connection, and its data arrives.
    peer.send(TcpRepr(42000, 80, 7001, sq.add(cookie_synack.seq, 1), ACK, 65535), b"cookie data")
    await manual_clock.settle()
    assert stack.stats["tcp.syn_cookies_accepted"] == 1
    connection = stack.tcp.connections[(PEER_IP, 42000, 80)]
    assert connection.state == State.ESTABLISHED
    assert any(bytes(s.data) == b"cookie data" for s in sinks)
    # A forged ACK (wrong cookie) gets a RST and no connection.
    peer.send(TcpRepr(43000, 80, 9001, sq.add(cookie_synack.seq, 1), ACK, 65535), b"forged")
    await manual_clock.settle()
    assert stack.stats["tcp.bad_cookie"] == 1 and (PEER_IP, 43000, 80) not in stack.tcp.connections
    assert peer.take()[-1][0].flags == RST


@pytest.mark.asyncio
async def test_cookies_expire_after_two_periods(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    await stack.create_server(Sink, port=80, backlog=1)
    peer.send(TcpRepr(41000, 80, 1000, 0, SYN, 65535))
    peer.send(TcpRepr(42000, 80, 7000, 0, SYN, 65535))
    await manual_clock.settle()
    cookie_synack = peer.take()[-1][0]
    manual_clock.advance(129 * SECOND)
    peer.send(TcpRepr(42000, 80, 7001, sq.add(cookie_synack.seq, 1), ACK, 65535))
    await manual_clock.settle()
    assert stack.stats["tcp.bad_cookie"] == 1


@pytest.mark.asyncio
async def test_half_open_connections_time_out_and_free_the_queue(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    await stack.create_server(Sink, port=80, backlog=4)
    for port in range(41000, 41004):
        peer.send(TcpRepr(port, 80, 1000, 0, SYN, 65535))
    await manual_clock.settle()
    assert len(stack.tcp.connections) == 4
    await manual_clock.run_for(200 * SECOND)  # SYN-ACK retries exhausted
    assert stack.tcp.connections == {}
    assert stack.tcp.listeners[80].half_open == 0


def test_isns_differ_per_connection_and_advance_with_time(manual_clock: ManualClock) -> None:
    a, _ = link_pair()
    stack = Stack(a, manual_clock, ipv4="10.0.0.2/24")
    layer = stack.tcp
    first = layer.isn(80, PEER_IP, 40000, 0)
    assert layer.isn(80, PEER_IP, 40001, 0) != first
    assert layer.isn(80, PEER_IP, 40000, 4_000) == sq.add(first, 1)  # the 4 us clock (RFC 6528)
    other = Stack(link_pair()[0], manual_clock, ipv4="10.0.0.2/24").tcp
    assert other.isn(80, PEER_IP, 40000, 0) != first  # a different secret


def test_ephemeral_ports_are_spread_and_never_collide(manual_clock: ManualClock) -> None:
    stack = Stack(link_pair()[0], manual_clock, ipv4="10.0.0.2/24")
    layer = stack.tcp
    ports = []
    for _ in range(500):
        port = layer.ephemeral_port(PEER_IP, 80)
        assert 49152 <= port <= 65535
        layer.connections[(PEER_IP, 80, port)] = object()  # type: ignore[assignment]
        ports.append(port)
    assert len(set(ports)) == 500
    other_destination = layer.ephemeral_port(bytes([10, 0, 0, 9]), 80)
    assert other_destination != ports[-1] + 1  # RFC 6056 alg. 3: per-destination offsets


@pytest.mark.asyncio
async def test_connection_table_is_bounded(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock, max_connections=3)
    await stack.create_server(Sink, port=80, backlog=100)
    for port in range(41000, 41010):
        peer.send(TcpRepr(port, 80, 1000, 0, SYN, 65535))
    await manual_clock.settle()
    assert len(stack.tcp.connections) == 3
    assert stack.stats["tcp.syn_cookies_sent"] == 7  # the rest get cookies, no state


@pytest.mark.asyncio
async def test_out_of_order_memory_is_bounded_across_connections(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock, ooo_budget=10_000, connection=TcpConfig(recv_buffer=64 * 1024))
    await stack.create_server(Sink, port=80)
    for port in (41000, 41001):
        peer.send(TcpRepr(port, 80, 1000, 0, SYN, 65535))
        await manual_clock.settle()
        (synack, _), = peer.take()
        peer.send(TcpRepr(port, 80, 1001, sq.add(synack.seq, 1), ACK, 65535))
        await manual_clock.settle()
        # A hole at 1001, then 8 KB beyond it on each connection.
        for i in range(8):
            peer.send(TcpRepr(port, 80, 1001 + 1000 + i * 1000, sq.add(synack.seq, 1), ACK, 65535), bytes(1000))
        await manual_clock.settle()
        peer.take()  # the duplicate ACKs
    held = sum(c._reassembly.size for c in stack.tcp.connections.values())
    assert held <= 10_000
    assert stack.stats["tcp.ooo_dropped"] >= 6


@pytest.mark.asyncio
async def test_new_syn_reuses_a_time_wait_connection(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    await stack.create_server(Sink, port=80)
    peer.send(TcpRepr(40000, 80, 1000, 0, SYN, 65535))
    await manual_clock.settle()
    (synack, _), = peer.take()
    peer.send(TcpRepr(40000, 80, 1001, sq.add(synack.seq, 1), ACK, 65535))
    await manual_clock.settle()
    connection = stack.tcp.connections[(PEER_IP, 40000, 80)]
    owner = stack.tcp.owners[connection]
    owner.close()  # we close first ...
    await manual_clock.settle()
    fin = next(s for s, _ in peer.take() if s.flags & FIN)
    peer.send(TcpRepr(40000, 80, 1001, sq.add(fin.seq, 1), FIN | ACK, 65535))  # ... the peer acks and closes
    await manual_clock.settle()
    assert connection.state == State.TIME_WAIT
    peer.take()
    peer.send(TcpRepr(40000, 80, 500_000, 0, SYN, 65535))  # a new incarnation, higher sequence
    await manual_clock.settle()
    (reply, _), = peer.take()
    assert reply.flags == SYN | ACK and reply.ack == 500_001
    assert stack.tcp.connections[(PEER_IP, 40000, 80)] is not connection


@pytest.mark.asyncio
async def test_closing_the_stack_resets_open_connections(manual_clock: ManualClock) -> None:
    stack, peer = await setup(manual_clock)
    await stack.create_server(Sink, port=80)
    peer.send(TcpRepr(40000, 80, 1000, 0, SYN, 65535))
    await manual_clock.settle()
    (synack, _), = peer.take()
    peer.send(TcpRepr(40000, 80, 1001, sq.add(synack.seq, 1), ACK, 65535))
    await manual_clock.settle()
    stack.close()
    await manual_clock.settle()
    (reset, _), = peer.take()
    assert reset.flags & RST and reset.seq == sq.add(synack.seq, 1)
    assert stack.tcp.connections == {} and stack.tcp.listeners == {}
