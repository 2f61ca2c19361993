"""TCP segments (RFC 9293 3.1) and their options (RFC 7323, RFC 2018, RFC 6691).

Layout (RFC 9293 3.1; one line is 32 bits)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |          Source Port          |       Destination Port        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                        Sequence Number                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Acknowledgment Number                      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  Data |       |C|E|U|A|P|R|S|F|                               |
    | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
    |       |       |R|E|G|K|H|T|N|N|                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           Checksum            |         Urgent Pointer        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           [Options]                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                             data ...
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

TCP has no length field: a segment is the whole IP payload, so a
``TcpPacket`` view must be made over exactly that (``Ipv4Packet.payload``
already leaves out link padding). ``TcpPacket.new_checked`` checks, in
order: at least 20 bytes (``truncated``); the Data Offset, "the number of
32-bit words in the TCP header", is at least 5 (``bad_header_length``); the
header it announces fits in the buffer (``truncated``). The low bit of the
reserved nibble (the experimental NS bit of RFC 3540, now reserved) is
ignored on input and written as zero; ``flags`` is the eight bits CWR..FIN.

The checksum is "the 16-bit ones' complement of the ones' complement sum of
all 16-bit words in the header and text", started from a pseudo-header.
This module does not know which IP version it runs over: callers pass the
pseudo-header's sum, ``checksum.pseudo_header_ipv4(src, dst, 6, length)`` or
``checksum.pseudo_header_ipv6(src, dst, 6, length)``, where ``length`` is
the whole segment's (header, options and payload). Unlike UDP there is no
"no checksum" value: a computed zero is sent as zero.

``TcpRepr.parse(packet, pseudo_sum)`` checks, in order: the checksum when
``pseudo_sum`` is not ``None`` (``bad_checksum``); that neither port is 0,
which is reserved and can name no connection (``bad_port``); the options
(``bad_option``). It does *not* judge flag combinations (SYN+FIN, RST+SYN,
no flags at all): those are well-formed bytes whose meaning depends on the
connection state, and RFC 9293 3.10.7 says what each state does with them.
Likewise MSS in a non-SYN segment, a SACK block with left >= right, or a
TSecr without ACK are reported as they are, for the state machine to judge.

Options (RFC 9293 3.1, 3.2). "Case 1: A single octet of option-kind. Case 2:
An octet of option-kind (Kind), an octet of option-length, and the actual
option-data octets"; only EOL and NOP are case 1. ``parse_options``:

* EOL ends the list; what follows it up to Data Offset is padding and is
  not looked at, whatever it holds.
* NOP is skipped.
* Every other kind has a length byte counting kind and length too. "A TCP
  implementation MUST be prepared to handle an illegal option length (e.g.,
  zero)": a length below 2, a list that ends between kind and length, or an
  option that runs past the end is ``bad_option``, and the segment is
  dropped.
* The kinds we implement must have their fixed length (MSS 4, window scale
  3, SACK-permitted 2, timestamps 10, SACK 2 + 8n for 1 <= n <= 4), or they
  are ``bad_option``: a wrong length means we cannot know what the sender
  meant.
* "A TCP implementation MUST ignore without error any TCP Option it does not
  implement, assuming that the option has a length field": other kinds are
  skipped by their length.
* A repeated option replaces the earlier one, as in Linux's
  ``tcp_parse_options``.
* RFC 7323 2.3: "If a Window Scale option is received with a shift.cnt
  value larger than 14, the TCP SHOULD log the error but MUST use 14 instead
  of the specified value." So a shift above 14 is clamped, not an error.

The MSS is carried as the number on the wire. RFC 6691 is about choosing
it: the MTU less the *fixed* IP and TCP headers (1460 over a 1500-byte
Ethernet MTU for IPv4), without room for options; that is the TCP core's
business, as is using at most the peer's MSS less our own options.

Emitting (size first, then write in place): ``TcpRepr.buffer_len()`` is the
header length with options. The caller writes the payload at
``buffer[buffer_len():buffer_len() + payload_len]`` and ``TcpRepr.emit``
writes header and options in front of it, then the checksum over both. The
options are written exactly as given (which options a SYN, a SYN-ACK or a
data segment carries is the TCP core's decision), in the order and 4-byte
alignment Linux's ``tcp_options_write`` uses, so that a capture of this
stack reads like one of Linux and every option sits on the boundary a
receiver's fast path expects::

    MSS                 02 04 mm mm
    SACK-permitted+TS   04 02 08 0a <TSval> <TSecr>     (both present)
    TS                  01 01 08 0a <TSval> <TSecr>     (no SACK-permitted)
    SACK-permitted      01 01 04 02                     (no TS)
    window scale        01 03 03 ss
    SACK blocks         01 01 05 ll <left> <right> ...

Every item is a multiple of 4 bytes, so no trailing padding is ever needed.
A Linux SYN is MSS, one of the three lines after it, then window scale; an
established segment is TS, then SACK. The header has room for 40 bytes of
options. RFC 2018: "the 40 bytes available for TCP options can specify a
maximum of 4 blocks ... if the Timestamp option is used ... a maximum of 3
SACK blocks will be allowed". So ``emit`` writes only as many SACK blocks
as fit after the other options (4 alone, 3 with timestamps, 2 with MSS,
timestamps and window scale too) and silently leaves out the rest, from the
end: the first block is the one RFC 2018 requires ("MUST specify the
contiguous block of data containing the segment which triggered this ACK")
and the next ones are the most recent, so the oldest are the ones dropped,
as in Linux.

Speed: a segment is parsed for every packet, so ``TcpRepr.parse`` reads the
fixed header with one ``struct`` call, does not look at options at all when
there are none (sharing one empty ``NO_OPTIONS``), and ``parse_options``
recognises the 12-byte "NOP NOP timestamps" block of an established Linux
or BSD connection with one comparison.
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire import checksum as _checksum
from netstack.wire.errors import WireError
from netstack.wire.view import U8, U16, U32, View

HEADER_LEN = 20
MAX_HEADER_LEN = 60
MAX_OPTIONS_LEN = MAX_HEADER_LEN - HEADER_LEN

# Flag bits of byte 13.
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

# Option kinds (IANA "TCP Option Kind Numbers").
EOL = 0
NOP = 1
MSS = 2
WINDOW_SCALE = 3
SACK_PERMITTED = 4
SACK = 5
TIMESTAMPS = 8

MAX_WINDOW_SCALE = 14  # RFC 7323 2.3
MAX_SACK_BLOCKS = 4  # RFC 2018 3: (40 - 2) // 8

# src port, dst port, seq, ack, data offset byte, flags, window, checksum, urgent
_HEADER = struct.Struct("!HHIIBBHHH")
_TWO_U32 = struct.Struct("!II")
_MSS_OPTION = struct.Struct("!BBH")
_TIMESTAMPS_OPTION = struct.Struct("!BBBBII")  # with the two bytes in front of it
_SACK_BLOCKS = tuple(struct.Struct(f"!{2 * n}I") for n in range(MAX_SACK_BLOCKS + 1))
_NOP_NOP_TIMESTAMPS = bytes((NOP, NOP, TIMESTAMPS, 10))
_NOP_NOP_SACK_PERMITTED = bytes((NOP, NOP, SACK_PERMITTED, 2))
# The length an implemented option must have; SACK is checked on its own.
_OPTION_LENGTHS = {MSS: 4, WINDOW_SCALE: 3, SACK_PERMITTED: 2, TIMESTAMPS: 10}


class TcpError(WireError):
    layer = "tcp"


class TcpPacket(View):
    """A view over one TCP segment: exactly the IP payload, header to last payload byte."""

    __slots__ = ()
    _min_len = HEADER_LEN
    _error = TcpError

    def _check(self, size: int) -> None:
        header_len = (self.buffer[12] >> 4) << 2
        if header_len < HEADER_LEN:
            raise TcpError("bad_header_length", f"data offset {header_len >> 2}")
        if header_len > size:
            raise TcpError("truncated", f"header {header_len} > {size} bytes")

    src_port = U16(0)
    dst_port = U16(2)
    seq = U32(4)
    ack = U32(8)

    @property
    def header_len(self) -> int:
        """Header length in bytes, options included (Data Offset * 4)."""
        return (self.buffer[12] >> 4) << 2

    @header_len.setter
    def header_len(self, value: int) -> None:
        if value & 3 or not HEADER_LEN <= value <= MAX_HEADER_LEN:
            raise ValueError(f"TCP header length must be a multiple of 4 in 20..60, not {value}")
        self.buffer[12] = (value << 2) | (self.buffer[12] & 0x0F)

    flags = U8(13, "CWR ECE URG ACK PSH RST SYN FIN, as the bits ``CWR`` .. ``FIN``.")
    window = U16(14)
    checksum = U16(16)
    urgent = U16(18)

    @property
    def options(self) -> memoryview:
        """The ``header_len - 20`` option bytes, padding included; see ``parse_options``."""
        return self.buffer[HEADER_LEN : self.header_len]

    @property
    def payload(self) -> memoryview:
        return self.buffer[self.header_len :]

    def verify_checksum(self, pseudo_sum: int) -> bool:
        """True when the segment sums to all ones, starting from the pseudo-header's sum."""
        return _checksum.is_valid(self.buffer, pseudo_sum)

    def fill_checksum(self, pseudo_sum: int) -> None:
        """Compute the checksum over the whole buffer (pseudo-header for its length)."""
        self.checksum = 0
        self.checksum = _checksum.checksum(self.buffer, pseudo_sum)


@dataclasses.dataclass(frozen=True, slots=True)
class TcpOptions:
    """The options this stack understands; absent ones are ``None``, ``False`` or ``()``.

    ``window_scale`` is the shift count (0..14). ``sack_blocks`` are
    ``(left edge, right edge)`` sequence numbers, at most 4, first block
    first. ``timestamp`` is ``(TSval, TSecr)``.
    """

    mss: int | None = None
    window_scale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    timestamp: tuple[int, int] | None = None


NO_OPTIONS = TcpOptions()


def _bad_option(kind: int, length: int, why: str) -> TcpError:
    return TcpError("bad_option", f"kind {kind} length {length}: {why}")


def parse_options(options: bytes | bytearray | memoryview) -> TcpOptions:
    """Parse an options area (``TcpPacket.options``); raises ``TcpError("bad_option")``."""
    # At most 40 bytes: a copy to bytes makes the indexing below cheaper.
    data = bytes(options)
    size = len(data)
    if size == 0:
        return NO_OPTIONS
    if size == 12 and data[:4] == _NOP_NOP_TIMESTAMPS:
        return TcpOptions(None, None, False, (), _TWO_U32.unpack_from(data, 4))
    mss: int | None = None
    window_scale: int | None = None
    timestamp: tuple[int, int] | None = None
    sack_permitted = False
    sack_blocks: tuple[tuple[int, int], ...] = ()
    i = 0
    while i < size:
        kind = data[i]
        if kind == EOL:
            break
        if kind == NOP:
            i += 1
            continue
        if i + 1 == size:
            raise _bad_option(kind, 0, "no length byte")
        length = data[i + 1]
        if length < 2:
            raise _bad_option(kind, length, "below 2")
        if i + length > size:
            raise _bad_option(kind, length, f"runs past the {size}-byte options")
        expected = _OPTION_LENGTHS.get(kind)
        if expected is not None and length != expected:
            raise _bad_option(kind, length, f"must be {expected}")
        if kind == MSS:
            mss = (data[i + 2] << 8) | data[i + 3]
        elif kind == TIMESTAMPS:
            timestamp = _TWO_U32.unpack_from(data, i + 2)
        elif kind == WINDOW_SCALE:
            window_scale = min(data[i + 2], MAX_WINDOW_SCALE)
        elif kind == SACK_PERMITTED:
            sack_permitted = True
        elif kind == SACK:
            count, rest = divmod(length - 2, 8)
            if rest or not 1 <= count <= MAX_SACK_BLOCKS:
                raise _bad_option(kind, length, "must be 2 + 8n for n in 1..4")
            edges = _SACK_BLOCKS[count].unpack_from(data, i + 2)
            sack_blocks = tuple(zip(edges[0::2], edges[1::2]))
        i += length
    return TcpOptions(mss, window_scale, sack_permitted, sack_blocks, timestamp)


def _sack_blocks_that_fit(options: TcpOptions, used: int) -> int:
    """How many SACK blocks fit in the 40 bytes after ``used`` bytes of other options."""
    return min(len(options.sack_blocks), (MAX_OPTIONS_LEN - used - 4) // 8)


def _options_len(options: TcpOptions) -> int:
    """Bytes of options ``_emit_options`` writes; always a multiple of 4."""
    if options is NO_OPTIONS:
        return 0
    length = 0
    if options.mss is not None:
        length += 4
    if options.timestamp is not None:
        length += 12
    elif options.sack_permitted:
        length += 4
    if options.window_scale is not None:
        length += 4
    if options.sack_blocks:
        count = _sack_blocks_that_fit(options, length)
        if count:
            length += 4 + 8 * count
    return length


def _emit_options(options: TcpOptions, buf: memoryview) -> None:
    """Write the options at ``buf[20:]`` in Linux's order (see the module docstring)."""
    offset = HEADER_LEN
    if options.mss is not None:
        _MSS_OPTION.pack_into(buf, offset, MSS, 4, options.mss)
        offset += 4
    if options.timestamp is not None:
        tsval, tsecr = options.timestamp
        if options.sack_permitted:
            # SACK-permitted takes the place of the two NOPs in front of TS.
            first, second = SACK_PERMITTED, 2
        else:
            first, second = NOP, NOP
        _TIMESTAMPS_OPTION.pack_into(buf, offset, first, second, TIMESTAMPS, 10, tsval, tsecr)
        offset += 12
    elif options.sack_permitted:
        buf[offset : offset + 4] = _NOP_NOP_SACK_PERMITTED
        offset += 4
    window_scale = options.window_scale
    if window_scale is not None:
        if not 0 <= window_scale <= MAX_WINDOW_SCALE:
            raise ValueError(f"window scale must be in 0..14 (RFC 7323 2.3), not {window_scale}")
        buf[offset] = NOP
        buf[offset + 1] = WINDOW_SCALE
        buf[offset + 2] = 3
        buf[offset + 3] = window_scale
        offset += 4
    if options.sack_blocks:
        count = _sack_blocks_that_fit(options, offset - HEADER_LEN)
        if count:
            buf[offset] = NOP
            buf[offset + 1] = NOP
            buf[offset + 2] = SACK
            buf[offset + 3] = 2 + 8 * count
            edges = [edge for block in options.sack_blocks[:count] for edge in block]
            _SACK_BLOCKS[count].pack_into(buf, offset + 4, *edges)


@dataclasses.dataclass(frozen=True, slots=True)
class TcpRepr:
    """One segment's header; the payload is ``TcpPacket.payload`` (not copied)."""

    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: TcpOptions = NO_OPTIONS
    urgent: int = 0

    @classmethod
    def parse(cls, packet: TcpPacket, pseudo_sum: int | None) -> TcpRepr:
        """Parse a checked view; ``pseudo_sum=None`` skips the checksum (an offloading netif)."""
        buf = packet.buffer
        if pseudo_sum is not None and not _checksum.is_valid(buf, pseudo_sum):
            raise TcpError("bad_checksum")
        src_port, dst_port, seq, ack, offset, flags, window, _, urgent = _HEADER.unpack_from(buf)
        if not src_port or not dst_port:
            raise TcpError("bad_port", f"port {src_port} -> {dst_port}")
        header_len = (offset >> 4) << 2
        if header_len == HEADER_LEN:
            options = NO_OPTIONS
        else:
            options = parse_options(buf[HEADER_LEN:header_len])
        return cls(src_port, dst_port, seq, ack, flags, window, options, urgent)

    def buffer_len(self) -> int:
        """Header length with options; the segment is ``buffer_len() + payload_len`` bytes."""
        return HEADER_LEN + _options_len(self.options)

    def emit(self, packet: TcpPacket, payload_len: int, pseudo_sum: int | None) -> None:
        """Write header and options in front of a payload already at ``buffer[buffer_len():]``.

        ``pseudo_sum`` is the pseudo-header's sum for the length
        ``buffer_len() + payload_len``; with ``None`` the checksum field is
        left zero (for a netif that offloads it).
        """
        options = self.options
        header_len = HEADER_LEN + _options_len(options)
        buf = packet.buffer
        _HEADER.pack_into(
            buf,
            0,
            self.src_port,
            self.dst_port,
            self.seq,
            self.ack,
            header_len << 2,  # (header_len // 4) in the high nibble
            self.flags,
            self.window,
            0,
            self.urgent,
        )
        if header_len != HEADER_LEN:
            _emit_options(options, buf)
        if pseudo_sum is not None:
            value = _checksum.checksum(buf[: header_len + payload_len], pseudo_sum)
            buf[16] = value >> 8
            buf[17] = value & 0xFF
