"""ICMP for IPv4 (RFC 792), with RFC 1122 3.2.2 and RFC 1191's next-hop MTU.

Layout::

    0      1      2          4                       8
    | type | code | checksum | rest of header (32b)  | data ...

"The checksum is the 16-bit ones's complement of the one's complement sum of
the ICMP message starting with the ICMP Type" (RFC 792): it covers the whole
message, header and data, with no pseudo-header.

The meaning of the 32-bit "rest of header" depends on the type:

* Echo / Echo Reply (types 8, 0): "Identifier" (high 16 bits) and "Sequence
  Number" (low 16 bits); the data is echoed back unchanged. RFC 1122
  3.2.2.6: "The IP source address in an ICMP Echo Reply MUST be the same as
  the specific-destination address ... of the corresponding ICMP Echo
  Request message" and "Data received in an ICMP Echo Request MUST be
  entirely included in the resulting Echo Reply."
* Destination Unreachable (type 3): "unused" (zero), except for code 4
  (fragmentation needed and DF set) where RFC 1191 4 puts the "Next-Hop
  MTU" in the low-order 16 bits.
* Time Exceeded (type 11): unused (zero).

For the error messages the data is "the internet header plus the first 64
bits of the original datagram's data" (RFC 792); RFC 1122 3.2.2 allows more.
The caller cuts that quote; this module only carries it.

``Icmpv4Repr`` keeps ``type``, ``code`` and ``rest`` as numbers and does not
judge them: an unknown type is well-formed bytes, and what to do with it is
the ICMP core's decision (RFC 1122 3.2.2: "If an ICMP message of unknown
type is received, it MUST be silently discarded").
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire import checksum as _checksum
from netstack.wire.errors import WireError

HEADER_LEN = 8

TYPE_ECHO_REPLY = 0
TYPE_DEST_UNREACHABLE = 3
TYPE_ECHO_REQUEST = 8
TYPE_TIME_EXCEEDED = 11

# Destination Unreachable codes (RFC 792, RFC 1191).
CODE_PORT_UNREACHABLE = 3
CODE_FRAGMENTATION_NEEDED = 4
# Time Exceeded codes (RFC 792).
CODE_TTL_EXCEEDED = 0
CODE_REASSEMBLY_TIME_EXCEEDED = 1

_HEADER = struct.Struct("!BBHI")


class Icmpv4Error(WireError):
    layer = "icmpv4"


class Icmpv4Packet:
    """A view over one ICMP message; the buffer is exactly the message (the IP payload)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        self.buffer = memoryview(buffer)

    @classmethod
    def new_checked(cls, buffer: bytes | bytearray | memoryview) -> Icmpv4Packet:
        packet = cls(buffer)
        if len(packet.buffer) < HEADER_LEN:
            raise Icmpv4Error("truncated", f"{len(packet.buffer)} bytes")
        return packet

    @property
    def type(self) -> int:
        return self.buffer[0]

    @type.setter
    def type(self, value: int) -> None:
        self.buffer[0] = value

    @property
    def code(self) -> int:
        return self.buffer[1]

    @code.setter
    def code(self, value: int) -> None:
        self.buffer[1] = value

    @property
    def checksum(self) -> int:
        return (self.buffer[2] << 8) | self.buffer[3]

    @checksum.setter
    def checksum(self, value: int) -> None:
        self.buffer[2] = value >> 8
        self.buffer[3] = value & 0xFF

    @property
    def rest(self) -> int:
        """The 32-bit "rest of header" word after the checksum."""
        return int.from_bytes(self.buffer[4:8], "big")

    @rest.setter
    def rest(self, value: int) -> None:
        self.buffer[4:8] = value.to_bytes(4, "big")

    @property
    def ident(self) -> int:
        return (self.buffer[4] << 8) | self.buffer[5]

    @ident.setter
    def ident(self, value: int) -> None:
        self.buffer[4] = value >> 8
        self.buffer[5] = value & 0xFF

    @property
    def sequence(self) -> int:
        return (self.buffer[6] << 8) | self.buffer[7]

    @sequence.setter
    def sequence(self, value: int) -> None:
        self.buffer[6] = value >> 8
        self.buffer[7] = value & 0xFF

    @property
    def data(self) -> memoryview:
        return self.buffer[HEADER_LEN:]

    def verify_checksum(self) -> bool:
        return _checksum.is_valid(self.buffer)

    def fill_checksum(self) -> None:
        buf = self.buffer
        buf[2] = 0
        buf[3] = 0
        value = _checksum.checksum(buf)
        buf[2] = value >> 8
        buf[3] = value & 0xFF


@dataclasses.dataclass(frozen=True, slots=True)
class Icmpv4Repr:
    type: int
    code: int
    rest: int = 0
    data: bytes | memoryview = b""

    @classmethod
    def parse(cls, packet: Icmpv4Packet, *, verify_checksum: bool = True) -> Icmpv4Repr:
        """Parse a checked view; ``data`` is a slice of the packet's buffer, not a copy."""
        buf = packet.buffer
        if verify_checksum and not _checksum.is_valid(buf):
            raise Icmpv4Error("bad_checksum")
        type_, code, _, rest = _HEADER.unpack_from(buf)
        return cls(type_, code, rest, buf[HEADER_LEN:])

    @property
    def ident(self) -> int:
        return self.rest >> 16

    @property
    def sequence(self) -> int:
        return self.rest & 0xFFFF

    @classmethod
    def echo_request(cls, ident: int, sequence: int, data: bytes | memoryview = b"") -> Icmpv4Repr:
        return cls(TYPE_ECHO_REQUEST, 0, (ident << 16) | sequence, data)

    @classmethod
    def echo_reply(cls, ident: int, sequence: int, data: bytes | memoryview = b"") -> Icmpv4Repr:
        return cls(TYPE_ECHO_REPLY, 0, (ident << 16) | sequence, data)

    @classmethod
    def dest_unreachable(
        cls, code: int, original: bytes | memoryview, next_hop_mtu: int = 0
    ) -> Icmpv4Repr:
        """``original``: the offending datagram's IP header and first 8 payload bytes.

        RFC 1191 4: for code 4 "the low-order 16 bits [of the unused field]
        are used to hold the MTU of the next-hop network"; otherwise zero.
        """
        rest = next_hop_mtu & 0xFFFF if code == CODE_FRAGMENTATION_NEEDED else 0
        return cls(TYPE_DEST_UNREACHABLE, code, rest, original)

    @classmethod
    def time_exceeded(cls, code: int, original: bytes | memoryview) -> Icmpv4Repr:
        return cls(TYPE_TIME_EXCEEDED, code, 0, original)

    def buffer_len(self) -> int:
        return HEADER_LEN + len(self.data)

    def emit(self, packet: Icmpv4Packet, *, fill_checksum: bool = True) -> None:
        """Write the header and copy ``data`` after it.

        The checksum covers exactly the ``buffer_len()`` bytes written, so a
        caller may hand over a larger buffer.
        """
        buf = packet.buffer
        end = HEADER_LEN + len(self.data)
        _HEADER.pack_into(buf, 0, self.type, self.code, 0, self.rest)
        buf[HEADER_LEN:end] = self.data
        if fill_checksum:
            value = _checksum.checksum(buf[:end])
            buf[2] = value >> 8
            buf[3] = value & 0xFF
