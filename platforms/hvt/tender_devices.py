"""The tender's devices: what an image declares, what is attached, and the host side of each.

Theory of operation
-------------------

Before a guest starts, the tender matches two lists and refuses on any
difference, naming the device and the fix::

    manifest.json "devices"   (read_manifest)       declared: name + NET_BASIC | BLOCK_BASIC
    --net:NAME / --block:NAME (check_attachments)   attached: exactly the declared names, by kind

Then it serves the guest's device hypercalls against host resources opened
beforehand, in the guest's handle numbering (per kind, in manifest order)::

    net handle i   -> the i-th NET_BASIC device of the manifest   -> a NetPort (tap)
    block handle j -> the j-th BLOCK_BASIC device of the manifest -> a BlockPort (file)

Both ports are plain, synchronous objects: the tender's loop is
single-threaded and the only waiting it does is in ``poll(2)`` over the
channel and the taps, so every method here returns at once (taps are
non-blocking; ``pread``/``pwrite`` on a local file do not wait on the
network).

Taps are opened with ``offload=False``: frames cross the tap exactly as they
cross a wire (no virtio-net header, at most MTU + 14 bytes of Ethernet plus a
VLAN tag), which is what the guest's Netif is told in its boot info.

Receiving writes in place (STYLE.md, "size first, then write in place"):
``NetPort.read_into`` reads each frame straight into the reply buffer the
tender will send, behind its length prefix. A frame that does not fit in what
is left of the reply is kept (``NetPort.carry``, at most one per port) and
goes first in the next batch, so a port never holds more than one frame and
``POLL`` counts it as ready.

Errors: every refusal to start is a ``TenderError`` (``DeviceError`` for a
device that cannot be opened) whose ``str()`` is one line naming the option
and the fix. Requests that are well formed but out of range raise
``Refused`` (the tender answers ``EINVAL``); host I/O failures raise
``OSError`` (the tender answers ``EUNSPEC``).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

from netstack.protocols import PlatformError
from platforms.hvt import abi
from platforms.host.tap import ETHERNET_HEADER_LEN, READ_SIZE, TapNetif

VLAN_TAG_LEN = 4
MIN_FRAME = ETHERNET_HEADER_LEN
SECTOR_SIZES = tuple(1 << shift for shift in range(9, 17))
"""Sector sizes a block device may have: powers of two from 512 to 65536."""
DEFAULT_SECTOR_SIZE = 512

_U32 = struct.Struct("<I")


MANIFEST_NAME = "manifest.json"
MANIFEST_TYPE = "netstack.manifest"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 1 << 20
DEVICE_TYPES = {"NET_BASIC": abi.DeviceType.NET_BASIC, "BLOCK_BASIC": abi.DeviceType.BLOCK_BASIC}
MAX_NET_HANDLE = 63
"""``POLL``'s ready set is a u64 bitmask over net handles."""


class TenderError(Exception):
    """The tender refuses to start; ``str()`` is one line for the user (exit 1)."""


class Attachments(Protocol):
    """What the command line attaches (``tender.Options``): device name -> value."""

    net: Mapping[str, str]
    net_mac: Mapping[str, str]
    block: Mapping[str, str]
    block_sector_size: Mapping[str, int]


class DeviceError(TenderError):
    """A device cannot be attached; ``str()`` is one line for the user."""


class Refused(Exception):
    """A well-formed request that this device cannot honour (answered ``EINVAL``)."""


# -- what the image declares, what the command line attaches ---------------------------


@dataclasses.dataclass(frozen=True)
class ManifestDevice:
    name: str
    type: abi.DeviceType


@dataclasses.dataclass(frozen=True)
class Manifest:
    application: str
    devices: tuple[ManifestDevice, ...]

    def named(self, kind: abi.DeviceType) -> list[str]:
        return [device.name for device in self.devices if device.type == kind]


def read_manifest(image: str) -> Manifest:
    """The devices IMAGE declares; ``TenderError`` (one line) if it is not a valid image."""
    try:
        with zipfile.ZipFile(image) as archive:
            names = set(archive.namelist())
            if MANIFEST_NAME not in names:
                raise TenderError(
                    f"{image}: not a netstack image (no {MANIFEST_NAME}); build one with platforms.hvt.build"
                )
            if "__main__.py" not in names:
                raise TenderError(f"{image}: not a netstack image (no __main__.py)")
            if archive.getinfo(MANIFEST_NAME).file_size > MAX_MANIFEST_BYTES:
                raise TenderError(f"{image}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
            raw = archive.read(MANIFEST_NAME)
    except FileNotFoundError:
        raise TenderError(f"{image}: no such file") from None
    except IsADirectoryError:
        raise TenderError(f"{image}: is a directory, not an image") from None
    except zipfile.BadZipFile:
        raise TenderError(f"{image}: not a netstack image (not a zip file)") from None
    except (EOFError, NotImplementedError, RuntimeError, zlib.error) as error:  # what a damaged member raises
        raise TenderError(f"{image}: cannot read {MANIFEST_NAME} ({error})") from None
    except OSError as error:
        raise TenderError(f"{image}: {error.strerror or error}") from None
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TenderError(f"{image}: {MANIFEST_NAME} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("type") != MANIFEST_TYPE:
        kind = manifest.get("type") if isinstance(manifest, dict) else type(manifest).__name__
        raise TenderError(f"{image}: manifest type is {kind!r}, expected {MANIFEST_TYPE!r}")
    if manifest.get("version") != MANIFEST_VERSION:
        raise TenderError(
            f"{image}: manifest version {manifest.get('version')!r}; this tender reads version {MANIFEST_VERSION}"
        )
    declared = manifest.get("devices", [])
    if not isinstance(declared, list):
        raise TenderError(f"{image}: manifest 'devices' is not a list")
    devices: list[ManifestDevice] = []
    for number, entry in enumerate(declared):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("name"), str)
            or entry.get("type") not in DEVICE_TYPES
        ):
            raise TenderError(
                f"{image}: manifest device #{number} must be {{'name': ..., 'type': 'NET_BASIC' or 'BLOCK_BASIC'}}, "
                f"not {entry!r}"
            )
        name = entry["name"]
        if not 0 < len(name.encode()) < 256 or "=" in name:
            raise TenderError(f"{image}: manifest device name {name!r} must be 1-255 bytes without '='")
        if any(device.name == name for device in devices):
            raise TenderError(f"{image}: manifest declares device {name!r} twice")
        devices.append(ManifestDevice(name, DEVICE_TYPES[entry["type"]]))
    result = Manifest(str(manifest.get("application", "?")), tuple(devices))
    handles = number_handles(result)
    if any(handles[name] > MAX_NET_HANDLE for name in result.named(abi.DeviceType.NET_BASIC)):
        raise TenderError(f"{image}: too many devices; a net device's handle must be at most {MAX_NET_HANDLE}")
    return result


def number_handles(manifest: Manifest) -> dict[str, int]:
    """Each device's handle: its index among the manifest's devices *of its kind*.

    Net handles and block handles are separate ranges, each starting at 0
    in manifest order, because each hypercall names its kind (``NET_*``
    take net handles, ``BLOCK_*`` block handles) and ``POLL``'s ready set,
    a u64, then covers 64 net devices whatever the block devices. This is
    the one place that decides the numbering (ABI.md, "Handles").
    """
    handles: dict[str, int] = {}
    next_handle: dict[abi.DeviceType, int] = {}
    for device in manifest.devices:
        handles[device.name] = next_handle.get(device.type, 0)
        next_handle[device.type] = handles[device.name] + 1
    return handles


def check_attachments(manifest: Manifest, options: Attachments) -> None:
    """``TenderError`` unless the attached devices are exactly the declared ones."""
    kinds = {device.name: device.type for device in manifest.devices}
    declared = ", ".join(f"{device.name} ({device.type.name})" for device in manifest.devices) or "none"
    wanted = {
        "net": abi.DeviceType.NET_BASIC,
        "net-mac": abi.DeviceType.NET_BASIC,
        "block": abi.DeviceType.BLOCK_BASIC,
        "block-sector-size": abi.DeviceType.BLOCK_BASIC,
    }
    given = {
        "net": options.net,
        "net-mac": options.net_mac,
        "block": options.block,
        "block-sector-size": options.block_sector_size,
    }
    for option, table in given.items():
        for name in table:
            if name not in kinds:
                raise TenderError(f"--{option}:{name}: the image declares no device {name!r} (it declares: {declared})")
            if kinds[name] != wanted[option]:
                fix = f"--net:{name}=IFACE" if kinds[name] == abi.DeviceType.NET_BASIC else f"--block:{name}=PATH"
                raise TenderError(f"--{option}:{name}: {name} is a {kinds[name].name} device; attach it with {fix}")
    for option in ("net-mac", "block-sector-size"):
        attach = "net" if option == "net-mac" else "block"
        for name in given[option]:
            if name not in given[attach]:
                raise TenderError(f"--{option}:{name} is given but --{attach}:{name} is not")
    for device in manifest.devices:
        if device.type == abi.DeviceType.NET_BASIC and device.name not in options.net:
            raise TenderError(
                f"the image declares net device {device.name!r}; attach it with --net:{device.name}=IFACE"
            )
        if device.type == abi.DeviceType.BLOCK_BASIC and device.name not in options.block:
            raise TenderError(
                f"the image declares block device {device.name!r}; attach it with --block:{device.name}=PATH"
            )


# -- net ------------------------------------------------------------------------


class NetPort:
    """One guest net handle over a tap: batched, non-blocking frame I/O.

    ``read_into(buffer, offset, end, max_frames)`` fills ``buffer`` with
    ``(u32 length, frame)`` records and returns ``(frames, new offset)``;
    ``write_batch(frames)`` sends a validated batch; ``ready`` says whether
    a frame is waiting in the carry slot (readability of ``fd`` is the
    tender's poll's business). ``close`` removes a tap the port created.
    """

    def __init__(self, name: str, tap: TapNetif) -> None:
        self.name = name
        self.tap = tap
        self.fd = _tap_fd(tap)
        self.mac = tap.mac
        self.mtu = tap.mtu
        self.max_frame = tap.mtu + ETHERNET_HEADER_LEN
        """Largest frame the guest may write (the tap refuses larger ones)."""
        self.nominal_rx_frame = self.max_frame + VLAN_TAG_LEN
        """Largest frame the kernel hands a plain tap of this MTU (a tag included)."""
        self.carry: bytes | None = None
        self.failed: OSError | None = None
        self._scratch = bytearray(READ_SIZE)
        self._scratch_view = memoryview(self._scratch)
        self.rx_frames = self.rx_bytes = 0

    def __repr__(self) -> str:
        return f"<NetPort {self.name} on {self.tap.name}>"

    @property
    def ready(self) -> bool:
        return self.carry is not None

    def read_into(self, buffer: memoryview, offset: int, end: int, max_frames: int) -> tuple[int, int]:
        """Read up to ``max_frames`` frames into ``buffer[offset:end]``, never blocking."""
        if self.failed is not None:
            raise self.failed
        frames = 0
        if self.carry is not None:
            size = len(self.carry)
            if offset + 4 + size > end:
                return 0, offset  # cannot happen with end - offset >= READ_SIZE + 4; kept for safety
            _U32.pack_into(buffer, offset, size)
            buffer[offset + 4 : offset + 4 + size] = self.carry
            offset += 4 + size
            frames = 1
            self.carry = None
        # Stop once a frame of the size the tap normally delivers might not
        # fit: a bigger one read anyway goes to the carry slot.
        while frames < max_frames and end - offset >= 4 + self.nominal_rx_frame:
            try:
                size = os.readv(self.fd, [self._scratch_view])
            except BlockingIOError:
                break
            except OSError as error:
                # The interface went away (EBADFD after ``ip link del``) or
                # is otherwise broken: it will never deliver again.
                self.failed = error
                if frames:
                    break
                raise
            self.rx_frames += 1
            self.rx_bytes += size
            if offset + 4 + size > end:
                self.carry = bytes(self._scratch_view[:size])
                break
            _U32.pack_into(buffer, offset, size)
            buffer[offset + 4 : offset + 4 + size] = self._scratch_view[:size]
            offset += 4 + size
            frames += 1
        return frames, offset

    def check_batch(self, frames: list[memoryview]) -> None:
        """``Refused`` unless every frame is a plain Ethernet frame this tap takes."""
        for frame in frames:
            if not MIN_FRAME <= len(frame) <= self.max_frame:
                raise Refused(f"frame of {len(frame)} bytes; {self.name} takes {MIN_FRAME} to {self.max_frame}")

    def write_batch(self, frames: list[memoryview]) -> None:
        """Send a batch already passed by ``check_batch``; a full tap queue drops (counted by the tap)."""
        for frame in frames:
            self.tap.write(frame)

    @property
    def stats(self) -> dict[str, int]:
        tap = self.tap.stats
        return {
            "rx_frames": self.rx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_frames": tap["tx_frames"],
            "tx_bytes": tap["tx_bytes"],
            "tx_dropped": tap["tx_dropped"],
        }

    def close(self) -> None:
        self.tap.close()


def host_side_address(guest_args: Sequence[str]) -> str:
    """The host side's address for a tap the tender creates.

    A tap that already exists is used as it is. One the tender creates gets
    what the unix platform would give it, so that the same ``curl`` works on
    either target: the guest's ``--ipv4-gateway`` with the prefix of its
    ``--ipv4`` (MirageOS's boot arguments, which the guest reads too), or the
    first address of that network, or 10.0.0.1/24 when the guest names none.
    """
    values: dict[str, str] = {}
    arguments = list(guest_args)
    for index, argument in enumerate(arguments):
        for key in ("--ipv4", "--ipv4-gateway"):
            if argument.startswith(key + "="):
                values[key] = argument.split("=", 1)[1]
            elif argument == key and index + 1 < len(arguments):
                values[key] = arguments[index + 1]
    try:
        interface = ipaddress.IPv4Interface(values.get("--ipv4", "10.0.0.2/24"))
        if "--ipv4-gateway" in values:
            gateway = ipaddress.IPv4Address(values["--ipv4-gateway"])
        else:
            gateway = next(host for host in interface.network.hosts() if host != interface.ip)
    except (ValueError, StopIteration):
        return "10.0.0.1/24"  # the guest will refuse its own arguments; the tap still gets the default
    return f"{gateway}/{interface.network.prefixlen}"


def open_net(name: str, interface: str, mac: str | None, host_address: str | None = None) -> NetPort:
    """Open (or create) tap ``interface`` for net device ``name``; ``DeviceError`` if it cannot.

    ``host_address`` is given to the host side only if the tap is created here.
    """
    option = f"--net:{name}={interface}"
    try:
        tap = TapNetif(interface, host_address=host_address, offload=False, mac=mac)
    except PlatformError as error:
        raise DeviceError(f"{option}: {error}") from None
    except ValueError as error:
        raise DeviceError(f"{option}: {error}") from None
    return NetPort(name, tap)


def _tap_fd(tap: TapNetif) -> int:
    """The tap's descriptor, which the tender polls and reads itself.

    ``TapNetif`` offers frames through ``listen()``, which needs an asyncio
    loop; the tender's loop is a bare ``poll(2)`` that must also know *when*
    a tap is readable without consuming a frame (``POLL``), so it uses the
    descriptor directly. ``TapNetif`` still owns it (and closes it).
    """
    fileno = getattr(tap, "fileno", None)
    return fileno() if callable(fileno) else tap._fd  # noqa: SLF001 - see the docstring


# -- block ------------------------------------------------------------------------


class BlockPort:
    """One guest block handle over a file: whole sectors, inside the device.

    ``check(offset, length)`` raises ``Refused`` unless ``[offset, offset +
    length)`` is a non-empty run of whole sectors inside the capacity;
    ``read_into``/``write`` then do one ``preadv``/``pwrite`` each.
    """

    def __init__(self, name: str, path: str, fd: int, sector_size: int, capacity: int) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.sector_size = sector_size
        self.capacity = capacity

    def __repr__(self) -> str:
        return f"<BlockPort {self.name} on {self.path}: {self.capacity // self.sector_size} x {self.sector_size}>"

    def check(self, offset: int, length: int) -> None:
        sector = self.sector_size
        if length <= 0 or offset % sector or length % sector:
            raise Refused(f"{self.name}: offset {offset} and length {length} must be whole {sector}-byte sectors")
        if offset + length > self.capacity:
            raise Refused(f"{self.name}: {offset}+{length} is beyond the capacity {self.capacity}")

    def read_into(self, buffer: memoryview, offset: int) -> None:
        done = 0
        while done < len(buffer):
            count = os.preadv(self.fd, [buffer[done:]], offset + done)
            if count == 0:  # the file shrank under us
                raise OSError(errno.EIO, f"{self.path} is shorter than its capacity")
            done += count

    def write(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(self.fd, data[done:], offset + done)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def open_block(name: str, path: str, sector_size: int = DEFAULT_SECTOR_SIZE) -> BlockPort:
    """Open ``path`` read-write for block device ``name``; ``DeviceError`` if it cannot.

    The capacity is the file's size. A size that is not a whole number of
    sectors is refused rather than silently rounded down: the bytes past the
    last sector would be invisible to the guest, and a file of the wrong
    size is more likely the wrong file than a wish to waste its tail.
    """
    option = f"--block:{name}={path}"
    if sector_size not in SECTOR_SIZES:
        raise DeviceError(f"--block-sector-size:{name}={sector_size}: a sector is a power of two from 512 to 65536")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"{option}: no such file; create it first (truncate -s 64M {path})") from None
    except IsADirectoryError:
        raise DeviceError(f"{option}: is a directory, not a file") from None
    except PermissionError:
        raise DeviceError(f"{option}: permission denied; the tender needs to read and write it") from None
    except OSError as error:
        raise DeviceError(f"{option}: {error.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise DeviceError(f"{option}: not a regular file or a block device")
        capacity = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for a block device
        if capacity % sector_size:
            raise DeviceError(
                f"{option}: its size, {capacity} bytes, is not a whole number of {sector_size}-byte sectors; "
                f"resize it (truncate -s {(capacity // sector_size + 1) * sector_size} {path})"
            )
        if capacity == 0:
            raise DeviceError(f"{option}: the file is empty; a block device needs at least one sector")
    except BaseException:
        os.close(fd)
        raise
    return BlockPort(name, path, fd, sector_size, capacity)
