"""Ethernet II frames (IEEE 802.3 with an EtherType, no FCS, no VLAN tag).

Layout::

    0      6      12     14
    | dst  | src  | type | payload ...

Frames shorter than 14 bytes are malformed. An EtherType below 0x0600 is an
802.3 length field, well-formed but not something we handle
(``unsupported_length_field``): 802.2 LLC frames are dropped and counted.
Frames are not padded to 60 bytes on output; the tap and the kernel pad.
"""

from __future__ import annotations

import dataclasses
import struct

from netstack.wire.errors import WireError
from netstack.wire.view import U16, Bytes, View

HEADER_LEN = 14
BROADCAST = b"\xff" * 6

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_IPV6 = 0x86DD

_HEADER = struct.Struct("!6s6sH")


class EthernetError(WireError):
    layer = "ethernet"


class EthernetFrame(View):
    """A view over one Ethernet II frame."""

    __slots__ = ()
    _min_len = HEADER_LEN
    _error = EthernetError

    dst = Bytes(0, 6)
    src = Bytes(6, 6)
    ethertype = U16(12)

    @property
    def payload(self) -> memoryview:
        return self.buffer[HEADER_LEN:]


@dataclasses.dataclass(frozen=True, slots=True)
class EthernetRepr:
    dst: bytes
    src: bytes
    ethertype: int

    @classmethod
    def parse(cls, frame: EthernetFrame) -> EthernetRepr:
        dst, src, ethertype = _HEADER.unpack_from(frame.buffer)
        if ethertype < 0x0600:
            raise EthernetError("unsupported_length_field", f"type/length {ethertype}")
        return cls(dst, src, ethertype)

    def buffer_len(self) -> int:
        """Header length; the frame is ``buffer_len() + len(payload)`` bytes."""
        return HEADER_LEN

    def emit(self, frame: EthernetFrame) -> None:
        _HEADER.pack_into(frame.buffer, 0, self.dst, self.src, self.ethertype)


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff``; raises ``ValueError`` for anything else."""
    parts = text.split(":")
    # int(p, 16) alone would also take "+1", " f" and "-0".
    if len(parts) != 6 or not all(len(p) == 2 and _is_hex(p) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)
