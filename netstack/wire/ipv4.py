"""IPv4 headers (RFC 791), with the receive rules of RFC 1122 3.2.1.

Layout (RFC 791 3.1; one line is 32 bits)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |Version|  IHL  |DSCP+ECN (TOS) |          Total Length         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |         Identification        |0|D|M|      Fragment Offset    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Time to Live |    Protocol   |         Header Checksum       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                       Source Address                          |
    |                    Destination Address                        |
    |                    Options (IHL - 5 words)                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Checks in ``Ipv4Packet.new_checked``, in order, so that no accessor can fail
afterwards: at least 20 bytes; "Version: 4 bits" must be 4 (RFC 1122
3.2.1.1: "A datagram whose version number is not 4 MUST be silently
discarded"); "Internet Header Length is the length of the internet header in
32 bit words ... the minimum value for a correct header is 5"; the header
fits in the buffer; "Total Length is the length of the datagram, measured
in octets, including internet header and data", so it is at least the header
length and at most the buffer. Bytes past Total Length are link padding
(Ethernet pads to 60 bytes) and are ignored.

``Ipv4Repr.parse`` then checks the header checksum (RFC 1122 3.2.1.2: "A
host MUST verify the IP header checksum on every received datagram and
silently discard every datagram that has a bad checksum") and rejects a
fragment that would end past 65535 octets, the largest datagram RFC 791
allows (the "ping of death"), as ``bad_fragment``.

Options are skipped by IHL and never interpreted (RFC 1122 3.2.1.8 lets a
host ignore the ones it does not implement); we never emit any. The
reserved flag bit is ignored on input and written as zero. The fragment
offset is exposed in bytes (the field counts 8-octet units).
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire import checksum as _checksum
from netstack.wire.errors import WireError
from netstack.wire.view import U8, U16, Bytes, Flag, View

HEADER_LEN = 20

PROTOCOL_ICMP = 1
PROTOCOL_TCP = 6
PROTOCOL_UDP = 17

MAX_DATAGRAM_LEN = 65535

_FLAG_DONT_FRAGMENT = 0x4000
_FLAG_MORE_FRAGMENTS = 0x2000
_OFFSET_MASK = 0x1FFF

# version_ihl, dscp_ecn, total_length, ident, flags_offset, ttl, protocol,
# checksum, src, dst
_HEADER = struct.Struct("!BBHHHBBH4s4s")


class Ipv4Error(WireError):
    layer = "ipv4"


class Ipv4Packet(View):
    """A view over one IPv4 datagram (header, options, payload, then padding)."""

    __slots__ = ()
    _min_len = HEADER_LEN
    _error = Ipv4Error

    def _check(self, size: int) -> None:
        buf = self.buffer
        version = buf[0] >> 4
        if version != 4:
            raise Ipv4Error("bad_version", f"version {version}")
        header_len = (buf[0] & 0x0F) << 2
        if header_len < HEADER_LEN:
            raise Ipv4Error("bad_header_length", f"IHL {header_len >> 2}")
        if header_len > size:
            raise Ipv4Error("truncated", f"header {header_len} > {size} bytes")
        total_length = (buf[2] << 8) | buf[3]
        if total_length < header_len:
            raise Ipv4Error("bad_length", f"total length {total_length} < header {header_len}")
        if total_length > size:
            raise Ipv4Error("truncated", f"total length {total_length} > {size} bytes")

    @property
    def version(self) -> int:
        return self.buffer[0] >> 4

    @version.setter
    def version(self, value: int) -> None:
        self.buffer[0] = (value << 4) | (self.buffer[0] & 0x0F)

    @property
    def header_len(self) -> int:
        """Header length in bytes (IHL * 4)."""
        return (self.buffer[0] & 0x0F) << 2

    @header_len.setter
    def header_len(self, value: int) -> None:
        if value & 3 or not HEADER_LEN <= value <= 60:
            raise ValueError(f"IPv4 header length must be a multiple of 4 in 20..60, not {value}")
        self.buffer[0] = (self.buffer[0] & 0xF0) | (value >> 2)

    dscp_ecn = U8(1)
    total_length = U16(2)
    ident = U16(4)
    dont_fragment = Flag(6, 0x40)
    more_fragments = Flag(6, 0x20)

    @property
    def frag_offset(self) -> int:
        """Fragment offset in bytes (the field counts 8-octet blocks)."""
        return (((self.buffer[6] & 0x1F) << 8) | self.buffer[7]) << 3

    @frag_offset.setter
    def frag_offset(self, value: int) -> None:
        if value & 7 or not 0 <= value <= _OFFSET_MASK << 3:
            raise ValueError(f"fragment offset must be a multiple of 8 in 0..65528, not {value}")
        blocks = value >> 3
        self.buffer[6] = (self.buffer[6] & 0xE0) | (blocks >> 8)
        self.buffer[7] = blocks & 0xFF

    ttl = U8(8)
    protocol = U8(9)
    checksum = U16(10)
    src = Bytes(12, 4)
    dst = Bytes(16, 4)

    @property
    def options(self) -> memoryview:
        return self.buffer[HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        """The bytes between the header and Total Length; link padding excluded."""
        return self.buffer[self.header_len : self.total_length]

    def verify_checksum(self) -> bool:
        return _checksum.is_valid(self.buffer[: self.header_len])

    def fill_checksum(self) -> None:
        self.checksum = 0
        self.checksum = _checksum.checksum(self.buffer[: self.header_len])


@dataclasses.dataclass(frozen=True, slots=True)
class Ipv4Repr:
    src: bytes
    dst: bytes
    protocol: int
    payload_len: int
    ttl: int = 64
    ident: int = 0
    dont_fragment: bool = False
    more_fragments: bool = False
    frag_offset: int = 0
    dscp_ecn: int = 0

    @classmethod
    def parse(cls, packet: Ipv4Packet, *, verify_checksum: bool = True) -> Ipv4Repr:
        """Parse a view that ``Ipv4Packet.new_checked`` accepted; options are skipped."""
        buf = packet.buffer
        (version_ihl, dscp_ecn, total_length, ident, flags_offset, ttl, protocol, _, src, dst) = (
            _HEADER.unpack_from(buf)
        )
        header_len = (version_ihl & 0x0F) << 2
        if verify_checksum and not _checksum.is_valid(buf[:header_len]):
            raise Ipv4Error("bad_checksum")
        payload_len = total_length - header_len
        frag_offset = (flags_offset & _OFFSET_MASK) << 3
        if frag_offset + payload_len > MAX_DATAGRAM_LEN:
            raise Ipv4Error("bad_fragment", f"offset {frag_offset} + {payload_len} bytes")
        return cls(
            src,
            dst,
            protocol,
            payload_len,
            ttl,
            ident,
            bool(flags_offset & _FLAG_DONT_FRAGMENT),
            bool(flags_offset & _FLAG_MORE_FRAGMENTS),
            frag_offset,
            dscp_ecn,
        )

    def buffer_len(self) -> int:
        """Header length; the datagram is ``buffer_len() + payload_len`` bytes."""
        return HEADER_LEN

    def emit(self, packet: Ipv4Packet, *, fill_checksum: bool = True) -> None:
        """Write a 20-byte header; with ``fill_checksum=False`` the field is left zero."""
        if self.frag_offset & 7:
            raise ValueError(f"fragment offset {self.frag_offset} is not a multiple of 8")
        flags_offset = self.frag_offset >> 3
        if self.dont_fragment:
            flags_offset |= _FLAG_DONT_FRAGMENT
        if self.more_fragments:
            flags_offset |= _FLAG_MORE_FRAGMENTS
        buf = packet.buffer
        _HEADER.pack_into(
            buf,
            0,
            0x45,
            self.dscp_ecn,
            HEADER_LEN + self.payload_len,
            self.ident,
            flags_offset,
            self.ttl,
            self.protocol,
            0,
            self.src,
            self.dst,
        )
        if fill_checksum:
            value = _checksum.checksum(buf[:HEADER_LEN])
            buf[10] = value >> 8
            buf[11] = value & 0xFF


def ip_to_str(address: bytes) -> str:
    """``b"\\x0a\\x00\\x00\\x02"`` -> ``"10.0.0.2"``."""
    if len(address) != 4:
        raise ValueError(f"not an IPv4 address: {address!r}")
    return "%d.%d.%d.%d" % tuple(address)


def ip_from_str(text: str) -> bytes:
    """Parse dotted-quad ``a.b.c.d``; raises ``ValueError`` for anything else.

    Strict, like ``inet_pton``: four decimal parts, no leading zeros (which
    ``inet_aton`` would read as octal), no shorthand such as ``10.1``.
    """
    if not isinstance(text, str):
        raise ValueError(f"not an IPv4 address: {text!r}")
    parts = text.split(".")
    if len(parts) != 4:
        raise ValueError(f"not an IPv4 address: {text!r}")
    out = bytearray(4)
    for i, part in enumerate(parts):
        if not (
            0 < len(part) <= 3
            and part.isascii()
            and part.isdigit()
            and (part[0] != "0" or len(part) == 1)
        ):
            raise ValueError(f"not an IPv4 address: {text!r}")
        value = int(part)
        if value > 255:
            raise ValueError(f"not an IPv4 address: {text!r}")
        out[i] = value
    return bytes(out)
