"""ARP (RFC 826) for one IPv4 address on one Ethernet interface, sans-IO.

Theory of operation
-------------------
``ArpCore`` never awaits, never reads a clock and never touches a device.
The driver hands it input together with ``now`` (monotonic nanoseconds) and
writes out whatever frames it returns; ``poll_at()`` says when it next needs
``poll(now)``.

The cache maps an IPv4 address to a MAC with an expiry time. Resolution of
an address we do not know goes through a *pending* entry that holds the
frames waiting for it (bounded per address and overall; the oldest frame is
dropped and counted when a queue is full), and a schedule of requests::

    request at t0, retry at t0 + 1 s, t0 + 3 s (back-off doubles) ...
    after ``request_attempts`` requests with no reply: drop the queued
    frames, count them as ``arp.unresolved``.

RFC 826's packet reception algorithm, which we follow::

    ?Do I have the hardware type / protocol type? (the wire layer checks)
    Merge_flag := false
    If the pair <protocol type, sender protocol address> is already in my
        translation table, update the sender hardware address field of the
        entry with the new information in the packet and set Merge_flag.
    ?Am I the target protocol address?
    Yes:
      If Merge_flag is false, add the triplet to the translation table.
      ?Is the opcode ares_op$REQUEST? Yes: swap, put my addresses in, reply.

So an unsolicited ARP refreshes an entry we already hold (this is how a
gratuitous ARP from the gateway moves us to its new MAC) but never creates
one. An entry that is in use and close to expiry is refreshed by one unicast
request before it lapses, so steady traffic never stalls on re-resolution.

At start we announce our address with gratuitous ARP requests (RFC 5227
section 2.3: ``ANNOUNCE_NUM`` = 2, ``ANNOUNCE_WAIT`` = 2 s apart), which also
updates stale entries in the neighbours' caches.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque

from netstack.wire import ethernet
from netstack.wire.arp import (
    HEADER_LEN as ARP_LEN,
    OPERATION_REPLY,
    OPERATION_REQUEST,
    ArpPacket,
    ArpRepr,
)
from netstack.wire.ethernet import BROADCAST, ETHERTYPE_ARP, EthernetFrame, EthernetRepr

SECOND = 1_000_000_000
ZERO_MAC = b"\x00" * 6


@dataclasses.dataclass(frozen=True, slots=True)
class ArpConfig:
    entry_lifetime_ns: int = 60 * SECOND
    refresh_before_ns: int = 5 * SECOND
    request_attempts: int = 4
    retry_initial_ns: int = 1 * SECOND
    retry_max_ns: int = 8 * SECOND
    queue_per_address: int = 64
    queue_total: int = 512
    max_entries: int = 1024
    max_pending: int = 256
    announce_count: int = 2
    announce_interval_ns: int = 2 * SECOND


@dataclasses.dataclass(slots=True)
class _Entry:
    mac: bytes
    expires_at: int
    refreshing: bool = False


@dataclasses.dataclass(slots=True)
class _Pending:
    frames: deque[bytearray]
    attempts: int
    retry_at: int
    interval: int


def build_frame(src_mac: bytes, dst_mac: bytes, arp: ArpRepr) -> bytearray:
    """One Ethernet frame carrying ``arp``; sized first, then written in place."""
    frame = bytearray(ethernet.HEADER_LEN + ARP_LEN)
    view = EthernetFrame(frame)
    EthernetRepr(dst_mac, src_mac, ETHERTYPE_ARP).emit(view)
    arp.emit(ArpPacket(view.payload))
    return frame


class ArpCore:
    """ARP cache, resolver and responder for ``(mac, ip)``."""

    def __init__(
        self,
        mac: bytes,
        ip: bytes,
        config: ArpConfig | None = None,
        stats: Counter[str] | None = None,
    ) -> None:
        self.mac = mac
        self.ip = ip
        self.config = config or ArpConfig()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._cache: dict[bytes, _Entry] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._queued_total = 0
        self._announce_left = 0
        self._announce_at: int | None = None
        self._poll_at: int | None = None
        self._dirty = True

    # -- start-up ------------------------------------------------------------

    def start(self, now: int) -> list[bytearray]:
        """Begin announcing our address; returns the first gratuitous ARP."""
        self._announce_left = self.config.announce_count
        self._announce_at = now
        self._dirty = True
        return self.poll(now)

    def _gratuitous(self) -> bytearray:
        return build_frame(
            self.mac,
            BROADCAST,
            ArpRepr(OPERATION_REQUEST, self.mac, self.ip, ZERO_MAC, self.ip),
        )

    def _request(self, ip: bytes, dst_mac: bytes = BROADCAST) -> bytearray:
        self.stats["arp.requests_sent"] += 1
        return build_frame(
            self.mac,
            dst_mac,
            ArpRepr(OPERATION_REQUEST, self.mac, self.ip, ZERO_MAC, ip),
        )

    # -- the send path -------------------------------------------------------

    def lookup(self, ip: bytes, now: int) -> bytes | None:
        """The MAC for ``ip`` if it is cached and fresh."""
        entry = self._cache.get(ip)
        if entry is None or entry.expires_at <= now:
            return None
        return entry.mac

    def send(self, ip: bytes, frame: bytearray, now: int) -> list[bytearray]:
        """Address ``frame`` (an Ethernet frame, destination to be filled) to ``ip``.

        Returns the frames to write now: ``frame`` itself when ``ip`` is
        cached, else possibly an ARP request while ``frame`` waits.
        """
        entry = self._cache.get(ip)
        if entry is not None and entry.expires_at > now:
            frame[0:6] = entry.mac
            if not entry.refreshing and entry.expires_at - now <= self.config.refresh_before_ns:
                # In use and about to lapse: ask the holder directly, once.
                entry.refreshing = True
                return [frame, self._request(ip, entry.mac)]
            return [frame]
        return self._enqueue(ip, frame, now)

    def _enqueue(self, ip: bytes, frame: bytearray, now: int) -> list[bytearray]:
        config = self.config
        pending = self._pending.get(ip)
        out: list[bytearray] = []
        if pending is None:
            if len(self._pending) >= config.max_pending:
                self.stats["arp.pending_full"] += 1
                return out
            pending = _Pending(deque(), 1, now + config.retry_initial_ns, config.retry_initial_ns)
            self._pending[ip] = pending
            self._dirty = True
            out.append(self._request(ip))
        if len(pending.frames) >= config.queue_per_address:
            # Keep the newest: the oldest frame is the likeliest to be stale.
            pending.frames.popleft()
            self._queued_total -= 1
            self.stats["arp.queue_full"] += 1
        elif self._queued_total >= config.queue_total:
            self.stats["arp.queue_full"] += 1
            return out
        pending.frames.append(frame)
        self._queued_total += 1
        return out

    # -- the receive path ----------------------------------------------------

    def handle(self, payload: memoryview, now: int) -> list[bytearray]:
        """Process one ARP packet (the Ethernet payload). Raises ``ArpError`` if malformed."""
        arp = ArpRepr.parse(ArpPacket.new_checked(payload))
        sender_mac, sender_ip = arp.sender_mac, arp.sender_ip
        if sender_mac[0] & 1 or sender_mac == ZERO_MAC:
            self.stats["arp.bad_sender_mac"] += 1
            return []
        if sender_ip == self.ip:
            if sender_mac != self.mac:
                self.stats["arp.address_conflict"] += 1
            return []
        out: list[bytearray] = []
        merged = False
        entry = self._cache.get(sender_ip)
        if entry is not None:
            entry.mac = sender_mac
            entry.expires_at = now + self.config.entry_lifetime_ns
            entry.refreshing = False
            merged = True
            self._dirty = True
        if arp.target_ip == self.ip:
            if not merged and sender_ip != b"\x00\x00\x00\x00":
                self._insert(sender_ip, sender_mac, now)
            if arp.operation == OPERATION_REQUEST:
                self.stats["arp.replies_sent"] += 1
                out.append(
                    build_frame(
                        self.mac,
                        sender_mac,
                        ArpRepr(OPERATION_REPLY, self.mac, self.ip, sender_mac, sender_ip),
                    )
                )
        pending = self._pending.get(sender_ip)
        if pending is not None and sender_ip in self._cache:
            del self._pending[sender_ip]
            self._dirty = True
            self._queued_total -= len(pending.frames)
            for frame in pending.frames:
                frame[0:6] = sender_mac
                out.append(frame)
        return out

    def _insert(self, ip: bytes, mac: bytes, now: int) -> None:
        if len(self._cache) >= self.config.max_entries:
            oldest = min(self._cache, key=lambda k: self._cache[k].expires_at)
            del self._cache[oldest]
            self.stats["arp.cache_evicted"] += 1
        self._cache[ip] = _Entry(mac, now + self.config.entry_lifetime_ns)
        self._dirty = True

    # -- timers --------------------------------------------------------------

    def poll(self, now: int) -> list[bytearray]:
        """Run every timer that is due at ``now``."""
        out: list[bytearray] = []
        config = self.config
        if self._announce_at is not None and self._announce_at <= now:
            out.append(self._gratuitous())
            self._announce_left -= 1
            self._announce_at = now + config.announce_interval_ns if self._announce_left > 0 else None
            self._dirty = True
        expired = [ip for ip, entry in self._cache.items() if entry.expires_at <= now]
        for ip in expired:
            del self._cache[ip]
            self.stats["arp.entries_expired"] += 1
        for ip, pending in list(self._pending.items()):
            if pending.retry_at > now:
                continue
            if pending.attempts >= config.request_attempts:
                del self._pending[ip]
                self._queued_total -= len(pending.frames)
                self.stats["arp.unresolved"] += len(pending.frames)
                self.stats["arp.resolution_failed"] += 1
                continue
            pending.attempts += 1
            pending.interval = min(pending.interval * 2, config.retry_max_ns)
            pending.retry_at = now + pending.interval
            out.append(self._request(ip))
        self._dirty = True
        return out

    def poll_at(self) -> int | None:
        """The earliest time ``poll`` has work, or ``None``."""
        if not self._dirty:
            return self._poll_at
        deadlines = [entry.expires_at for entry in self._cache.values()]
        deadlines.extend(p.retry_at for p in self._pending.values())
        if self._announce_at is not None:
            deadlines.append(self._announce_at)
        self._poll_at = min(deadlines) if deadlines else None
        self._dirty = False
        return self._poll_at

    # -- inspection ----------------------------------------------------------

    def entries(self, now: int) -> dict[bytes, bytes]:
        """The fresh cache entries, address to MAC."""
        return {ip: e.mac for ip, e in self._cache.items() if e.expires_at > now}

    def pending_count(self) -> int:
        return self._queued_total
