"""The Internet checksum (RFC 1071) and the IPv4 and IPv6 pseudo-header sums.

The one's-complement sum is computed by ``int.from_bytes`` over the whole
buffer and folded, which runs at C speed for any length: summing a big
integer's 16-bit digits is the same as summing it modulo 0xffff, because
2**16 == 1 (mod 0xffff). The end-around carry of RFC 1071 is exactly
arithmetic modulo 0xffff, with 0 represented as 0xffff unless every word
was zero.
"""

from __future__ import annotations

from collections.abc import Iterable

_MASK = 0xFFFF


def sum16(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words, unfolded is fine.

    An odd trailing byte is padded with a zero byte, as RFC 1071 says.
    Returns a value in 0..0xffff.
    """
    n = len(data)
    if n & 1:
        value = int.from_bytes(data, "big") << 8
    else:
        value = int.from_bytes(data, "big")
    total = value % _MASK + initial % _MASK
    total = total % _MASK
    if total == 0 and (value or initial):
        # A non-zero sum that is a multiple of 0xffff is 0xffff in
        # one's complement (negative zero), not 0.
        return _MASK
    return total


def sum16_many(parts: Iterable[bytes | bytearray | memoryview], initial: int = 0) -> int:
    """``sum16`` over several buffers laid end to end; every part but the last must be even."""
    total = initial
    for part in parts:
        total = sum16(part, total)
    return total


def finish(total: int) -> int:
    """The checksum field value for a one's-complement ``total``."""
    return ~total & _MASK


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The Internet checksum of ``data``: the value to store in the header field."""
    return finish(sum16(data, initial))


def pseudo_header_ipv4(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    """One's-complement sum of the IPv4 pseudo-header (RFC 768, RFC 9293 3.1)."""
    return sum16(src + dst + bytes((0, protocol)) + length.to_bytes(2, "big"))


def pseudo_header_ipv6(src: bytes, dst: bytes, next_header: int, length: int) -> int:
    """One's-complement sum of the IPv6 pseudo-header (RFC 8200 8.1).

    Source and destination addresses (16 bytes each), the "Upper-Layer
    Packet Length" as 32 bits, three zero bytes and the Next Header value of
    the upper-layer protocol (6 for TCP, 17 for UDP, 58 for ICMPv6). The
    length is 32 bits wide so that jumbograms (RFC 2675) fit.
    """
    return sum16(src + dst + length.to_bytes(4, "big") + bytes((0, 0, 0, next_header)))


def is_valid(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """True when ``data`` (checksum field included) sums to all ones."""
    return sum16(data, initial) == _MASK
