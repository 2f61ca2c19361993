"""ARP core at virtual time: cache expiry, retries with back-off, queueing, answering."""

from __future__ import annotations

from netstack.arp import SECOND, ArpConfig, ArpCore, build_frame
from netstack.wire.arp import OPERATION_REPLY, OPERATION_REQUEST, ArpPacket, ArpRepr
from netstack.wire.ethernet import BROADCAST, ETHERTYPE_ARP, EthernetFrame, EthernetRepr

OUR_MAC = bytes.fromhex("020000000002")
OUR_IP = bytes([10, 0, 0, 2])
PEER_MAC = bytes.fromhex("020000000001")
PEER_IP = bytes([10, 0, 0, 1])
OTHER_IP = bytes([10, 0, 0, 9])
T0 = 5 * SECOND


def parse(frame: bytes) -> tuple[EthernetRepr, ArpRepr]:
    eth_view = EthernetFrame.new_checked(frame)
    eth = EthernetRepr.parse(eth_view)
    assert eth.ethertype == ETHERTYPE_ARP
    return eth, ArpRepr.parse(ArpPacket.new_checked(eth_view.payload))


def arp_payload(operation: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> memoryview:
    frame = build_frame(sender_mac, BROADCAST, ArpRepr(operation, sender_mac, sender_ip, target_mac, target_ip))
    return memoryview(frame)[14:]


def ip_frame(tag: int) -> bytearray:
    frame = bytearray(34)
    frame[33] = tag
    return frame


def test_request_for_our_address_is_answered_and_learned() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    out = arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP), T0)
    assert len(out) == 1
    eth, reply = parse(out[0])
    assert eth.dst == PEER_MAC and eth.src == OUR_MAC
    assert reply == ArpRepr(OPERATION_REPLY, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
    assert arp.lookup(PEER_IP, T0) == PEER_MAC


def test_request_for_another_address_is_ignored_and_not_learned() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    assert arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OTHER_IP), T0) == []
    assert arp.lookup(PEER_IP, T0) is None


def test_unsolicited_arp_updates_an_existing_entry() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP), T0)
    moved = bytes.fromhex("02000000abcd")
    arp.handle(arp_payload(OPERATION_REQUEST, moved, PEER_IP, b"\0" * 6, PEER_IP), T0 + 1)
    assert arp.lookup(PEER_IP, T0 + 1) == moved


def test_gratuitous_announcements_at_start() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    out = arp.start(T0)
    assert len(out) == 1
    eth, announce = parse(out[0])
    assert eth.dst == BROADCAST
    assert announce.sender_ip == announce.target_ip == OUR_IP
    assert arp.poll_at() == T0 + 2 * SECOND
    assert len(arp.poll(T0 + 2 * SECOND)) == 1
    assert arp.poll_at() is None


def test_resolution_queues_then_releases_in_order() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    out = arp.send(PEER_IP, ip_frame(1), T0)
    assert len(out) == 1
    _, request = parse(out[0])
    assert request.operation == OPERATION_REQUEST and request.target_ip == PEER_IP
    assert arp.send(PEER_IP, ip_frame(2), T0) == []  # one request in flight is enough
    released = arp.handle(arp_payload(OPERATION_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), T0 + 1000)
    assert [f[33] for f in released] == [1, 2]
    assert all(f[0:6] == PEER_MAC for f in released)
    assert arp.pending_count() == 0
    sent = arp.send(PEER_IP, ip_frame(3), T0 + 2000)
    assert sent[0][0:6] == PEER_MAC and len(sent) == 1


def test_retries_back_off_then_give_up_and_count_drops() -> None:
    config = ArpConfig(request_attempts=4, retry_initial_ns=SECOND, retry_max_ns=8 * SECOND)
    arp = ArpCore(OUR_MAC, OUR_IP, config)
    arp.send(PEER_IP, ip_frame(1), T0)
    arp.send(PEER_IP, ip_frame(2), T0)
    times = []
    now = T0
    for _ in range(3):
        now = arp.poll_at()
        out = arp.poll(now)
        assert len(out) == 1 and parse(out[0])[1].target_ip == PEER_IP
        times.append(now - T0)
    assert times == [1 * SECOND, 3 * SECOND, 7 * SECOND]  # the gap doubles
    now = arp.poll_at()
    assert now - T0 == 15 * SECOND
    assert arp.poll(now) == []
    assert arp.stats["arp.unresolved"] == 2
    assert arp.stats["arp.resolution_failed"] == 1
    assert arp.pending_count() == 0
    assert arp.poll_at() is None


def test_entry_expires_after_its_lifetime() -> None:
    config = ArpConfig(entry_lifetime_ns=60 * SECOND)
    arp = ArpCore(OUR_MAC, OUR_IP, config)
    arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP), T0)
    assert arp.poll_at() == T0 + 60 * SECOND
    assert arp.lookup(PEER_IP, T0 + 60 * SECOND - 1) == PEER_MAC
    arp.poll(T0 + 60 * SECOND)
    assert arp.lookup(PEER_IP, T0 + 60 * SECOND) is None
    assert arp.entries(T0 + 60 * SECOND) == {}
    assert arp.stats["arp.entries_expired"] == 1
    # Sending now needs a new resolution.
    out = arp.send(PEER_IP, ip_frame(1), T0 + 60 * SECOND)
    assert parse(out[0])[1].operation == OPERATION_REQUEST


def test_entry_in_use_is_refreshed_by_unicast_before_it_lapses() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP, ArpConfig(entry_lifetime_ns=60 * SECOND, refresh_before_ns=5 * SECOND))
    arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, PEER_IP, b"\0" * 6, OUR_IP), T0)
    assert len(arp.send(PEER_IP, ip_frame(1), T0 + 50 * SECOND)) == 1
    out = arp.send(PEER_IP, ip_frame(2), T0 + 56 * SECOND)
    assert len(out) == 2
    eth, request = parse(out[1])
    assert eth.dst == PEER_MAC and request.target_ip == PEER_IP
    assert len(arp.send(PEER_IP, ip_frame(3), T0 + 57 * SECOND)) == 1  # only once
    arp.handle(arp_payload(OPERATION_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), T0 + 57 * SECOND)
    assert arp.lookup(PEER_IP, T0 + 100 * SECOND) == PEER_MAC


def test_queue_is_bounded_per_address_keeping_the_newest() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP, ArpConfig(queue_per_address=3))
    for tag in range(10):
        arp.send(PEER_IP, ip_frame(tag), T0)
    assert arp.pending_count() == 3
    assert arp.stats["arp.queue_full"] == 7
    released = arp.handle(arp_payload(OPERATION_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP), T0)
    assert [f[33] for f in released] == [7, 8, 9]


def test_queue_is_bounded_overall_and_pending_addresses_are_bounded() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP, ArpConfig(queue_total=5, max_pending=3))
    for host in range(10):
        arp.send(bytes([10, 0, 0, 100 + host]), ip_frame(host), T0)
        arp.send(bytes([10, 0, 0, 100 + host]), ip_frame(host), T0)
    assert arp.pending_count() <= 5
    assert arp.stats["arp.pending_full"] == 14  # 7 addresses refused, twice each


def test_our_own_address_from_another_mac_is_a_conflict() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    assert arp.handle(arp_payload(OPERATION_REQUEST, PEER_MAC, OUR_IP, b"\0" * 6, OUR_IP), T0) == []
    assert arp.stats["arp.address_conflict"] == 1


def test_broadcast_sender_mac_is_refused() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP)
    assert arp.handle(arp_payload(OPERATION_REQUEST, BROADCAST, PEER_IP, b"\0" * 6, OUR_IP), T0) == []
    assert arp.lookup(PEER_IP, T0) is None
    assert arp.stats["arp.bad_sender_mac"] == 1


def test_cache_size_is_bounded() -> None:
    arp = ArpCore(OUR_MAC, OUR_IP, ArpConfig(max_entries=4))
    for host in range(10):
        mac = bytes([2, 0, 0, 0, 0, host + 10])
        arp.handle(arp_payload(OPERATION_REQUEST, mac, bytes([10, 0, 0, 100 + host]), b"\0" * 6, OUR_IP), T0 + host)
    assert len(arp.entries(T0 + 10)) == 4
    assert arp.stats["arp.cache_evicted"] == 6
