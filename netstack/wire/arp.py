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

HEADER_LEN = 28

HARDWARE_ETHERNET = 1
PROTOCOL_IPV4 = 0x0800

OPERATION_REQUEST = 1
OPERATION_REPLY = 2

_FIXED_LEN = 8
_HEADER = struct.Struct("!HHBBH6s4s6s4s")


class ArpError(WireError):
    layer = "arp"


class ArpPacket:
    """A view over one ARP packet (Ethernet hardware, IPv4 protocol)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        self.buffer = memoryview(buffer)

    @classmethod
    def new_checked(cls, buffer: bytes | bytearray | memoryview) -> ArpPacket:
        packet = cls(buffer)
        buf = packet.buffer
        length = len(buf)
        if length < _FIXED_LEN:
            raise ArpError("truncated", f"{length} bytes")
        htype = (buf[0] << 8) | buf[1]
        if htype != HARDWARE_ETHERNET:
            raise ArpError("unsupported_hardware", f"hardware type {htype}")
        ptype = (buf[2] << 8) | buf[3]
        if ptype != PROTOCOL_IPV4:
            raise ArpError("unsupported_protocol", f"protocol type {ptype:#06x}")
        if buf[4] != 6 or buf[5] != 4:
            raise ArpError("bad_length", f"hlen {buf[4]} plen {buf[5]}")
        if length < HEADER_LEN:
            raise ArpError("truncated", f"{length} bytes")
        return packet

    @property
    def hardware_type(self) -> int:
        return (self.buffer[0] << 8) | self.buffer[1]

    @hardware_type.setter
    def hardware_type(self, value: int) -> None:
        self.buffer[0] = value >> 8
        self.buffer[1] = value & 0xFF

    @property
    def protocol_type(self) -> int:
        return (self.buffer[2] << 8) | self.buffer[3]

    @protocol_type.setter
    def protocol_type(self, value: int) -> None:
        self.buffer[2] = value >> 8
        self.buffer[3] = value & 0xFF

    @property
    def hardware_len(self) -> int:
        return self.buffer[4]

    @hardware_len.setter
    def hardware_len(self, value: int) -> None:
        self.buffer[4] = value

    @property
    def protocol_len(self) -> int:
        return self.buffer[5]

    @protocol_len.setter
    def protocol_len(self, value: int) -> None:
        self.buffer[5] = value

    @property
    def operation(self) -> int:
        return (self.buffer[6] << 8) | self.buffer[7]

    @operation.setter
    def operation(self, value: int) -> None:
        self.buffer[6] = value >> 8
        self.buffer[7] = value & 0xFF

    @property
    def sender_mac(self) -> bytes:
        return bytes(self.buffer[8:14])

    @sender_mac.setter
    def sender_mac(self, value: bytes) -> None:
        self.buffer[8:14] = value

    @property
    def sender_ip(self) -> bytes:
        return bytes(self.buffer[14:18])

    @sender_ip.setter
    def sender_ip(self, value: bytes) -> None:
        self.buffer[14:18] = value

    @property
    def target_mac(self) -> bytes:
        return bytes(self.buffer[18:24])

    @target_mac.setter
    def target_mac(self, value: bytes) -> None:
        self.buffer[18:24] = value

    @property
    def target_ip(self) -> bytes:
        return bytes(self.buffer[24:28])

    @target_ip.setter
    def target_ip(self, value: bytes) -> None:
        self.buffer[24:28] = value


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
