"""UDP datagrams (RFC 768) over IPv4, with RFC 1122 4.1.3.

Layout::

    0          2          4        6          8
    | src port | dst port | length | checksum | payload ...

"Length is the length in octets of this user datagram including this header
and the data. (This means the minimum value of the length is eight.)" So a
length below 8 is ``bad_length`` and a length past the buffer is
``truncated``. Bytes after ``length`` inside the IP payload are ignored.

"Checksum is the 16-bit one's complement of the one's complement sum of a
pseudo header of information from the IP header, the UDP header, and the
data, padded with zero octets at the end (if necessary) to make a multiple
of two octets." The pseudo-header is source address, destination address,
zero, protocol (17) and the UDP length. "If the computed checksum is zero,
it is transmitted as all ones ... An all zero transmitted checksum value
means that the transmitter generated no checksum", so a zero field is valid
on receive (RFC 1122 4.1.3.4: "If a UDP datagram is received with a checksum
that is non-zero and invalid, UDP MUST silently discard the datagram").

Port 0 is reserved: a datagram *to* port 0 is well-formed but can reach
nothing (``bad_port``). A source port of 0 means "no reply expected" and is
accepted (RFC 768: "If not used, a value of zero is inserted").

Emitting is size first, then write in place: the caller writes the payload
into ``buffer[8:8 + payload_len]`` and ``UdpRepr.emit`` then writes the
header and the checksum over both.
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire import checksum as _checksum
from netstack.wire.errors import WireError
from netstack.wire.view import U16, View

HEADER_LEN = 8

_PROTOCOL_UDP = 17
_HEADER = struct.Struct("!HHHH")


class UdpError(WireError):
    layer = "udp"


class UdpPacket(View):
    """A view over one UDP datagram (the IP payload)."""

    __slots__ = ()
    _min_len = HEADER_LEN
    _error = UdpError

    def _check(self, size: int) -> None:
        length = self.length
        if length < HEADER_LEN:
            raise UdpError("bad_length", f"length {length}")
        if length > size:
            raise UdpError("truncated", f"length {length} > {size} bytes")

    src_port = U16(0)
    dst_port = U16(2)
    length = U16(4)
    checksum = U16(6)

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_LEN : self.length]

    def verify_checksum(self, src_ip: bytes, dst_ip: bytes) -> bool:
        """True when the checksum is right, or zero ("no checksum", allowed over IPv4)."""
        if self.checksum == 0:
            return True
        length = self.length
        initial = _checksum.pseudo_header_ipv4(src_ip, dst_ip, _PROTOCOL_UDP, length)
        return _checksum.is_valid(self.buffer[:length], initial)

    def fill_checksum(self, src_ip: bytes, dst_ip: bytes) -> None:
        self.checksum = 0
        length = self.length
        initial = _checksum.pseudo_header_ipv4(src_ip, dst_ip, _PROTOCOL_UDP, length)
        # RFC 768: a computed zero is sent as all ones; zero means "none".
        self.checksum = _checksum.checksum(self.buffer[:length], initial) or 0xFFFF


@dataclasses.dataclass(frozen=True, slots=True)
class UdpRepr:
    src_port: int
    dst_port: int

    @classmethod
    def parse(
        cls,
        packet: UdpPacket,
        src_ip: bytes,
        dst_ip: bytes,
        *,
        verify_checksum: bool = True,
    ) -> UdpRepr:
        """Parse a checked view; the payload is ``packet.payload`` (not copied)."""
        if verify_checksum and not packet.verify_checksum(src_ip, dst_ip):
            raise UdpError("bad_checksum")
        src_port, dst_port, _, _ = _HEADER.unpack_from(packet.buffer)
        if dst_port == 0:
            raise UdpError("bad_port", "destination port 0")
        return cls(src_port, dst_port)

    def buffer_len(self) -> int:
        """Header length; the datagram is ``buffer_len() + payload_len`` bytes."""
        return HEADER_LEN

    def emit(
        self,
        packet: UdpPacket,
        src_ip: bytes,
        dst_ip: bytes,
        payload_len: int,
        *,
        fill_checksum: bool = True,
    ) -> None:
        """Write the header in front of a payload already in ``buffer[8:8 + payload_len]``.

        With ``fill_checksum=False`` the checksum field is left zero
        ("no checksum", or for a netif that offloads it).
        """
        length = HEADER_LEN + payload_len
        buf = packet.buffer
        _HEADER.pack_into(buf, 0, self.src_port, self.dst_port, length, 0)
        if fill_checksum:
            initial = _checksum.pseudo_header_ipv4(src_ip, dst_ip, _PROTOCOL_UDP, length)
            value = _checksum.checksum(buf[:length], initial) or 0xFFFF
            buf[6] = value >> 8
            buf[7] = value & 0xFF
