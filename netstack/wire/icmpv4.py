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
from netstack.wire.view import U8, U16, U32, View

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


class Icmpv4Packet(View):
    """A view over one ICMP message; the buffer is exactly the message (the IP payload)."""

    __slots__ = ()
    _min_len = HEADER_LEN
    _error = Icmpv4Error

    type = U8(0)
    code = U8(1)
    checksum = U16(2)
    rest = U32(4, 'The 32-bit "rest of header" word after the checksum.')
    # Echo and Echo Reply split ``rest`` in two.
    ident = U16(4)
    sequence = U16(6)

    @property
    def data(self) -> memoryview:
        return self.buffer[HEADER_LEN:]

    def verify_checksum(self) -> bool:
        return _checksum.is_valid(self.buffer)

    def fill_checksum(self) -> None:
        self.checksum = 0
        self.checksum = _checksum.checksum(self.buffer)


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
