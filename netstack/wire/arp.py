"""ARP for IPv4 over Ethernet (RFC 826).

Layout (the only shape we accept: hardware 1 = Ethernet, protocol 0x0800)::

    0       2       4      5      6       8      14     18     24     28
    | htype | ptype | hlen | plen | oper  | sha  | spa  | tha  | tpa  |

RFC 826 makes the packet self-describing: "ar$hrd ... ar$pro ... ar$hln
... ar$pln" give the address spaces and lengths, and the receiver's first
step is "Do I have the hardware type in ar$hrd? ... Do I speak the protocol
in ar$pro?", dropping the packet if not. So the first 8 bytes are checked
before anything else: another hardware or protocol type is well-formed but
not ours (``unsupported_*``); Ethernet/IPv4 with lengths other than 6/4 is
malformed (``bad_length``). Only then is the 28-byte body length checked.

Operations other than request (1) and reply (2) (RARP, InARP) parse as a
view but not as a repr (``unsupported_operation``). Frames on the wire are
padded to 60 bytes; bytes after the 28th are ignored.
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire.errors import WireError
from netstack.wire.view import U8, U16, Bytes, View

HEADER_LEN = 28

HARDWARE_ETHERNET = 1
PROTOCOL_IPV4 = 0x0800

OPERATION_REQUEST = 1
OPERATION_REPLY = 2

_FIXED_LEN = 8
_HEADER = struct.Struct("!HHBBH6s4s6s4s")


class ArpError(WireError):
    layer = "arp"


class ArpPacket(View):
    """A view over one ARP packet (Ethernet hardware, IPv4 protocol)."""

    __slots__ = ()
    _min_len = _FIXED_LEN
    _error = ArpError

    def _check(self, size: int) -> None:
        buf = self.buffer
        htype = (buf[0] << 8) | buf[1]
        if htype != HARDWARE_ETHERNET:
            raise ArpError("unsupported_hardware", f"hardware type {htype}")
        ptype = (buf[2] << 8) | buf[3]
        if ptype != PROTOCOL_IPV4:
            raise ArpError("unsupported_protocol", f"protocol type {ptype:#06x}")
        if buf[4] != 6 or buf[5] != 4:
            raise ArpError("bad_length", f"hlen {buf[4]} plen {buf[5]}")
        if size < HEADER_LEN:
            raise ArpError("truncated", f"{size} bytes")

    hardware_type = U16(0)
    protocol_type = U16(2)
    hardware_len = U8(4)
    protocol_len = U8(5)
    operation = U16(6)
    sender_mac = Bytes(8, 6)
    sender_ip = Bytes(14, 4)
    target_mac = Bytes(18, 6)
    target_ip = Bytes(24, 4)


@dataclasses.dataclass(frozen=True, slots=True)
class ArpRepr:
    operation: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes

    @classmethod
    def parse(cls, packet: ArpPacket) -> ArpRepr:
        """Parse a view that ``ArpPacket.new_checked`` accepted."""
        _, _, _, _, operation, sha, spa, tha, tpa = _HEADER.unpack_from(packet.buffer)
        if operation != OPERATION_REQUEST and operation != OPERATION_REPLY:
            raise ArpError("unsupported_operation", f"operation {operation}")
        return cls(operation, sha, spa, tha, tpa)

    def buffer_len(self) -> int:
        return HEADER_LEN

    def emit(self, packet: ArpPacket) -> None:
        _HEADER.pack_into(
            packet.buffer,
            0,
            HARDWARE_ETHERNET,
            PROTOCOL_IPV4,
            6,
            4,
            self.operation,
            self.sender_mac,
            self.sender_ip,
            self.target_mac,
            self.target_ip,
        )
