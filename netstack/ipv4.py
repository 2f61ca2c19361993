"""IPv4 for a host (RFC 791, RFC 1122): receive, reassembly, routing, send, fragmentation.

Theory of operation
-------------------
``Ipv4`` is sans-IO like the other cores: ``handle(packet, now)`` returns the
datagram to deliver upwards (or ``None`` when the packet was dropped, counted,
or is a fragment still waiting for its siblings), ``send(...)`` returns the
frames to write, and ``poll(now)`` / ``poll_at()`` drive the reassembly
timer. ARP is below it (``Ipv4(arp=...)``, a functor application in Python).

Receiving. A host does not forward (RFC 1122 3.3.1): a packet not addressed
to us, to the limited broadcast or to our subnet's broadcast is dropped and
counted. The TTL of a received packet is not checked: it matters only to
forwarders. Options are skipped (the header length says how far); none
changes how a host handles a datagram.

Reassembly (RFC 791 section 3.2, RFC 815) with hard bounds, because every
byte held here is memory a stranger can make us spend:

* a datagram is identified by ``(src, dst, protocol, ident)``;
* at most ``max_fragments`` (16) fragments and ``max_datagram`` (65535)
  bytes per datagram; at most ``max_datagrams`` (64) datagrams in flight,
  beyond which new ones are refused;
* each datagram lives ``lifetime_ns`` (30 s) from its first fragment; when it
  expires having had fragment zero, we send ICMP Time Exceeded, code 1
  ("fragment reassembly time exceeded", RFC 792), as RFC 1122 3.3.2 asks;
* overlapping fragments are rejected and poison the whole datagram (as RFC
  5722 requires for IPv6, and for the same reason: overlaps are an attack on
  whoever checks the first fragment, never a feature); an exact duplicate of
  a fragment we hold (same offset, same bytes) is only counted and ignored,
  because links do duplicate frames;
* a datagram that failed stays as a tombstone until its lifetime ends, so
  its remaining fragments are dropped without building a new entry.

Sending. ``allocate(payload_len)`` gives one buffer with headroom for the
Ethernet and IPv4 headers; the upper layer writes its header and payload at
``HEADROOM``; ``send`` writes the IPv4 and Ethernet headers in place and
hands the frame to ARP. A datagram larger than the MTU is fragmented
(RFC 791: every fragment but the last carries a multiple of 8 bytes); that
is the one place data is copied. The identification field is a counter with
a random start (RFC 6864 makes it matter only for fragments).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections import Counter
from typing import NamedTuple

from netstack.arp import ArpCore
from netstack.protocols import LargeFrame
from netstack.wire import ethernet
from netstack.wire.ethernet import BROADCAST, ETHERTYPE_IPV4
from netstack.wire.ipv4 import HEADER_LEN as IPV4_HEADER_LEN
from netstack.wire.ipv4 import Ipv4Packet, Ipv4Repr

SECOND = 1_000_000_000
HEADROOM = ethernet.HEADER_LEN + IPV4_HEADER_LEN
LIMITED_BROADCAST = b"\xff\xff\xff\xff"
ANY = b"\x00\x00\x00\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class Ipv4Config:
    """Addressing and limits of one IPv4 interface.

    ``address`` is the interface address with its prefix (``10.0.0.2/24``);
    ``gateway`` is where off-link traffic goes (``None``: off-link
    destinations are unreachable and counted as ``ipv4.no_route``).
    """

    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None = None
    ttl: int = 64
    max_fragments: int = 16
    max_datagram: int = 65535
    max_datagrams: int = 64
    lifetime_ns: int = 30 * SECOND

    def __post_init__(self) -> None:
        network = self.address.network
        if self.gateway is not None and self.gateway not in network:
            raise ValueError(f"gateway {self.gateway} is not on the network {network}")
        if self.address.ip in (network.network_address, network.broadcast_address) and network.prefixlen < 31:
            raise ValueError(f"{self.address.ip} is the network's own network or broadcast address")


class Datagram(NamedTuple):
    """A complete IPv4 datagram for an upper layer.

    ``packet`` is the whole packet (header included) when it arrived whole,
    or the first fragment's header followed by the reassembled payload; ICMP
    errors quote it.
    """

    src: bytes
    dst: bytes
    protocol: int
    payload: memoryview
    packet: memoryview
    broadcast: bool


@dataclasses.dataclass(slots=True)
class _Reassembly:
    deadline: int
    fragments: list[tuple[int, bytes]]
    received: int = 0
    total: int | None = None
    first_header: bytes | None = None
    failed: bool = False


class Ipv4:
    """IPv4 receive and send path for one interface, over ``arp``."""

    def __init__(
        self,
        config: Ipv4Config,
        arp: ArpCore,
        mac: bytes,
        mtu: int,
        stats: Counter[str] | None = None,
        *,
        verify_checksums: bool = True,
    ) -> None:
        self.config = config
        self.arp = arp
        self.mac = mac
        self.mtu = mtu
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.verify_checksums = verify_checksums
        network = config.address.network
        self.address = config.address.ip.packed
        self._netmask = int(network.netmask)
        self._network = int(network.network_address)
        self._subnet_broadcast = network.broadcast_address.packed
        self._gateway = config.gateway.packed if config.gateway is not None else None
        self._ident = int.from_bytes(os.urandom(2), "big")
        self._reassembly: dict[tuple[bytes, bytes, int, int], _Reassembly] = {}

    # -- receive -------------------------------------------------------------

    def handle(self, payload: memoryview, now: int) -> Datagram | None:
        """Process one IPv4 packet (an Ethernet payload). Raises ``Ipv4Error`` if malformed."""
        packet = Ipv4Packet.new_checked(payload)
        ip = Ipv4Repr.parse(packet, verify_checksum=self.verify_checksums)
        dst = ip.dst
        broadcast = False
        if dst != self.address:
            if dst == LIMITED_BROADCAST or dst == self._subnet_broadcast:
                broadcast = True
            else:
                self.stats["ipv4.not_for_us"] += 1
                return None
        src = ip.src
        if src[0] >= 224 or src == LIMITED_BROADCAST or src == self._subnet_broadcast:
            # RFC 1122 3.2.1.3: a source must be a unicast address.
            self.stats["ipv4.bad_source"] += 1
            return None
        self.stats["ipv4.rx"] += 1
        if ip.more_fragments or ip.frag_offset:
            return self._reassemble(packet, ip, broadcast, now)
        return Datagram(src, dst, ip.protocol, packet.payload, packet.buffer[: packet.total_length], broadcast)

    def _reassemble(self, packet: Ipv4Packet, ip: Ipv4Repr, broadcast: bool, now: int) -> Datagram | None:
        config = self.config
        stats = self.stats
        key = (ip.src, ip.dst, ip.protocol, ip.ident)
        entry = self._reassembly.get(key)
        if entry is None:
            if len(self._reassembly) >= config.max_datagrams:
                stats["ipv4.reassembly_full"] += 1
                return None
            entry = _Reassembly(now + config.lifetime_ns, [])
            self._reassembly[key] = entry
        if entry.failed:
            stats["ipv4.fragment_of_failed_datagram"] += 1
            return None
        data = packet.payload
        offset = ip.frag_offset
        end = offset + len(data)
        reason = None
        if ip.more_fragments and len(data) % 8:
            reason = "ipv4.fragment_misaligned"
        elif end > config.max_datagram - packet.header_len:
            reason = "ipv4.fragment_too_big"
        elif len(entry.fragments) >= config.max_fragments:
            reason = "ipv4.too_many_fragments"
        elif not ip.more_fragments and (
            (entry.total is not None and entry.total != end) or any(o + len(d) > end for o, d in entry.fragments)
        ):
            reason = "ipv4.fragment_overlap"
        elif ip.more_fragments and entry.total is not None and end > entry.total:
            reason = "ipv4.fragment_overlap"
        else:
            for other_offset, other in entry.fragments:
                if other_offset < end and offset < other_offset + len(other):
                    if other_offset == offset and other == data:
                        stats["ipv4.fragment_duplicate"] += 1
                        return None
                    reason = "ipv4.fragment_overlap"
                    break
        if reason is not None:
            stats[reason] += 1
            entry.failed = True
            entry.fragments = []
            entry.first_header = None
            return None
        entry.fragments.append((offset, bytes(data)))
        entry.received += len(data)
        if not ip.more_fragments:
            entry.total = end
        if offset == 0:
            entry.first_header = bytes(packet.buffer[: packet.header_len])
        if entry.total is None or entry.received != entry.total or entry.first_header is None:
            return None
        # Complete: no overlaps and the byte count matches, so the pieces tile.
        del self._reassembly[key]
        entry.fragments.sort()
        header = entry.first_header
        whole = bytearray(header)
        for _, piece in entry.fragments:
            whole += piece
        stats["ipv4.reassembled"] += 1
        view = memoryview(whole)
        return Datagram(ip.src, ip.dst, ip.protocol, view[len(header) :], view, broadcast)

    # -- timers --------------------------------------------------------------

    def poll(self, now: int) -> list[bytes]:
        """Expire old reassemblies. Returns, for each expired datagram whose
        first fragment we held, its header plus the first 8 payload bytes
        (what ICMP Time Exceeded quotes)."""
        expired: list[bytes] = []
        for key in [k for k, e in self._reassembly.items() if e.deadline <= now]:
            entry = self._reassembly.pop(key)
            if entry.failed:
                continue
            self.stats["ipv4.reassembly_timeout"] += 1
            if entry.first_header is not None:
                first = next(piece for offset, piece in entry.fragments if offset == 0)
                expired.append(entry.first_header + first[:8])
        return expired

    def poll_at(self) -> int | None:
        if not self._reassembly:
            return None
        return min(e.deadline for e in self._reassembly.values())

    def reassembly_count(self) -> int:
        return len(self._reassembly)

    # -- send ----------------------------------------------------------------

    def is_local(self, dst: bytes) -> bool:
        return dst == self.address

    def route(self, dst: bytes) -> bytes | None:
        """The next hop for ``dst``: itself when on-link, else the gateway."""
        if dst == LIMITED_BROADCAST or dst == self._subnet_broadcast:
            return dst
        if int.from_bytes(dst, "big") & self._netmask == self._network:
            return dst
        return self._gateway

    @staticmethod
    def allocate(payload_len: int, segment_size: int = 0) -> bytearray:
        """A frame buffer for ``payload_len`` bytes of IP payload at offset ``HEADROOM``.

        With ``segment_size``, a ``LargeFrame`` for a device that segments TCP.
        """
        if segment_size:
            return LargeFrame(HEADROOM + payload_len, segment_size)
        return bytearray(HEADROOM + payload_len)

    def next_ident(self) -> int:
        self._ident = (self._ident + 1) & 0xFFFF
        return self._ident

    def send(
        self,
        frame: bytearray,
        dst: bytes,
        protocol: int,
        now: int,
        *,
        src: bytes | None = None,
        dont_fragment: bool = False,
        ttl: int | None = None,
    ) -> list[bytearray]:
        """Send the IP payload already written at ``frame[HEADROOM:]`` to ``dst``.

        Returns the frames to write now (ARP may hold them back). Counts and
        returns nothing when ``dst`` has no route.
        """
        next_hop = self.route(dst)
        if next_hop is None:
            self.stats["ipv4.no_route"] += 1
            return []
        payload_len = len(frame) - HEADROOM
        ip = Ipv4Repr(
            src=src or self.address,
            dst=dst,
            protocol=protocol,
            payload_len=payload_len,
            ttl=self.config.ttl if ttl is None else ttl,
            ident=self.next_ident(),
            dont_fragment=dont_fragment,
        )
        self.stats["ipv4.tx"] += 1
        if IPV4_HEADER_LEN + payload_len <= self.mtu or type(frame) is LargeFrame:
            self._frame_header(frame)
            ip.emit(Ipv4Packet(memoryview(frame)[ethernet.HEADER_LEN :]))
            return self._resolve(next_hop, frame, now)
        if dont_fragment:
            self.stats["ipv4.too_big_dont_fragment"] += 1
            return []
        out: list[bytearray] = []
        for fragment in self._fragment(frame, ip):
            out.extend(self._resolve(next_hop, fragment, now))
        return out

    def _fragment(self, frame: bytearray, ip: Ipv4Repr) -> list[bytearray]:
        chunk = (self.mtu - IPV4_HEADER_LEN) & ~7
        payload = memoryview(frame)[HEADROOM:]
        total = len(payload)
        fragments = []
        for offset in range(0, total, chunk):
            piece = payload[offset : offset + chunk]
            fragment = bytearray(HEADROOM + len(piece))
            fragment[HEADROOM:] = piece
            self._frame_header(fragment)
            dataclasses.replace(
                ip,
                payload_len=len(piece),
                frag_offset=offset,
                more_fragments=offset + len(piece) < total,
            ).emit(Ipv4Packet(memoryview(fragment)[ethernet.HEADER_LEN :]))
            fragments.append(fragment)
        self.stats["ipv4.fragments_sent"] += len(fragments)
        return fragments

    def _frame_header(self, frame: bytearray) -> None:
        # Destination MAC is filled by ARP (or below, for broadcast).
        frame[6:12] = self.mac
        frame[12] = ETHERTYPE_IPV4 >> 8
        frame[13] = ETHERTYPE_IPV4 & 0xFF

    def _resolve(self, next_hop: bytes, frame: bytearray, now: int) -> list[bytearray]:
        if next_hop == LIMITED_BROADCAST or next_hop == self._subnet_broadcast:
            frame[0:6] = BROADCAST
            return [frame]
        return self.arp.send(next_hop, frame, now)
