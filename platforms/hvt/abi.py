"""The hvt hypercall ABI: the only way a guest reaches the world.

Modelled on Solo5's ``hvt_abi.h``: a guest asks its tender to do a small
set of things (hypercalls), each a request answered by a response, over one
channel the tender hands it at start-up. Here the channel is a
``SOCK_SEQPACKET`` Unix socket pair: message boundaries come for free, and
one message carries a whole batch of frames, so a busy guest reads or
writes many frames per round trip. ``ABI.md`` beside this file is the same
contract in prose; this module is its one implementation, used by both
sides.

Every message starts with an 8-byte header, little-endian::

    request:   u8 call | u8 flags | u16 handle | u32 length | payload[length]
    response:  u8 call | u8 result | u16 count | u32 length | payload[length]

``count`` is the number of items in a batched payload (frames). A response
repeats the request's ``call``. Results are Solo5's::

    OK = 0, AGAIN = 1, EINVAL = 2, EUNSPEC = 3

Hypercalls (request payload -> response payload):

=============  ======================================  ==========================
call           request                                 response (OK)
=============  ======================================  ==========================
WALLTIME  1    -                                       u64 ns since the epoch
PUTS      2    bytes (console text)                    -
POLL      3    u64 deadline (monotonic ns)             u64 ready-set bitmask
NET_READ  4    u16 max frames                          count x (u32 len, bytes)
NET_WRITE 5    count x (u32 len, bytes)                -
BLOCK_READ 6   u64 offset, u32 length                  bytes
BLOCK_WRITE 7  u64 offset, bytes                       -
HALT      8    u32 status, bytes (reason, optional)    (no response)
=============  ======================================  ==========================

``NET_READ`` answers ``AGAIN`` with no frames when none is waiting.
``POLL`` returns when a net handle has frames (bit ``1 << handle`` set) or
at the deadline (mask 0). Block offsets and lengths must be whole sectors
inside the device (``EINVAL`` otherwise).

Boot. The first message on the channel goes from tender to guest: ``BOOT``
(call 0) with the boot info below; the guest checks ``ABI_VERSION`` and
halts with status 255 if it differs. Boot info, little-endian::

    u32 abi version | u64 memory limit (bytes, 0 = none) | u16 device count
    | u32 cmdline length | cmdline (UTF-8, arguments joined by NUL)
    | device*  where device = u8 type | u8 name length | name (UTF-8)
                            | NET:   6-byte MAC | u16 MTU
                            | BLOCK: u32 sector size | u64 capacity (bytes)

Malformed messages raise ``AbiError`` on the side that reads them: the
tender answers ``EINVAL`` (a broken guest cannot crash it) and the guest
halts with a message (a broken tender cannot be trusted).
"""

from __future__ import annotations

import dataclasses
import enum
import struct

ABI_VERSION = 1
MAX_MESSAGE = 4 * 1024 * 1024
"""Largest message either side sends or accepts (a batch of 64 KiB frames fits)."""

HEADER = struct.Struct("<BBHI")
HEADER_LEN = HEADER.size
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BLOCK_READ = struct.Struct("<QI")
_BOOT_HEAD = struct.Struct("<IQHI")
_NET_DEVICE = struct.Struct("<6sH")
_BLOCK_DEVICE = struct.Struct("<IQ")


class Call(enum.IntEnum):
    BOOT = 0
    WALLTIME = 1
    PUTS = 2
    POLL = 3
    NET_READ = 4
    NET_WRITE = 5
    BLOCK_READ = 6
    BLOCK_WRITE = 7
    HALT = 8


class Result(enum.IntEnum):
    OK = 0
    AGAIN = 1
    EINVAL = 2
    EUNSPEC = 3


class DeviceType(enum.IntEnum):
    NET_BASIC = 1
    BLOCK_BASIC = 2


class AbiError(ValueError):
    """A message that does not follow this ABI."""


@dataclasses.dataclass(frozen=True, slots=True)
class NetDevice:
    name: str
    mac: bytes
    mtu: int
    type: DeviceType = DeviceType.NET_BASIC


@dataclasses.dataclass(frozen=True, slots=True)
class BlockDevice:
    name: str
    sector_size: int
    capacity: int
    type: DeviceType = DeviceType.BLOCK_BASIC


Device = NetDevice | BlockDevice


@dataclasses.dataclass(frozen=True, slots=True)
class BootInfo:
    cmdline: tuple[str, ...]
    devices: tuple[Device, ...]
    memory_limit: int = 0
    version: int = ABI_VERSION

    def encode(self) -> bytes:
        cmdline = "\0".join(self.cmdline).encode()
        parts = [_BOOT_HEAD.pack(self.version, self.memory_limit, len(self.devices), len(cmdline)), cmdline]
        for device in self.devices:
            name = device.name.encode()
            if not 0 < len(name) < 256:
                raise ValueError(f"device name {device.name!r} must be 1-255 bytes")
            parts.append(bytes((device.type, len(name))) + name)
            if isinstance(device, NetDevice):
                parts.append(_NET_DEVICE.pack(device.mac, device.mtu))
            else:
                parts.append(_BLOCK_DEVICE.pack(device.sector_size, device.capacity))
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> BootInfo:
        data = memoryview(data)
        if len(data) < _BOOT_HEAD.size:
            raise AbiError("boot info is truncated")
        version, memory_limit, count, cmd_len = _BOOT_HEAD.unpack_from(data)
        if version != ABI_VERSION:
            raise AbiError(f"ABI version {version}, this guest speaks {ABI_VERSION}")
        offset = _BOOT_HEAD.size
        if offset + cmd_len > len(data):
            raise AbiError("boot info command line is truncated")
        try:
            text = bytes(data[offset : offset + cmd_len]).decode()
        except UnicodeDecodeError:
            raise AbiError("boot info command line is not UTF-8") from None
        cmdline = tuple(text.split("\0")) if text else ()
        offset += cmd_len
        devices: list[Device] = []
        for _ in range(count):
            if offset + 2 > len(data):
                raise AbiError("boot info device is truncated")
            kind, name_len = data[offset], data[offset + 1]
            offset += 2
            try:
                name = bytes(data[offset : offset + name_len]).decode()
            except UnicodeDecodeError:
                raise AbiError("device name is not UTF-8") from None
            offset += name_len
            if kind == DeviceType.NET_BASIC:
                if offset + _NET_DEVICE.size > len(data):
                    raise AbiError("net device is truncated")
                mac, mtu = _NET_DEVICE.unpack_from(data, offset)
                offset += _NET_DEVICE.size
                devices.append(NetDevice(name, mac, mtu))
            elif kind == DeviceType.BLOCK_BASIC:
                if offset + _BLOCK_DEVICE.size > len(data):
                    raise AbiError("block device is truncated")
                sector, capacity = _BLOCK_DEVICE.unpack_from(data, offset)
                offset += _BLOCK_DEVICE.size
                devices.append(BlockDevice(name, sector, capacity))
            else:
                raise AbiError(f"unknown device type {kind}")
        if offset != len(data):
            raise AbiError("trailing bytes after the boot info")
        return cls(cmdline, tuple(devices), memory_limit, version)


# -- messages -----------------------------------------------------------------


def request(call: Call, payload: bytes = b"", handle: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(call, flags, handle, len(payload)) + payload


def response(call: int, result: Result, payload: bytes = b"", count: int = 0) -> bytes:
    return HEADER.pack(call, result, count, len(payload)) + payload


def parse(message: bytes | memoryview) -> tuple[int, int, int, memoryview]:
    """``(call, flags_or_result, handle_or_count, payload)``; ``AbiError`` if malformed."""
    view = memoryview(message)
    if len(view) < HEADER_LEN:
        raise AbiError(f"message of {len(view)} bytes is shorter than its header")
    call, second, third, length = HEADER.unpack_from(view)
    if length != len(view) - HEADER_LEN:
        raise AbiError(f"header says {length} payload bytes, message has {len(view) - HEADER_LEN}")
    return call, second, third, view[HEADER_LEN:]


def encode_frames(frames: list[bytes | bytearray | memoryview]) -> bytes:
    parts: list[bytes | bytearray | memoryview] = []
    for frame in frames:
        parts.append(_U32.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


def decode_frames(payload: memoryview, count: int) -> list[memoryview]:
    frames: list[memoryview] = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(payload):
            raise AbiError("frame batch is truncated")
        (length,) = _U32.unpack_from(payload, offset)
        offset += 4
        if offset + length > len(payload):
            raise AbiError("frame in batch is truncated")
        frames.append(payload[offset : offset + length])
        offset += length
    if offset != len(payload):
        raise AbiError("trailing bytes after the frame batch")
    return frames


def u16(value: int) -> bytes:
    return _U16.pack(value)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def read_u16(payload: memoryview) -> int:
    if len(payload) != 2:
        raise AbiError(f"expected 2 payload bytes, got {len(payload)}")
    return _U16.unpack(payload)[0]


def read_u32_prefix(payload: memoryview) -> tuple[int, memoryview]:
    if len(payload) < 4:
        raise AbiError(f"expected at least 4 payload bytes, got {len(payload)}")
    return _U32.unpack_from(payload)[0], payload[4:]


def read_u64(payload: memoryview) -> int:
    if len(payload) != 8:
        raise AbiError(f"expected 8 payload bytes, got {len(payload)}")
    return _U64.unpack(payload)[0]


def read_block_request(payload: memoryview) -> tuple[int, int]:
    if len(payload) != _BLOCK_READ.size:
        raise AbiError(f"expected {_BLOCK_READ.size} payload bytes, got {len(payload)}")
    return _BLOCK_READ.unpack(payload)  # type: ignore[return-value]


def block_read_request(offset: int, length: int) -> bytes:
    return _BLOCK_READ.pack(offset, length)


def read_u64_prefix(payload: memoryview) -> tuple[int, memoryview]:
    if len(payload) < 8:
        raise AbiError(f"expected at least 8 payload bytes, got {len(payload)}")
    return _U64.unpack_from(payload)[0], payload[8:]
