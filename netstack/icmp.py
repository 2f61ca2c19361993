"""ICMPv4 for a host (RFC 792, RFC 1122 3.2.2), sans-IO.

Theory of operation
-------------------
``Icmpv4.handle(datagram, now)`` answers echo requests, matches echo
replies to our own pings, and turns Destination Unreachable messages into
events for the transport they quote. ``port_unreachable`` and
``reassembly_time_exceeded`` build error messages for the layers that
detect those conditions. Every method returns the frames to write.

What a host must not answer with an error (RFC 1122 3.2.2): an ICMP error
message, a datagram sent to a broadcast or multicast address, a datagram
whose source is not a unicast address, or a non-initial fragment (we only
see whole datagrams, so this last never arises here). An error quotes the
offending datagram's IP header and the first 8 bytes of its payload
(RFC 792), which is what Linux sends too.

Errors are rate limited by a token bucket (RFC 1812 4.3.2.8 explains why,
RFC 4443 2.4(f) is the same rule for IPv6): ``error_burst`` tokens, refilled
at ``error_rate_per_s``. Like Linux's ``icmp_msgs_per_sec`` (1000) and
``icmp_msgs_burst`` (50), the bucket is global: a flood of datagrams to a
closed port cannot turn us into a flood of ICMP. Echo replies are not
limited (Linux does not limit them either); a host that wants to be quiet
can set ``answer_echo=False``.

Echo requests to a broadcast address are ignored, as Linux does by default
(``icmp_echo_ignore_broadcasts``), to avoid smurf amplification.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from netstack.ipv4 import HEADROOM, Datagram, Ipv4
from netstack.wire.icmpv4 import (
    CODE_PORT_UNREACHABLE,
    CODE_REASSEMBLY_TIME_EXCEEDED,
    TYPE_DEST_UNREACHABLE,
    TYPE_ECHO_REPLY,
    TYPE_ECHO_REQUEST,
    TYPE_TIME_EXCEEDED,
    Icmpv4Packet,
    Icmpv4Repr,
)
from netstack.wire.ipv4 import PROTOCOL_ICMP, Ipv4Packet
from netstack.wire.errors import WireError

SECOND = 1_000_000_000
_ERROR_TYPES = frozenset({TYPE_DEST_UNREACHABLE, 4, 5, TYPE_TIME_EXCEEDED, 12})


@dataclasses.dataclass(frozen=True, slots=True)
class IcmpConfig:
    error_rate_per_s: int = 1000
    error_burst: int = 50
    answer_echo: bool = True


class TokenBucket:
    """``burst`` tokens, one more every ``1 / rate`` seconds, in integer nanoseconds."""

    __slots__ = ("rate", "burst", "_tokens_ns", "_updated")

    def __init__(self, rate_per_s: int, burst: int, now: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        # Tokens are kept scaled by one second so that refill is exact.
        self._tokens_ns = burst * SECOND
        self._updated = now

    def take(self, now: int) -> bool:
        elapsed = max(0, now - self._updated)
        self._updated = now
        self._tokens_ns = min(self.burst * SECOND, self._tokens_ns + elapsed * self.rate)
        if self._tokens_ns >= SECOND:
            self._tokens_ns -= SECOND
            return True
        return False


class IcmpError(NamedTuple):
    """An ICMP error about a datagram we sent, as the protocol it quotes sees it.

    ``type``/``code`` are the ICMP message's own (3 Destination Unreachable,
    11 Time Exceeded, 12 Parameter Problem); ``next_hop_mtu`` is the MTU a
    "fragmentation needed" (type 3, code 4) message carries (RFC 1191), 0
    otherwise. ``local_ip``/``remote_ip`` are the quoted datagram's source
    (us) and destination. ``quoted`` is the quoted transport header, at least
    its first 8 bytes (ports, and for TCP the sequence number that RFC 5927
    says to check against what is in flight).
    """

    type: int
    code: int
    next_hop_mtu: int
    local_ip: bytes
    remote_ip: bytes
    protocol: int
    quoted: memoryview


UnreachableHandler = Callable[[int, bytes, int, bytes, int, int], None]
"""``(protocol, local_ip, local_port, remote_ip, remote_port, code)``."""


class Icmpv4:
    """ICMPv4 over ``ipv4``."""

    def __init__(self, ipv4: Ipv4, config: IcmpConfig | None = None, stats: Counter[str] | None = None) -> None:
        self.ipv4 = ipv4
        self.config = config or IcmpConfig()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._bucket: TokenBucket | None = None
        self.echo_reply_handler: Callable[[bytes, int, int, memoryview, int], None] | None = None
        """Called with ``(src, ident, sequence, data, now)`` for each echo reply."""
        self.unreachable_handler: UnreachableHandler | None = None

    # -- receive -------------------------------------------------------------

    def handle(self, datagram: Datagram, now: int) -> list[bytearray]:
        """Process one ICMP message. Raises ``Icmpv4Error`` if malformed."""
        message = Icmpv4Repr.parse(Icmpv4Packet.new_checked(datagram.payload), verify_checksum=self.ipv4.verify_checksums)
        kind = message.type
        if kind == TYPE_ECHO_REQUEST:
            if datagram.broadcast or not self.config.answer_echo:
                self.stats["icmp.echo_ignored"] += 1
                return []
            self.stats["icmp.echo_replies_sent"] += 1
            reply = Icmpv4Repr.echo_reply(message.ident, message.sequence, message.data)
            return self._send(datagram.src, reply, now)
        if kind == TYPE_ECHO_REPLY:
            self.stats["icmp.echo_replies_received"] += 1
            if self.echo_reply_handler is not None:
                self.echo_reply_handler(datagram.src, message.ident, message.sequence, message.data, now)
            return []
        if kind == TYPE_DEST_UNREACHABLE:
            self.stats["icmp.unreachable_received"] += 1
            self._unreachable(message, now)
            return []
        self.stats[f"icmp.type_{kind}_ignored"] += 1
        return []

    def _unreachable(self, message: Icmpv4Repr, now: int) -> None:
        if self.unreachable_handler is None:
            return
        quoted = _quoted(message.data)
        if quoted is None:
            self.stats["icmp.bad_quote"] += 1
            return
        protocol, src, dst, src_port, dst_port = quoted
        if src != self.ipv4.address:
            self.stats["icmp.bad_quote"] += 1
            return
        self.unreachable_handler(protocol, src, src_port, dst, dst_port, message.code)

    # -- errors we send ------------------------------------------------------

    def _may_send_error(self, src: bytes, broadcast: bool, protocol: int, payload: memoryview, now: int) -> bool:
        if broadcast or src[0] == 0 or src[0] >= 224 or src[0] == 127:
            return False
        if protocol == PROTOCOL_ICMP and (len(payload) < 1 or payload[0] in _ERROR_TYPES):
            return False
        if self._bucket is None:
            self._bucket = TokenBucket(self.config.error_rate_per_s, self.config.error_burst, now)
        if not self._bucket.take(now):
            self.stats["icmp.errors_rate_limited"] += 1
            return False
        return True

    def port_unreachable(self, datagram: Datagram, now: int) -> list[bytearray]:
        """Destination Unreachable, code 3, for a datagram to a closed port."""
        if not self._may_send_error(datagram.src, datagram.broadcast, datagram.protocol, datagram.payload, now):
            return []
        header_len = len(datagram.packet) - len(datagram.payload)
        quote = datagram.packet[: header_len + 8]
        self.stats["icmp.port_unreachable_sent"] += 1
        return self._send(datagram.src, Icmpv4Repr.dest_unreachable(CODE_PORT_UNREACHABLE, quote), now)

    def reassembly_time_exceeded(self, quote: bytes, now: int) -> list[bytearray]:
        """Time Exceeded, code 1, quoting an expired datagram's first fragment."""
        try:
            packet = Ipv4Packet.new_checked(quote) if len(quote) >= 20 else None
        except WireError:
            packet = None
        if packet is None:
            return []
        src = bytes(packet.buffer[12:16])
        if not self._may_send_error(src, False, packet.buffer[9], packet.buffer[packet.header_len :], now):
            return []
        self.stats["icmp.time_exceeded_sent"] += 1
        return self._send(src, Icmpv4Repr.time_exceeded(CODE_REASSEMBLY_TIME_EXCEEDED, quote), now)

    # -- echo requests we send -----------------------------------------------

    def echo_request(self, dst: bytes, ident: int, sequence: int, data: bytes, now: int) -> list[bytearray]:
        self.stats["icmp.echo_requests_sent"] += 1
        return self._send(dst, Icmpv4Repr.echo_request(ident, sequence, data), now)

    def _send(self, dst: bytes, message: Icmpv4Repr, now: int) -> list[bytearray]:
        frame = self.ipv4.allocate(message.buffer_len())
        message.emit(Icmpv4Packet(memoryview(frame)[HEADROOM:]))
        return self.ipv4.send(frame, dst, PROTOCOL_ICMP, now)


def _quoted(data: memoryview) -> tuple[int, bytes, bytes, int, int] | None:
    """``(protocol, src, dst, src_port, dst_port)`` from a quoted IP header + 8 bytes."""
    if len(data) < 20:
        return None
    header_len = (data[0] & 0x0F) * 4
    if data[0] >> 4 != 4 or header_len < 20 or len(data) < header_len + 4:
        return None
    protocol = data[9]
    src = bytes(data[12:16])
    dst = bytes(data[16:20])
    ports = data[header_len : header_len + 4]
    return protocol, src, dst, (ports[0] << 8) | ports[1], (ports[2] << 8) | ports[3]
